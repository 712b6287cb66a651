"""Backtest plots as PNG files: what people would rather look at than read.

Figures are built with matplotlib's object API (``Figure``), so importing this module sets
no backend and no global state, and plots can be drawn from threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from features.io import atomic_path
from training.metrics import calibration_bins

COLORS = {"model": "#1f77b4", "bgnbd": "#ff7f0e", "recency_only": "#7f7f7f", "actual": "#222222"}
LABELS = {"model": "model (LightGBM)", "bgnbd": "BG/NBD", "recency_only": "recency only", "actual": "actual"}


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def roc_plot(y, scores: dict[str, np.ndarray], path: Path) -> Path:
    """ROC curves of several scorers on the same customers."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=LABELS.get(name, name), color=COLORS.get(name))
    ax.plot([0, 1], [0, 1], ls=":", color="#bbbbbb")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Who reorders: ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def calibration_plot(y, probabilities: dict[str, np.ndarray], path: Path, n_bins: int = 10) -> Path:
    """Predicted vs observed repurchase rate in the equal-count bins of the ECE (:func:`training.metrics.calibration_bins`)."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, p in probabilities.items():
        predicted, observed, _ = calibration_bins(y, p, n_bins)
        ax.plot(predicted, observed, "o-", label=LABELS.get(name, name), color=COLORS.get(name))
    ax.plot([0, 1], [0, 1], ls=":", color="#bbbbbb")
    ax.set(xlabel="predicted probability", ylabel="observed repurchase rate", title="Calibration")
    ax.legend(loc="upper left")
    return _save(fig, path)


def gain_plot(y, scores: dict[str, np.ndarray], path: Path) -> Path:
    """Cumulative gain: share of reorderers reached when contacting the top x% by score."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    y = np.asarray(y, dtype=float)
    share = np.arange(1, len(y) + 1) / len(y)
    for name, s in scores.items():
        captured = np.cumsum(y[np.argsort(-s, kind="stable")]) / max(y.sum(), 1)
        ax.plot(share, captured, label=LABELS.get(name, name), color=COLORS.get(name))
    ax.plot([0, 1], [0, 1], ls=":", color="#bbbbbb", label="random")
    ax.axvline(0.1, color="#dddddd", lw=0.8)
    ax.set(xlabel="share of customers contacted", ylabel="share of reorderers reached", title="Gain (lift)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def decile_plot(actual, predictions: dict[str, np.ndarray], path: Path, what: str = "revenue") -> Path:
    """Actual vs predicted totals per predicted decile."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    actual = np.asarray(actual, dtype=float)
    width = 0.8 / (len(predictions) + 1)
    x = np.arange(10)
    for k, (name, p) in enumerate(predictions.items()):
        deciles = np.array_split(np.argsort(-p, kind="stable"), 10)
        ax.bar(x + k * width, [actual[d].sum() for d in deciles], width, label=f"actual ({LABELS.get(name, name)} deciles)",
               color=COLORS.get(name), alpha=0.35)
        ax.plot(x + k * width, [p[d].sum() for d in deciles], "o", color=COLORS.get(name), label=f"predicted: {LABELS.get(name, name)}")
    ax.set(xlabel="predicted decile (1 = highest)", ylabel=f"{what} in horizon", title=f"{what.capitalize()} by predicted decile")
    ax.set_xticks(x + width * (len(predictions) - 1) / 2, [str(i + 1) for i in x])
    ax.legend(fontsize=7)
    return _save(fig, path)


def timing_plot(days, p10, p50, p90, path: Path, horizon_days: int) -> Path:
    """Actual days to the next order against the predicted p10-p90 band (reorderers only)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    days = np.asarray(days, dtype=float)
    hi = np.where(np.isfinite(p90), p90, horizon_days)
    order = np.argsort(np.nan_to_num(p50, nan=horizon_days), kind="stable")
    idx = np.arange(len(days))
    ax.fill_between(idx, np.nan_to_num(p10[order], nan=horizon_days), hi[order], color=COLORS["model"], alpha=0.2,
                    label="predicted p10-p90", step="mid")
    ax.plot(idx, np.nan_to_num(p50[order], nan=np.nan), color=COLORS["model"], label="predicted p50")
    ax.plot(idx, days[order], ".", ms=2, color=COLORS["actual"], label="actual")
    ax.set(xlabel="customers who reordered (sorted by p50)", ylabel="days to next order", title="Next-order timing")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def importance_plot(names, gains, path: Path, top: int = 20) -> Path:
    """LightGBM gain importance, top features."""
    gains = np.asarray(gains, dtype=float)
    order = np.argsort(gains)[-top:]
    fig = Figure(figsize=(6, max(3, 0.28 * len(order))))
    ax = fig.add_subplot()
    ax.barh([names[i] for i in order], gains[order] / max(gains.sum(), 1e-12), color=COLORS["model"])
    ax.set(xlabel="share of total gain", title="What drives the repurchase score")
    return _save(fig, path)


def tracking_plot(weeks, actual, expected: dict[str, np.ndarray], cutoff_week: float, path: Path) -> Path:
    """Weekly cumulative repeat purchases, actual vs model (Fader, Hardie & Lee 2005, fig. 2)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(weeks, actual, color=COLORS["actual"], label="actual")
    for name, values in expected.items():
        ax.plot(weeks, values, ls="--", color=COLORS.get(name), label=LABELS.get(name, name))
    ax.axvline(cutoff_week, color="#999999", ls=":", label="cutoff")
    ax.set(xlabel="week", ylabel="cumulative repeat purchases", title="Tracking: cumulative repeat purchases")
    ax.legend(loc="upper left")
    return _save(fig, path)
