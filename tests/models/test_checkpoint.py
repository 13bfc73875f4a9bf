from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from medclf.errors import MedclfError
from medclf.models import create_model, load_checkpoint, save_checkpoint


class NotPlain:
    pass


def trained_resnet():
    torch.manual_seed(0)
    model = create_model("resnet18", 2, input_size=64, label_names=["normal", "pneumonia"])
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))  # move the BatchNorm running statistics off their initial values
    return model.eval()


@pytest.mark.slow
def test_roundtrip_gives_identical_outputs_and_reads_weights_only(tmp_path):
    model = trained_resnet()
    model.contract.threshold = 0.37
    model.contract.ood = {"method": "energy", "threshold": -4.5}
    config = {"model": {"name": "resnet18", "input_size": 64}, "data_dir": Path("/data/cache")}
    save_checkpoint(tmp_path / "best.pt", model, model.contract, config, {"epoch": 3, "auc": np.float64(0.75),
                                                                          "counts": np.array([5, 2])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temporary file left behind

    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert raw["format"] == "medclf-checkpoint" and raw["model_name"] == "resnet18"
    assert raw["model_kwargs"] == {"num_classes": 2, "in_chans": 3, "input_size": 64, "drop_rate": 0.0,
                                   "label_names": ["normal", "pneumonia"], "positive_index": 1}

    loaded, contract, payload = load_checkpoint(tmp_path / "best.pt")
    assert not loaded.training
    assert contract == model.contract and loaded.contract == contract
    assert contract.threshold == 0.37 and contract.ood == {"method": "energy", "threshold": -4.5}
    assert payload["config"] == {"model": {"name": "resnet18", "input_size": 64}, "data_dir": "/data/cache"}
    assert payload["extra"] == {"epoch": 3, "auc": 0.75, "counts": [5, 2]}
    assert "state_dict" not in payload
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.slow  # ~3 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_roundtrip_grey_timm_vit_and_ema_wrapper(tmp_path):
    torch.manual_seed(1)
    model = create_model("timm:vit_tiny_patch16_224", 2, in_chans=1, input_size=32).eval()
    ema = AveragedModel(model)  # what the training loop saves with train.ema
    save_checkpoint(tmp_path / "last.pt", ema, model.contract, {})
    loaded, contract, _ = load_checkpoint(tmp_path / "last.pt")
    assert (contract.in_chans, contract.input_size, contract.model_name) == (1, 32, "timm:vit_tiny_patch16_224")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.slow
def test_extra_buffers_fail_loading_with_a_clear_error(tmp_path):
    model = trained_resnet()
    model.model.layer1[0].register_buffer("aux_bn_mean", torch.zeros(64))  # e.g. an auxiliary BatchNorm
    save_checkpoint(tmp_path / "adv.pt", model, model.contract, {})
    with pytest.raises(MedclfError) as e:
        load_checkpoint(tmp_path / "adv.pt")
    msg = str(e.value)
    assert str(tmp_path / "adv.pt") in msg
    assert "unexpected keys ['model.layer1.0.aux_bn_mean']" in msg and "auxiliary BatchNorm" in msg


def test_unreadable_files(tmp_path):
    with pytest.raises(MedclfError, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(MedclfError, match="cannot read checkpoint .*corrupt.pt: corrupt or not a weights-only"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"format": "medclf-checkpoint", "thing": NotPlain()}, tmp_path / "pickled.pt")
    refused = r"pickled.pt: refused: it holds pickled code or objects \(test_checkpoint.NotPlain\)"
    with pytest.raises(MedclfError, match=refused):
        load_checkpoint(tmp_path / "pickled.pt")
    torch.save(create_model("resnet18", 2).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(MedclfError, match=r"plain.pt is not a medclf checkpoint .* model.weights=.*plain.pt"):
        load_checkpoint(tmp_path / "plain.pt")


def test_truncated_checkpoint(tmp_path):
    model = create_model("resnet18", 2)
    save_checkpoint(tmp_path / "best.pt", model, model.contract, {})
    data = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedclfError, match="cannot read checkpoint .*cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_non_plain_config_is_refused_before_writing(tmp_path):
    model = create_model("resnet18", 2)
    with pytest.raises(MedclfError, match=r"config.train.callback is a NotPlain"):
        save_checkpoint(tmp_path / "best.pt", model, model.contract, {"train": {"callback": NotPlain()}})
    assert not any(tmp_path.iterdir())


class _System:
    """Unpickling this would run a shell command (what a trojaned checkpoint does)."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /nonexistent/medclf-pwned",))


def test_every_checkpoint_refusal_is_medclfs_own_line_without_torchs_advice(tmp_path):
    from medclf.engine.state import _read_last
    from medclf.models.checkpoint import read_checkpoint
    from medclf.models.weights import read_state_dict

    evil = tmp_path / "best.pt"
    torch.save({"format": "medclf-checkpoint", "payload": _System()}, evil)
    why = "it holds pickled code or objects (posix.system), not only tensors and plain values"
    expected = {
        read_checkpoint: f"{evil}: refused: {why}, so medclf does not load it (a medclf checkpoint holds nothing else)",
        lambda p: _read_last(p, mmap=False): f"--resume: {evil}: refused ({why}); medclf checkpoints hold only "
                                             "tensors and plain values, so this file was not written by medclf train",
        read_state_dict: f"model.weights: cannot read {evil} as a weights file ({why})",
    }
    for load, message in expected.items():
        with pytest.raises(MedclfError) as err:
            load(evil)
        assert str(err.value) == message
        assert "weights_only" not in str(err.value) and err.value.__cause__ is None
    truncated = tmp_path / "last.pt"
    truncated.write_bytes(evil.read_bytes()[:100])
    with pytest.raises(MedclfError) as err:
        read_checkpoint(truncated)
    assert str(err.value).startswith(f"cannot read checkpoint {truncated}: corrupt or not a weights-only torch file (")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
