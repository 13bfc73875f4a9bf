"""`medclf export RUN --format onnx --int8`: the run's inference graph with its model ops in int8, accuracy checked.

1. The run's InferenceModule is exported to float32 ONNX (as `export --format onnx` does) and its model ops are
   quantised statically (medclf.runs.quantize: QDQ, per-channel int8 weights, uint8 activations), calibrated on
   a split of the run's own cache (default `val`) or of another cache (`--calibrate CACHE`).
2. Both files run through the run's Predictor on every image of that split: ROC AUC of each with its bootstrap
   95% interval (single-label: the positive class against the rest, as metrics.json; multilabel: the macro
   average), max and mean |Δp| over all probabilities, and the share of decisions that change at the run's
   threshold(s).
3. Refusal: when the AUC drops by more than `max_auc_drop` or more than `max_changed` of the decisions change,
   nothing is written and the one-line error carries the numbers.
4. Otherwise the int8 engine gets its own operating threshold(s), chosen on the run's validation split from the
   int8 probabilities by the rule training used (the Task's `choose_thresholds`), so a decision is
   always made at a threshold chosen on the probabilities it is applied to. It is stored in the int8 file's
   `medclf.contract` (what `--engine onnx-int8` decides with), and with the comparison in `RUN/int8.json`
   (what the report shows).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medclf.errors import MedclfError
from medclf.io import atomic_path, write_json

MAX_AUC_DROP = 0.005
MAX_CHANGED = 0.01  # share of decisions that may change (issue 23: "more than 1 %")
CALIBRATION_IMAGES = 512  # min/max ranges settle long before this; bounds the time on a large split
CALIBRATION_BATCH = 8


@dataclass
class Int8Result:
    path: Path
    comparison: dict[str, Any]
    note: str | None  # ops kept in float32 (medclf.runs.quantize.Quantized.fallback_note)

    def summary(self) -> str:
        return f"onnx int8: {self.path}; {comparison_line(self.comparison)}"


def export_int8(run_dir: str | Path, calibrate: str | Path | None = None, split: str = "val",
                max_auc_drop: float = MAX_AUC_DROP, max_changed: float = MAX_CHANGED, n_boot: int = 1000,
                progress: bool = False) -> Int8Result:
    """Quantise `RUN` into `RUN/model.int8.onnx` and write `RUN/int8.json`; raises MedclfError (writing
    nothing) when the int8 model loses more accuracy than allowed."""
    from medclf.engine.evaluate import split_dataset
    from medclf.runs import open_run_and_cache
    from medclf.runs.onnx import OnnxBackend, export_metadata, export_onnx, onnx_session
    from medclf.runs.quantize import quantize_graph
    from medclf.tasks import task_for

    start = time.perf_counter()
    run, cache = open_run_and_cache(run_dir, calibrate, "cpu")
    dataset = split_dataset(cache, split)
    predictor = run.predictor()
    meta = export_metadata(run, predictor.module)
    with tempfile.TemporaryDirectory(prefix="medclf-int8-") as tmp:
        fp32_path = export_onnx(predictor.module, run.image_size, Path(tmp) / "fp32.onnx", meta)
        calibration = calibration_batches(cache, dataset.indices)
        quantized = quantize_graph(fp32_path, Path(tmp) / "int8.onnx", calibration)
        fp32, int8 = (_with_backend(predictor, OnnxBackend(onnx_session(p))) for p in (fp32_path, quantized.path))
        out32 = fp32.predict_dataset(dataset, progress=progress, desc=f"fp32 {split}")
        out8 = int8.predict_dataset(dataset, progress=progress, desc=f"int8 {split}")
        p32, p8 = out32.probs, out8.probs
        comparison = compare(predictor, dataset.labels, p32, p8, n_boot)
        if predictor.has_ood:  # the detector's threshold was fitted on fp32 features: say how often int8 differs
            flags = [predictor.ood(out)[1] for out in (out32, out8)]
            comparison["ood_flags_changed_share"] = float(np.mean(flags[0] != flags[1]))
        comparison.update(split=split, cache=str(cache.path), n_calibration=min(len(dataset), CALIBRATION_IMAGES),
                          max_auc_drop=max_auc_drop, max_changed=max_changed, quantized_nodes=quantized.n_quantized,
                          kept_float=[f"{op} {name}" for op, name in quantized.kept_float])
        refuse_if_worse(run.dir.int8_path, comparison, max_auc_drop, max_changed)
        contract = int8_contract(run, int8, dataset if _is_own_val(run, cache, split) else None, p8)
        comparison["threshold"] = task_for(contract).threshold_entry()
        comparison["threshold_reason"] = contract.threshold_reason
        comparison["seconds"] = round(time.perf_counter() - start, 1)
        _save_int8(quantized.path, run.dir.int8_path, {**meta, "medclf.contract": json.dumps(contract.to_dict()),
                                                       "medclf.int8": json.dumps(comparison)})
    write_json(run.dir.int8_report_path, {"file": run.dir.ONNX_INT8, **comparison})
    return Int8Result(run.dir.int8_path, comparison, quantized.fallback_note())


def calibration_batches(cache, indices: np.ndarray) -> Iterator[np.ndarray]:
    """uint8 batches of up to CALIBRATION_IMAGES images of the split, spread evenly over it."""
    rows = np.asarray(indices)
    if len(rows) > CALIBRATION_IMAGES:
        rows = rows[np.linspace(0, len(rows) - 1, CALIBRATION_IMAGES).round().astype(int)]
    for start in range(0, len(rows), CALIBRATION_BATCH):
        yield np.asarray(cache.images[np.sort(rows[start:start + CALIBRATION_BATCH])])


def compare(predictor, labels: np.ndarray, p32: np.ndarray, p8: np.ndarray, n_boot: int = 1000) -> dict[str, Any]:
    """fp32 vs int8 probabilities on the same images: AUC of each with its interval, |Δp|, changed decisions
    (both at the run's threshold(s), through `predictor.decisions`)."""
    diff = np.abs(p32.astype(np.float64) - p8.astype(np.float64))
    changed = np.asarray(predictor.decisions(p32)) != np.asarray(predictor.decisions(p8))
    out: dict[str, Any] = {"n": int(len(p32))}
    for name, probs in (("fp32", p32), ("int8", p8)):
        out[name] = predictor.task.auc_with_ci(labels, probs, n_boot)
    f32, i8 = out["fp32"]["roc_auc"], out["int8"]["roc_auc"]
    out["auc_drop"] = None if f32 is None or i8 is None else float(f32 - i8)
    out.update(max_abs_diff=float(diff.max(initial=0.0)), mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
               changed_decisions=int(changed.sum()), changed_share=float(changed.mean()) if len(changed) else 0.0)
    return out


def refuse_if_worse(path: Path, c: dict[str, Any], max_auc_drop: float, max_changed: float) -> None:
    """One line with the numbers when the int8 model loses more than allowed."""
    drop = c["auc_drop"]
    if (drop is not None and drop > max_auc_drop) or c["changed_share"] > max_changed:
        raise MedclfError(f"{path}: not written: int8 loses too much accuracy on {c['split']} "
                          f"({comparison_line(c)}; allowed: AUC drop <= {max_auc_drop:g}, changed decisions "
                          f"<= {max_changed:.1%})")


def comparison_line(c: dict[str, Any]) -> str:
    def auc(side: dict) -> str:
        ci = side.get("ci")
        value = "n/a" if side["roc_auc"] is None else f"{side['roc_auc']:.4f}"
        return value + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and ci[0] is not None else "")

    drop = "n/a" if c["auc_drop"] is None else f"{c['auc_drop']:+.4f}"
    return (f"AUC fp32 {auc(c['fp32'])}, int8 {auc(c['int8'])} (drop {drop}) on {c['n']} images; "
            f"|Δp| max {c['max_abs_diff']:.4f}, mean {c['mean_abs_diff']:.4f}; decisions changed "
            f"{c['changed_decisions']} ({c['changed_share']:.2%})")


def int8_contract(run, int8_predictor, val_dataset, val_probs: np.ndarray):
    """The run's contract with the operating threshold(s) chosen on int8 validation probabilities by training's
    rule. `val_dataset` None: the comparison ran elsewhere, so the run's own validation split is predicted."""
    from medclf.engine.evaluate import split_dataset
    from medclf.tasks import ThresholdRule, task_for

    if val_dataset is None:
        cache_path = run.dir.cache_path()
        if cache_path is None or not Path(cache_path).is_dir():
            raise MedclfError(f"{run.dir.path}: its own cache ({cache_path}) is gone; the int8 threshold is chosen "
                              "on the run's validation split")
        from medclf.data.cache import Cache

        val_dataset = split_dataset(Cache.open(cache_path), "val")
        val_probs = int8_predictor.predict_dataset(val_dataset).probs
    contract = copy.deepcopy(run.contract)
    contract.ood = None  # the detectors travel in the file's medclf.ood entry, as in model.onnx
    task = task_for(contract)
    chosen = task.choose_thresholds(val_dataset.labels, val_probs, ThresholdRule.from_config(run.config))
    task.store_thresholds(contract, chosen)
    contract.threshold_reason = f"int8: {contract.threshold_reason}"
    return contract


def _is_own_val(run, cache, split: str) -> bool:
    return split == "val" and run.dir.trained_on(cache.path)


def _with_backend(predictor, backend):
    """A shallow copy of `predictor` running on `backend` (same contract, decisions and columns)."""
    other = copy.copy(predictor)
    other.backend = backend
    return other


def _save_int8(staged: Path, out: Path, metadata: dict[str, str]) -> None:
    import onnx

    from medclf.runs.quantize import set_metadata

    model = onnx.load(str(staged))
    set_metadata(model, metadata)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
