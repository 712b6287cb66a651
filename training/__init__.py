"""training: BTYD and LightGBM models, backtests, metrics, plots, MLflow registry."""
