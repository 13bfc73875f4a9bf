import pytest

from medclf.config import Config, config_from_dict, load_config
from medclf.errors import ConfigError


def test_defaults_then_preset_then_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {name: resnet34}\ntrain: {epochs: 7, lr: 1e-3}\n")
    cfg = load_config(preset, ["train.epochs=2", "loss.name=focal", "train.patience=null", "train.adv_eps=2/255"])
    assert cfg.train.adv_eps == pytest.approx(2 / 255)
    assert cfg.model.name == "resnet34"
    assert cfg.train.epochs == 2
    assert cfg.train.lr == pytest.approx(0.001)  # YAML 1.1 reads 1e-3 as a string: accepted as a float
    assert cfg.loss.name == "focal"
    assert cfg.train.patience is None
    assert cfg.data.batch_size == Config().data.batch_size


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*train.epochs"):
        load_config(None, ["train.epoch=3"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"'train.epochs' must be int, got 'many'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"'model.pretrained' must be bool"):
        load_config(None, ["model.pretrained=3"])


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["train.epochs"])


def test_shipped_presets_load():
    for name in ("seed_resnet50", "vit_b16", "cpu_small", "demo", "pneumoniamnist_cpu"):
        cfg = load_config(name)
        assert cfg.train.epochs >= 1
    assert load_config("seed_resnet50").model.name == "resnet50"
    assert load_config("vit_b16").train.layer_decay is not None


def test_roundtrip_through_dict():
    cfg = load_config(None, ["train.epochs=3", "data.sampler=balanced"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_typos_get_a_did_you_mean(tmp_path):
    """difflib's nearest valid name for a mistyped key or preset; a missing YAML path is 'no such file'
    (issue 22, item 9)."""
    from medclf.config import list_presets

    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epoch=3"])
    assert str(err.value).startswith("override: unknown key 'train.epoch'; did you mean train.epochs? (valid: ")
    with pytest.raises(ConfigError) as err:
        load_config("demoo")
    assert str(err.value) == (f"config preset 'demoo' not found: give a YAML file or one of "
                              f"{', '.join(list_presets())}; did you mean demo?")
    missing = tmp_path / "mine.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert str(err.value) == (f"{missing}: no such file (--config takes a YAML file or one of "
                              f"{', '.join(list_presets())})")
