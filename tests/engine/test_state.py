"""Early stopping: which epoch becomes best.pt."""

from medclf.engine.state import EarlyStopper


def test_early_stopping_breaks_ties_of_a_saturated_metric_by_val_loss():
    stopper = EarlyStopper("val_auc", patience=1)
    assert stopper.update({"val_auc": 1.0, "val_loss": 0.5})
    assert stopper.update({"val_auc": 1.0, "val_loss": 0.1})  # same AUC, lower loss: the better checkpoint
    assert not stopper.update({"val_auc": 1.0, "val_loss": 0.2})
    assert not stopper.update({"val_auc": 0.9, "val_loss": 0.01})
    assert stopper.should_stop and stopper.best_loss == 0.1
