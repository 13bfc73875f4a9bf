"""Static int8 quantisation of an exported inference graph (medclf.runs.onnx) with ONNX Runtime's own tooling.

`quantize_static` in QDQ format: int8 weights per output channel, uint8 activations, ranges from min/max over
calibration images fed to the graph's `images` input exactly as inference feeds it.

What is quantised: only the model's ops, the nodes the exporter places under the InferenceModule's `model`
attribute (backbone and head; every member of an ensemble). The rest of the graph stays float32, by node scope
rather than by op type, so the split holds whatever the backbone (a ResNet's residual Add is quantised, the
normalisation's Add is not):
- uint8 -> float, resize and normalisation: cheap, and quantising them would round every pixel once more
  before the first convolution (whose input is quantised with its own calibrated range anyway);
- the flip TTA average, softmax/sigmoid and the ensemble combination: they work on probabilities, where one
  8-bit step near 0 or 1 moves a decision, for no measurable speed;
- the Mahalanobis OOD score: squared distances span orders of magnitude that one 8-bit scale cannot hold.
"""

from __future__ import annotations

import ast
import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from medclf.errors import MedclfError
from medclf.io import atomic_path

INPUT_NAME = "images"  # the graph's input (medclf.runs.onnx.INPUT_NAME; that module imports torch, this must not)
MODEL_SCOPE = "model"  # InferenceModule.model: the one attribute whose ops are quantised
# ops that carry the arithmetic: when one of them keeps float inputs, ORT had no int8 kernel for it
HEAVY_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "Attention")
FLOAT_OUTPUT_OPS = ("Gemm",)  # a classifier head (Linear on pooled features): int8 weights, float32 logits
SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # torch.onnx (dynamo) records each node's module path here


@dataclass
class Quantized:
    """The int8 file, the number of model nodes quantised, and the heavy model ops left in float32."""

    path: Path
    n_quantized: int
    kept_float: list[tuple[str, str]] = field(default_factory=list)  # (op type, node name)

    def fallback_note(self) -> str | None:
        """One line naming the ops that stayed float32 (none: None)."""
        if not self.kept_float:
            return None
        ops = sorted({op for op, _ in self.kept_float})
        names = ", ".join(name for _, name in self.kept_float[:3]) + (", ..." if len(self.kept_float) > 3 else "")
        return (f"int8: {len(self.kept_float)} op(s) without an int8 kernel stay float32: {', '.join(ops)} "
                f"({names})")


def model_node_names(model) -> set[str]:
    """Names of the nodes of an exported InferenceModule graph that belong to its `model` (see module doc)."""
    names = set()
    for node in model.graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == SCOPE_KEY), None)
        # ['', 'model', 'model.model.conv1', 'conv2d']: module paths between the root '' and the op's own name
        if scopes and len(scopes) > 2 and (scopes[1] == MODEL_SCOPE or scopes[1].startswith(MODEL_SCOPE + ".")):
            names.add(node.name)
    return names


def quantize_graph(fp32_path: str | Path, out: str | Path, calibration: Iterable[np.ndarray],
                   metadata: dict[str, str] | None = None) -> Quantized:
    """Quantise the model ops of `fp32_path` into `out` (written atomically), ranges from `calibration` (uint8
    `B x S x S` batches); `metadata` replaces the file's medclf.* entries of the same keys."""
    onnx, quantization = _require()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out = Path(fp32_path), Path(out)
    inside = model_node_names(onnx.load(str(fp32_path)))
    if not inside:
        raise MedclfError(f"{fp32_path}: no model ops found to quantise (the file carries no torch.onnx scopes; "
                          "re-export it with this medclf)")
    with tempfile.TemporaryDirectory(prefix="medclf-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # ORT's own pre-processing folds BatchNorm into the convolutions, so the int8 weights are the folded
        # ones. Its symbolic shape inference trips over the exporter's Unsqueeze; onnx's own inference suffices.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        names = [n.name for n in onnx.load(str(pre)).graph.node if n.name in inside]  # fused nodes keep a name
        with atomic_path(out) as tmp_out, _quiet_quantizer():
            try:
                quantization.quantize_static(
                    str(pre), str(tmp_out), _reader(calibration, quantization),
                    quant_format=quantization.QuantFormat.QDQ,
                    per_channel=True, activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8, nodes_to_quantize=names,
                    calibrate_method=quantization.CalibrationMethod.MinMax,
                    # the head's logits stay float32: an 8-bit grid on the logits would quantise the probabilities
                    # themselves. No CalibMaxIntermediateOutputs: MinMax keeps only each tensor's min/max per
                    # batch (small), and ORT 1.32's MinMaxCalibrater *drops* every full group of that many
                    # batches without merging their ranges (ranges came from the last n mod 8 batches alone,
                    # and a multiple of 8 batches failed with "No data is collected").
                    extra_options={"OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)})
            except MedclfError:
                raise
            except Exception as err:  # ORT raises plain exceptions for graphs it cannot handle
                raise MedclfError(f"{fp32_path}: ONNX Runtime cannot quantise it "
                                  f"({(str(err).splitlines() or [type(err).__name__])[0]})") from None
            model = onnx.load(str(tmp_out))
            set_metadata(model, metadata or {})
            onnx.save(model, str(tmp_out))
    return Quantized(out, len(names), kept_float(model, set(names)))


def kept_float(model, names: set[str]) -> list[tuple[str, str]]:
    """(op, name) of the heavy model ops whose inputs no DequantizeLinear feeds: ORT had no int8 kernel."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [(n.op_type, n.name) for n in model.graph.node
            if n.name in names and n.op_type in HEAVY_OPS and not any(i in dequantized for i in n.input)]


def set_metadata(model, metadata: dict[str, str]) -> None:
    """Set the model's metadata entries `metadata` names; the others are kept."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _reader(batches: Iterable[np.ndarray], quantization):
    """ORT's CalibrationDataReader over uint8 batches, fed to the graph's input as inference feeds it."""

    class Batches(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.uint8)}

    return Batches()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantiser logs advice at WARNING through the root logger (pre-processing, per-op notes); the
    outcome that matters is summarised by `Quantized.fallback_note`."""
    import logging
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _require():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as err:
        raise MedclfError(f"'{err.name}' is not installed; `pip install onnx onnxruntime` (needed for "
                          "export --int8 and --engine onnx-int8)") from None
    return onnx, quantization
