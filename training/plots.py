"""Backtest plots as PNG files: what people would rather look at than read.

Figures are built with matplotlib's object API (``Figure``), so importing this module sets
no backend and no global state, and plots can be drawn from threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from features.common.outputs import atomic_path
from training.i18n import N_, language, use_language_fonts
from training.metrics import calibration_bins


COLORS = {"model": "#1f77b4", "bgnbd": "#ff7f0e", "recency_only": "#7f7f7f", "actual": "#222222"}
LABELS = {"model": N_("model (LightGBM)"), "bgnbd": N_("BG/NBD"), "recency_only": N_("recency only"),
          "actual": N_("actual")}


def _label(name: str, gettext) -> str:
    return gettext(LABELS.get(name, name))


def _save(fig: Figure, path: Path, lang: str | None = None) -> Path:
    use_language_fonts(fig, language(lang))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def roc_plot(y, scores: dict[str, np.ndarray], path: Path, *, lang: str | None = None) -> Path:
    """ROC curves of several scorers on the same customers (text in ``lang``, see ``training.i18n``)."""
    _ = language(lang).gettext
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, s in scores.items():
        fpr, tpr, _thresholds = roc_curve(y, s)
        ax.plot(fpr, tpr, label=_label(name, _), color=COLORS.get(name))
    ax.plot([0, 1], [0, 1], ls=":", color="#bbbbbb")
    ax.set(xlabel=_("false positive rate"), ylabel=_("true positive rate"), title=_("Who reorders: ROC"))
    ax.legend(loc="lower right")
    return _save(fig, path, lang)


def calibration_plot(y, probabilities: dict[str, np.ndarray], path: Path, n_bins: int = 10, *,
                     lang: str | None = None) -> Path:
    """Predicted vs observed repurchase rate in the equal-count bins of the ECE (:func:`training.metrics.calibration_bins`)."""
    _ = language(lang).gettext
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, p in probabilities.items():
        predicted, observed, _sizes = calibration_bins(y, p, n_bins)
        ax.plot(predicted, observed, "o-", label=_label(name, _), color=COLORS.get(name))
    ax.plot([0, 1], [0, 1], ls=":", color="#bbbbbb")
    ax.set(xlabel=_("predicted probability"), ylabel=_("observed repurchase rate"), title=_("Calibration"))
    ax.legend(loc="upper left")
    return _save(fig, path, lang)


def gain_plot(y, scores: dict[str, np.ndarray], path: Path, *, lang: str | None = None) -> Path:
    """Cumulative gain: share of reorderers reached when contacting the top x% by score."""
    _ = language(lang).gettext
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    y = np.asarray(y, dtype=float)
    share = np.arange(1, len(y) + 1) / len(y)
    for name, s in scores.items():
        captured = np.cumsum(y[np.argsort(-s, kind="stable")]) / max(y.sum(), 1)
        ax.plot(share, captured, label=_label(name, _), color=COLORS.get(name))
    ax.plot([0, 1], [0, 1], ls=":", color="#bbbbbb", label=_("random"))
    ax.axvline(0.1, color="#dddddd", lw=0.8)
    ax.set(xlabel=_("share of customers contacted"), ylabel=_("share of reorderers reached"), title=_("Gain (lift)"))
    ax.legend(loc="lower right")
    return _save(fig, path, lang)


def decile_plot(actual, predictions: dict[str, np.ndarray], path: Path, what: str = N_("revenue"), *,
                lang: str | None = None) -> Path:
    """Actual vs predicted totals per predicted decile."""
    _ = language(lang).gettext
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    actual = np.asarray(actual, dtype=float)
    width = 0.8 / (len(predictions) + 1)
    x = np.arange(10)
    for k, (name, p) in enumerate(predictions.items()):
        deciles = np.array_split(np.argsort(-p, kind="stable"), 10)
        ax.bar(x + k * width, [actual[d].sum() for d in deciles], width,
               label=_("actual ({scorer} deciles)").format(scorer=_label(name, _)), color=COLORS.get(name), alpha=0.35)
        ax.plot(x + k * width, [p[d].sum() for d in deciles], "o", color=COLORS.get(name),
                label=_("predicted: {scorer}").format(scorer=_label(name, _)))
    ax.set(xlabel=_("predicted decile (1 = highest)"), ylabel=_("{what} in horizon").format(what=_(what)),
           title=_("{what} by predicted decile").format(what=_(what).capitalize()))
    ax.set_xticks(x + width * (len(predictions) - 1) / 2, [str(i + 1) for i in x])
    ax.legend(fontsize=7)
    return _save(fig, path, lang)


def timing_plot(days, p10, p50, p90, path: Path, horizon_days: int, *, lang: str | None = None) -> Path:
    """Actual days to the next order against the predicted p10-p90 band (reorderers only)."""
    _ = language(lang).gettext
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    days = np.asarray(days, dtype=float)
    hi = np.where(np.isfinite(p90), p90, horizon_days)
    order = np.argsort(np.nan_to_num(p50, nan=horizon_days), kind="stable")
    idx = np.arange(len(days))
    ax.fill_between(idx, np.nan_to_num(p10[order], nan=horizon_days), hi[order], color=COLORS["model"], alpha=0.2,
                    label=_("predicted p10-p90"), step="mid")
    ax.plot(idx, np.nan_to_num(p50[order], nan=np.nan), color=COLORS["model"], label=_("predicted p50"))
    ax.plot(idx, days[order], ".", ms=2, color=COLORS["actual"], label=_("actual"))
    ax.set(xlabel=_("customers who reordered (sorted by p50)"), ylabel=_("days to next order"),
           title=_("Next-order timing"))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path, lang)


def importance_plot(names, gains, path: Path, top: int = 20, *, lang: str | None = None) -> Path:
    """LightGBM gain importance, top features (feature names are machine names: never translated)."""
    _ = language(lang).gettext
    gains = np.asarray(gains, dtype=float)
    order = np.argsort(gains)[-top:]
    fig = Figure(figsize=(6, max(3, 0.28 * len(order))))
    ax = fig.add_subplot()
    ax.barh([names[i] for i in order], gains[order] / max(gains.sum(), 1e-12), color=COLORS["model"])
    ax.set(xlabel=_("share of total gain"), title=_("What drives the repurchase score"))
    return _save(fig, path, lang)


def tracking_plot(weeks, actual, expected: dict[str, np.ndarray], cutoff_week: float, path: Path, *,
                  lang: str | None = None) -> Path:
    """Weekly cumulative repeat purchases, actual vs model (Fader, Hardie & Lee 2005, fig. 2)."""
    _ = language(lang).gettext
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(weeks, actual, color=COLORS["actual"], label=_("actual"))
    for name, values in expected.items():
        ax.plot(weeks, values, ls="--", color=COLORS.get(name), label=_label(name, _))
    ax.axvline(cutoff_week, color="#999999", ls=":", label=_("cutoff"))
    ax.set(xlabel=_("week"), ylabel=_("cumulative repeat purchases"), title=_("Tracking: cumulative repeat purchases"))
    ax.legend(loc="upper left")
    return _save(fig, path, lang)


def cohort_heatmap(cohorts: dict, path: Path, max_rows: int = 36, *, lang: str | None = None) -> Path:
    """The cohort retention triangle (``economics.json``'s ``cohorts``) as a heatmap: rows are
    acquisition months, columns months since, colour the share of the cohort ordering then (text in ``lang``)."""
    language_ = language(lang)
    _ = language_.gettext
    rows = cohorts["rows"][-max_rows:]
    months = cohorts["months"]
    values = np.array([[np.nan if v is None else v for v in row["retention"]] for row in rows], dtype=float)
    fig = Figure(figsize=(max(5.0, 0.35 * len(months) + 2.5), max(3.0, 0.28 * len(rows) + 1.5)))
    ax = fig.add_subplot()
    if values.size:
        image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="Blues", vmin=0.0,
                          vmax=max(float(np.nanmax(values)) if np.isfinite(values).any() else 1.0, 0.01))
        fig.colorbar(image, ax=ax, label=_("share who ordered in that month"))
    ax.set_xticks(range(len(months)), [str(m) for m in months], fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{row['cohort']} ({language_.count(row['customers'])})" for row in rows], fontsize=7)
    ax.set(xlabel=_("months after the first order"), ylabel=_("acquisition cohort (customers)"),
           title=_("Cohort retention: share ordering again in month k"))
    return _save(fig, path, lang)
