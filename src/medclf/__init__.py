"""medclf: prepare, train, evaluate, explain and serve medical image classifiers."""

__version__ = "0.1.0"
