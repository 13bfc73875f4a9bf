"""Early stopping: which epoch becomes best.pt."""

from medclf.engine.state import EarlyStopper


def test_early_stopping_breaks_ties_of_a_saturated_metric_by_val_loss():
    stopper = EarlyStopper("val_auc", patience=1)
    assert stopper.update({"val_auc": 1.0, "val_loss": 0.5})
    assert stopper.update({"val_auc": 1.0, "val_loss": 0.1})  # same AUC, lower loss: the better checkpoint
    assert not stopper.update({"val_auc": 1.0, "val_loss": 0.2})
    assert not stopper.update({"val_auc": 0.9, "val_loss": 0.01})
    assert stopper.should_stop and stopper.best_loss == 0.1


def test_kept_epoch_replays_the_selection_rule():
    import pandas as pd

    # val_auc saturates at epoch 2; the lower val loss breaks the tie at epoch 3; the lowest loss is epoch 4
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_auc": [0.8, 1.0, 1.0, 0.9],
                            "val_loss": [0.6, 0.5, 0.4, 0.3]})
    assert EarlyStopper.kept_epoch(history, "val_auc") == 3
    assert EarlyStopper.kept_epoch(history, "val_loss") == 4
    assert EarlyStopper.kept_epoch(history, "val_f1") is None  # not a column
