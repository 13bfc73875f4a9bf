"""The web page's refer line (issue 21): what /api/predict returns for the conformal band of one image."""

from medclf.serve.predictor import refer_result


def test_refer_result_says_refer_when_the_set_is_not_one_class():
    band = {"alpha": 0.1, "score": "lac", "qhat": [0.7], "n": 100}
    assert refer_result({"refer": True, "prediction_set": "normal|pneumonia"}, band) == {
        "flag": True, "set": "normal|pneumonia", "alpha": 0.1, "text": "uncertain — refer"}
    assert refer_result({"refer": False, "prediction_set": "pneumonia"}, band)["flag"] is False
    assert refer_result({"refer": False, "prediction_set": "pneumonia"}, None) is None
