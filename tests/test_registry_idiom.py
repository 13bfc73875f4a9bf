"""The one registry idiom (medclf.registry) and the seven families built on it."""

import pytest

from medclf.errors import ConfigError, MedclfError
from medclf.registry import Registry


def test_decorator_registers_and_names_are_alphabetical():
    reg: Registry = Registry("widget")

    @reg.register("zeta")
    def zeta():
        return "z"

    reg.register("alpha", lambda: "a")
    assert zeta() == "z"  # the decorator hands the function back unchanged
    assert reg.names() == ["alpha", "zeta"] == list(reg)
    assert reg.lookup("alpha")() == "a" and "zeta" in reg and "beta" not in reg and len(reg) == 2
    reg.unregister("zeta")
    reg.unregister("never there")
    assert reg.names() == ["alpha"]


def test_unknown_name_is_one_line_with_field_close_matches_and_valid_names():
    reg: Registry = Registry("loss", field="loss.name", error=ConfigError, valid_tail=", or your own")
    for name in ("focal", "ce", "soft_f1"):
        reg.register(name, object())
    with pytest.raises(ConfigError) as err:
        reg.lookup("focl")
    assert str(err.value) == ("loss.name: unknown loss 'focl' (did you mean focal?); "
                              "valid: ce, focal, soft_f1, or your own")
    with pytest.raises(ConfigError) as err:  # 'dice' is not close enough to 'ce' to suggest it
        reg.lookup("dice")
    assert str(err.value) == "loss.name: unknown loss 'dice'; valid: ce, focal, soft_f1, or your own"


def test_order_puts_listed_names_first_then_registration_order():
    reg: Registry = Registry("score", order=("msp", "energy"))
    for name in ("mine", "energy", "later", "msp"):
        reg.register(name, name)
    assert reg.names() == ["msp", "energy", "mine", "later"]
    assert [v for _, v in reg.items()] == reg.values() == reg.names()


def test_builtin_loader_runs_once_before_the_first_listing():
    calls = []
    reg: Registry = Registry("method", load=lambda: (calls.append(1), reg.register("builtin", 1)))
    reg.register("early", 0)
    assert calls == []  # registering does not load
    assert reg.names() == ["builtin", "early"] and reg.lookup("builtin") == 1
    assert calls == [1]


def test_the_seven_families_share_the_idiom():
    from medclf.data.samplers import SAMPLERS
    from medclf.evaluation.ood import OOD_SCORES
    from medclf.explain.registry import METHODS
    from medclf.losses import LOSSES, MULTILABEL_LOSSES
    from medclf.models.registry import MODELS
    from medclf.report.html import SECTIONS
    from medclf.robust.attacks import ATTACKS

    families = [MODELS, LOSSES, MULTILABEL_LOSSES, METHODS, SECTIONS, OOD_SCORES, ATTACKS, SAMPLERS]
    assert all(isinstance(f, Registry) for f in families)
    assert ATTACKS.names() == ["fgsm", "pgd"]
    assert OOD_SCORES.names() == ["msp", "energy", "mahalanobis"]
    assert METHODS.names()[:4] == ["gradcam", "gradcam++", "scorecam", "eigencam"]
    with pytest.raises(MedclfError) as err:
        ATTACKS.lookup("fgm")
    assert str(err.value) == "unknown attack 'fgm' (did you mean fgsm?); valid: fgsm, pgd"
