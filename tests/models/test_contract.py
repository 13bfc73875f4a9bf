import json

import pytest

from medclf.errors import ConfigError
from medclf.models import DataContract


def make(**kw):
    args = dict(model_name="resnet18", num_classes=2, label_names=["normal", "pneumonia"], positive_index=1,
                input_size=224, in_chans=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    args.update(kw)
    return DataContract(**args)


def test_roundtrip_through_plain_json():
    c = make(threshold=0.37, ood={"method": "energy", "threshold": -4.5})
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain types only
    assert d["threshold"] == 0.37 and d["ood"] == {"method": "energy", "threshold": -4.5}
    back = DataContract.from_dict(json.loads(json.dumps(d)))
    assert back == c
    assert back.threshold == 0.37 and back.mean == [0.485, 0.456, 0.406]


def test_defaults():
    c = make()
    assert c.threshold == 0.5 and c.ood is None
    assert DataContract.from_dict({k: v for k, v in c.to_dict().items() if k not in ("threshold", "ood")}) == c


def test_unknown_and_missing_keys_are_errors():
    d = make().to_dict()
    with pytest.raises(ConfigError, match=r"unknown keys \['colour'\]"):
        DataContract.from_dict({**d, "colour": "red"})
    del d["mean"]
    with pytest.raises(ConfigError, match=r"missing keys \['mean'\]"):
        DataContract.from_dict(d)


@pytest.mark.parametrize("kw, message", [
    ({"label_names": ["a", "b", "c"]}, "3 label_names"),
    ({"positive_index": 2}, "positive_index 2"),
    ({"in_chans": 1}, "mean/std need 1 values"),
    ({"num_classes": 1, "label_names": ["a"], "positive_index": 0}, "num_classes must be >= 2"),
])
def test_invalid_contracts(kw, message):
    with pytest.raises(ConfigError, match=message):
        make(**kw)
