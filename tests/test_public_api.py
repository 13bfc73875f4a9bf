"""`import medclf` offers the notebook path: prepare, config, train, evaluate, open a run, predict, errors."""

from __future__ import annotations

import numpy as np
import pytest


def test_every_public_name_resolves_and_unknown_names_fail():
    import medclf

    for name in medclf.__all__:
        assert getattr(medclf, name) is not None, name
    assert medclf.evaluate.__name__ == "evaluate_run" and issubclass(medclf.DataError, medclf.MedclfError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        medclf.nope  # noqa: B018 (the attribute access is what raises)


@pytest.mark.slow
def test_open_run_and_predict_arrays_through_the_package(tiny_cache, tmp_path):
    import medclf
    from medclf.data.cache import Cache

    cfg = medclf.load_config(None, ["model.input_size=32", "train.epochs=1", "data.batch_size=12",
                                    "eval.tta_flip=true"])
    run_dir = medclf.train(cfg, tiny_cache, tmp_path / "run", progress=False)
    predictor = medclf.open_run(run_dir).predictor()
    images = np.asarray(Cache.open(tiny_cache).images[:5])
    prediction = predictor.predict_arrays(images)
    assert prediction.probs.shape == (5, 2) and np.allclose(prediction.probs.sum(axis=1), 1, atol=1e-5)
    table = predictor.columns(prediction)
    assert list(table.columns[:3]) == ["prob", "predicted", "threshold"]
    assert table["predicted"].tolist() == ["pneumonia" if p >= predictor.threshold else "normal" for p in table["prob"]]
    assert predictor.tta_flip is True and predictor.has_ood  # the detector is fitted when training ends
