"""DistributedDataParallel on 2 CPU processes (gloo) on the tiny cache.

Two real launches, shared by the tests below through one module fixture:
- `medclf train --gpus 2 ... train.device=cpu` (the CLI starts `python -m torch.distributed.run -m medclf train`)
  trains the reference run `straight`;
- `python -m torch.distributed.run --nproc_per_node 2 <this file>` runs `_worker` on each rank: it records what
  each rank's loader and validation shard hold, checks that rank 0's errors reach rank 1, and trains `resumed`
  (one epoch, then `--resume` to two) and a one-step AdvProp run, with several `train()` calls in one process
  group, as ensembles do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# 36 train images, 6 per batch per rank: 18 per rank, 3 steps per epoch; constant lr so a run stopped after epoch 1
# and resumed to epoch 2 must equal the 2-epoch run
DDP_TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=6", "train.lr=0.003",
            "train.warmup_epochs=0", "train.weight_decay=0.0", "train.schedule=constant", "train.device=cpu",
            "model.drop_rate=0.2", "data.affine=true", "train.ema=0.9"]


def _worker(cache: Path, out: Path) -> None:
    """Runs on every rank under torchrun."""
    from medclf.config import load_config
    from medclf.engine.distributed import all_gather_arrays, init_distributed, shard_positions
    from medclf.engine.setup import build_setup
    from medclf.engine.train import train
    from medclf.errors import MedclfError

    ctx = init_distributed("cpu")
    record: dict[str, object] = {"world_size": ctx.world_size}
    for sampler in ("shuffle", "balanced"):
        s = build_setup(load_config(None, DDP_TINY + [f"data.sampler={sampler}"]), cache, out / "unused", ctx)
        s.sampler.set_epoch(0)
        record[sampler] = np.concatenate([positions.numpy() for _, _, positions in s.loader])
        record[f"{sampler}_steps"] = s.steps_per_epoch
        record["ddp"] = type(s.train_model).__name__
    record["val_shard"] = shard_positions(12, ctx)
    record["val_gathered"] = np.concatenate(all_gather_arrays(record["val_shard"], ctx))

    errors = []
    try:  # the check runs on rank 0 only; rank 1 must get the same error instead of waiting forever
        train(load_config(None, DDP_TINY), cache, out / "straight", resume=False, progress=False)
    except MedclfError as err:
        errors.append(str(err))
    try:
        build_setup(load_config(None, DDP_TINY + ["train.sync_bn=true"]), cache, out / "unused", ctx)
    except MedclfError as err:
        errors.append(str(err))
    record["errors"] = np.array(errors)

    train(load_config(None, DDP_TINY + ["train.epochs=1"]), cache, out / "resumed", progress=False)
    train(load_config(None, DDP_TINY + ["train.epochs=2"]), cache, out / "resumed", resume=True, progress=False)
    # adversarial objectives forward through the DDP wrapper several times per step (attack, aux and main BNs)
    train(load_config(None, DDP_TINY + ["train.epochs=1", "train.max_steps_per_epoch=1", "train.adv_steps=1",
                                        "train.adversarial=advprop"]), cache, out / "advprop", progress=False)
    np.savez(out / f"rank{ctx.rank}.npz", **record)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
    sys.exit(0)

import pandas as pd  # noqa: E402  (test-only imports below: the worker above starts faster without them)
import pytest  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ddp(tiny_cache, scratch, request):
    out = scratch(request, "ddp")
    cli = subprocess.run(
        [sys.executable, "-m", "medclf", "train", "--gpus", "2", "--data", str(tiny_cache), "--out",
         str(out / "straight"), *DDP_TINY, "train.epochs=2"],
        capture_output=True, text=True, env=_env(), timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    worker = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
         str(tiny_cache), str(out)], capture_output=True, text=True, env=_env(), timeout=600)
    assert worker.returncode == 0, worker.stderr[-3000:]
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in (0, 1)]
    return {"out": out, "cli_stdout": cli.stdout, "ranks": ranks}


def test_each_rank_draws_a_disjoint_half_of_the_shuffled_epoch(ddp):
    r0, r1 = (r["shuffle"] for r in ddp["ranks"])
    assert ddp["ranks"][0]["world_size"] == 2 and str(ddp["ranks"][0]["ddp"]) == "DistributedDataParallel"
    assert len(r0) == len(r1) == 18 and ddp["ranks"][0]["shuffle_steps"] == 3
    assert set(r0.tolist()).isdisjoint(r1.tolist())
    assert sorted(np.concatenate([r0, r1]).tolist()) == list(range(36))


def test_balanced_ranks_split_the_single_process_draw(ddp, tiny_cache):
    from medclf.data.cache import Cache
    from medclf.data.dataset import CacheDataset
    from medclf.data.samplers import create_sampler

    single = create_sampler("balanced", CacheDataset(Cache.open(tiny_cache), split="train"), seed=0)
    single.set_epoch(0)
    r0, r1 = (r["balanced"] for r in ddp["ranks"])
    interleaved = np.stack([r0, r1], axis=1).ravel()  # rank r holds draws r, r+2, r+4, ...
    assert len(r0) == len(r1) == 18
    assert interleaved.tolist() == list(single)


def test_validation_gather_covers_the_split_exactly_once(ddp):
    shards = [r["val_shard"].tolist() for r in ddp["ranks"]]
    assert shards == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]
    for r in ddp["ranks"]:
        assert sorted(r["val_gathered"].tolist()) == list(range(12))


def test_errors_on_rank0_reach_every_rank(ddp):
    for r in ddp["ranks"]:
        already, sync_bn = r["errors"].tolist()
        assert "already holds a run" in already and "--resume" in already
        assert "train.sync_bn=true needs CUDA" in sync_bn


def test_only_rank0_writes_and_prints(ddp):
    run = ddp["out"] / "straight"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["best.pt", "config.yaml", "curves.png", "data_summary.json", "history.csv", "last.pt", "tensorboard"])
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").iterdir()}  # events.out.tfevents.T.HOST.PID.N
    assert len(writers) == 1  # one process logged
    assert ddp["cli_stdout"].count("epoch 2:") == 1 and ddp["cli_stdout"].count("run: ") == 1
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2]


def test_checkpoint_in_one_process_gives_the_ddp_validation_metrics(ddp, tiny_cache, tmp_path):
    from medclf.config import load_config
    from medclf.engine.setup import build_setup
    from medclf.engine.train import validate
    from medclf.models.checkpoint import load_checkpoint
    from medclf.runs import Predictor

    run = ddp["out"] / "straight"
    logged = pd.read_csv(run / "history.csv").iloc[-1]
    model, contract, _ = load_checkpoint(run / "last.pt")
    s = build_setup(load_config(None, DDP_TINY), tiny_cache, tmp_path)  # one process: no DDP
    assert s.train_model is s.model
    row = validate(s, model)
    for key in ("val_loss", "val_auc", "val_f1", "val_accuracy"):
        assert row[key] == pytest.approx(logged[key], abs=1e-6), key
    probs = Predictor(model, contract).predict_dataset(s.val_set).probs[:, 1]
    assert roc_auc_score(s.val_set.labels, probs) == pytest.approx(logged["val_auc"], abs=1e-6)
    assert 0.0 < torch.load(run / "best.pt", weights_only=True)["contract"]["threshold"] <= 1.0


def test_resumed_ddp_run_equals_the_uninterrupted_one(ddp):
    a = torch.load(ddp["out"] / "straight" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(ddp["out"] / "resumed" / "last.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = pd.read_csv(ddp["out"] / "resumed" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]


def test_advprop_trains_under_ddp_and_saves_a_plain_model(ddp):
    from medclf.models.checkpoint import load_checkpoint

    model, contract, payload = load_checkpoint(ddp["out"] / "advprop" / "best.pt")  # strict: no aux BN keys
    assert type(model).__name__ != "AdvPropModel" and payload["config"]["train"]["adversarial"] == "advprop"
    assert pd.read_csv(ddp["out"] / "advprop" / "history.csv")["epoch"].tolist() == [1]


def test_gpus_without_cuda_fails_in_one_line(tiny_cache, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    r = subprocess.run([sys.executable, "-m", "medclf", "train", "--gpus", "2", "--data", str(tiny_cache),
                        "--out", str(tmp_path / "r"), "train.epochs=1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --gpus 2: this machine has 0 CUDA GPU(s) "
                                "(train.device=cpu runs that many CPU processes instead)")
