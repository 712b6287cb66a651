"""Temporal backtest at one cutoff: every model and its baselines on the same split.

The models see only orders on or before the cutoff ``c``; the truth is what the same
customers did in ``(c, c + H]``. Baselines on the same customers: BG/NBD alone (its own
horizon probability, expected orders, and with Gamma-Gamma expected revenue) and
recency-only (fewer days since the last order ranks higher).

A split that leaves the composite model no training origin (a young log, or the paper's
39-week holdout on CDNOW) still reports BG/NBD and recency-only: the model's block keeps its
keys with nulls and ``model_note`` says in one line why. A BG/NBD or Gamma-Gamma fit that
runs to a boundary is reported with its ``fit_status`` (see ``training.btyd``).

``calibration_by_origin`` lists, for each training origin of the model and then for the
backtest split itself (role ``backtest``), the customers, the share who bought again within
the horizon (``base_rate``), the calibrated model's ``mean_p_repurchase``, their difference
(``calibration_gap``) and the ``ece``: how far apart the origins' seasons are, and how well
the level carried over to the horizon. It is null when no LightGBM model was trained; a
model pickled before it existed gives the ``backtest`` row alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import hyp2f1

from features.common.outputs import atomic_path
from features.orders import parse_date
from features.pipeline import build_features, build_labels
from features.timecut import between, day_end, until
from training import plots
from training.btyd import GAMMA_GAMMA_NOT_FITTED, BTYDModel, fit_status_meaning, thin_data_reason
from training.i18n import Language, language
from training.metrics import classification_metrics, regression_metrics, timing_metrics
from training.model import RepurchaseModel, btyd_only_reason, fit_gamma_gamma, origin_calibration_row, quantiles_from_cdf
from training.tiers import (
    YEAR_DAYS,
    Tiers,
    default_tiers,
    macro_f1_weights,
    next_year_tier_probabilities,
    tier_columns,
    tier_metrics,
)

# The model block's classification metrics, null when the model could not be trained.
MODEL_METRICS = ("n", "base_rate", "auc", "pr_auc", "lift_top10", "capture_top10", "brier", "log_loss", "ece")


@dataclass
class Backtest:
    """The report (JSON-ready) and the per-customer frame behind it."""

    report: dict
    frame: pd.DataFrame
    model: RepurchaseModel | None = None
    plots: dict[str, Path] = field(default_factory=dict)


def bgnbd_unconditional_expected(params: dict, t_units) -> np.ndarray:
    """E[X(t)] for a new customer, t in the parameters' time unit (Fader, Hardie & Lee 2005, eq. 7).

    In the no-drop-out limit (a = 0) the NBD's r t / alpha.
    """
    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    t = np.asarray(t_units, dtype=float)
    if a == 0:
        return r * t / alpha
    z = t / (alpha + t)
    return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, z))


def _bgnbd_quantiles(bgnbd: BTYDModel, frame: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    f, r, T = (frame[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    cdf = np.column_stack([bgnbd.p_repurchase(h, f, r, T) for h in grid])
    return quantiles_from_cdf(grid, cdf)


def _tracking(orders: pd.DataFrame, frame: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int, bgnbd: BTYDModel, path: Path,
              lang: str | None = None):
    """Weekly cumulative repeat purchase days of the cutoff's customers: actual vs BG/NBD."""
    cohort = set(frame["customer_id"])
    end = cutoff + pd.Timedelta(days=horizon_days)
    days = until(orders.loc[orders["customer_id"].isin(cohort)], cutoff, horizon_days=horizon_days)
    days = days.assign(day=days["order_ts"].dt.normalize())[["customer_id", "day"]].drop_duplicates()
    first = days.groupby("customer_id")["day"].transform("min")
    start = days["day"].min()
    repeat_days = days.loc[days["day"] > first, "day"]
    n_weeks = int(math.ceil(((end - start).days + 1) / 7))
    weeks = np.arange(1, n_weeks + 1)
    actual = np.bincount(((repeat_days - start).dt.days // 7).to_numpy(), minlength=n_weeks)[:n_weeks].cumsum()
    births = ((days.groupby("customer_id")["day"].min() - start).dt.days).value_counts()
    unit = bgnbd.time_unit_days
    expected = np.zeros(n_weeks)
    for birth, count in births.items():
        age = np.clip(weeks * 7.0 - birth, 0, None) / unit
        expected += count * bgnbd_unconditional_expected(bgnbd.params_, age)
    cutoff_week = ((cutoff - start).days + 1) / 7
    plots.tracking_plot(weeks, actual, {"bgnbd": expected}, cutoff_week, path, lang=lang)
    holdout_mask = weeks > cutoff_week
    return {
        "weeks": int(n_weeks),
        "cutoff_week": round(cutoff_week, 2),
        "actual_cumulative_end": int(actual[-1]),
        "bgnbd_cumulative_end": float(expected[-1]),
        "holdout_actual": int(actual[-1] - actual[~holdout_mask][-1]) if (~holdout_mask).any() else int(actual[-1]),
    }


def _clean(value):
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def run_backtest(
    orders: pd.DataFrame,
    cutoff,
    horizon_days: int = 90,
    *,
    with_model: bool = True,
    model_params: dict | None = None,
    fitted_model: RepurchaseModel | None = None,
    plot_dir: Path | None = None,
    source: str = "",
    tiers: Tiers | None = None,
    lang: str | None = None,
) -> Backtest:
    """Fit on orders up to ``cutoff``, predict ``(cutoff, cutoff + H]``, score against the truth.

    Parameters
    ----------
    orders : pandas.DataFrame
        Validated orders (``features.orders``); orders after the horizon are read only for the
        ``tiers`` block (a year past the cutoff), never by a model.
    with_model : bool
        Also train and evaluate the composite LightGBM model (else BTYD baselines only).
    model_params : dict, optional
        Hyperparameters for :class:`RepurchaseModel`.
    fitted_model : RepurchaseModel, optional
        Evaluate this already fitted model instead of training one; it must have been
        trained on or before the cutoff.
    plot_dir : Path, optional
        Where PNG plots go; none are drawn without it.
    tiers : Tiers, optional
        Member tiers for the ``tiers`` block (default: the shipped ones), which is added when
        the log reaches 365 days past the cutoff.
    lang : str, optional
        Language of the plots' text (``en``, ``zh``; default ``$REPURCHASE_LANG``, else English).
    """
    cutoff = parse_date(cutoff, "cutoff")
    year_orders = until(orders, cutoff, horizon_days=YEAR_DAYS)
    reaches_a_year = bool(len(orders)) and orders["order_ts"].max() >= day_end(cutoff, YEAR_DAYS - 1)
    orders = until(orders, cutoff, horizon_days=horizon_days)
    past = until(orders, cutoff)
    features = build_features(past, cutoff)
    labels = build_labels(orders, cutoff, horizon_days)
    frame = features.merge(labels, on="customer_id", how="left", validate="one_to_one")
    y = frame["label_repurchase"].to_numpy()

    f, r, T = (frame[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    bgnbd = BTYDModel().fit(f, r, T)
    frame["bgnbd_p_repurchase"] = bgnbd.p_repurchase(horizon_days, f, r, T)
    frame["bgnbd_expected_orders"] = bgnbd.expected_orders(horizon_days, f, r, T)
    gamma_gamma = fit_gamma_gamma(frame)
    if gamma_gamma is None:
        order_value = frame["avg_order_value"].to_numpy(dtype=float)
    else:
        order_value = gamma_gamma.expected_order_value(f, np.where(f > 0, frame["monetary_value"], 0.0))
    frame["bgnbd_expected_revenue"] = frame["bgnbd_expected_orders"] * order_value
    frame["recency_score"] = -frame["days_since_last"].to_numpy(dtype=float)

    report = {
        "source": source,
        "cutoff": cutoff.date().isoformat(),
        "horizon_days": int(horizon_days),
        "n_customers": int(len(frame)),
        "base_rate": float(y.mean()),
    }
    bgnbd_block = classification_metrics(y, frame["bgnbd_p_repurchase"])
    bgnbd_block.update(
        params=bgnbd.params_,
        time_unit="week" if bgnbd.time_unit_days == 7 else f"{bgnbd.time_unit_days:g} days",
        log_likelihood=bgnbd.log_likelihood_,
        fit_status=bgnbd.fit_status_,
        fit_meaning=fit_status_meaning(bgnbd.fit_status_),
        fit_detail=bgnbd.fit_detail_,
        gamma_gamma_params=gamma_gamma.params_ if gamma_gamma is not None else None,
        gamma_gamma_fit_status=gamma_gamma.fit_status_ if gamma_gamma is not None else GAMMA_GAMMA_NOT_FITTED,
        orders=regression_metrics(frame["label_orders"], frame["bgnbd_expected_orders"]),
        revenue=regression_metrics(frame["label_revenue"], frame["bgnbd_expected_revenue"]),
    )
    report["recency_only"] = classification_metrics(y, frame["recency_score"], probabilities=False)
    report["holdout_orders"] = {
        "actual": int(frame["label_orders"].sum()),
        "bgnbd": float(frame["bgnbd_expected_orders"].sum()),
    }

    model = None
    if with_model:
        if fitted_model is not None:
            if pd.Timestamp(fitted_model.spec_.training_cutoff) > cutoff:
                raise ValueError("a model trained after the backtest cutoff has seen the truth it would be scored on")
            model = fitted_model
        else:
            model = RepurchaseModel(horizon_days=horizon_days, **(model_params or {})).fit(past, cutoff)
    if model is not None and model.is_btyd_only():
        # Its answers are BG/NBD's (the column beside it): an empty column and the reason say more.
        report["model"] = dict.fromkeys(MODEL_METRICS)
        report["model_note"] = model.btyd_only_reason_
        if getattr(model, "btyd_only_why_", None):
            report["model_note_why"] = model.btyd_only_why_  # the note's numbers, for readers of other languages
        report["holdout_orders"]["model"] = None
        grid = model.timing_grid_
    elif model is not None:
        if model.spec_.channel_values or model.spec_.category_values:  # the model's own mix columns
            features = build_features(
                past, cutoff, channel_values=model.spec_.channel_values, category_values=model.spec_.category_values
            )
        scored = model.score_features(features, cutoff)
        for column in ("p_repurchase", "expected_orders", "expected_revenue", "next_order_days_p10",
                       "next_order_days_p50", "next_order_days_p90"):
            frame[f"model_{column}"] = scored[column].to_numpy()
        model_block = classification_metrics(y, frame["model_p_repurchase"])
        model_block["orders"] = regression_metrics(frame["label_orders"], frame["model_expected_orders"])
        model_block["revenue"] = regression_metrics(frame["label_revenue"], frame["model_expected_revenue"])
        model_block["timing"] = _timing(frame, "model", horizon_days)
        model_block["training"] = {
            "origins": model.spec_.origins,
            "season_origin": getattr(model, "season_origin_", None),
            "n_features": len(model.spec_.model_features),
            "best_iteration": int(model.classifier_.best_iteration),
            "latest_origin_check": getattr(model, "latest_origin_check_", None),  # None: pickled before it
        }
        report["model"] = model_block
        report["calibration_by_origin"] = [
            *getattr(model, "origin_calibration_", []),  # models pickled before it existed have none
            origin_calibration_row(report["cutoff"], "backtest", y, frame["model_p_repurchase"].to_numpy()),
        ]
        report["holdout_orders"]["model"] = float(frame["model_expected_orders"].sum())
        grid = model.timing_grid_
    else:
        grid = np.unique(np.round(np.linspace(horizon_days / 12, horizon_days, 12)))
    q = _bgnbd_quantiles(bgnbd, frame, grid)
    for j, name in enumerate(("p10", "p50", "p90")):
        frame[f"bgnbd_next_order_days_{name}"] = q[:, j]
    bgnbd_block["timing"] = _timing(frame, "bgnbd", horizon_days)
    report["bgnbd"] = bgnbd_block

    if reaches_a_year:
        if model is not None:
            predicted = model.tier_columns(features, tiers)
        else:
            order_value = frame["avg_order_value"].to_numpy(dtype=float)
            tiers_used = tiers or default_tiers()
            probabilities = next_year_tier_probabilities(
                tiers_used, bgnbd, gamma_gamma, f, r, T, frame["monetary_value"].to_numpy(dtype=float), order_value
            )
            # No model, so no training reference: the weights come from this population's own
            # probabilities (still no outcome used).
            predicted = tier_columns(tiers_used, frame[tiers_used.column], probabilities, macro_f1_weights(probabilities))
        report["tiers"] = tiers_block(year_orders, cutoff, frame["customer_id"], predicted, tiers or default_tiers())

    backtest = Backtest(report=report, frame=frame, model=model)
    if plot_dir is not None:
        backtest.plots = draw_plots(backtest, orders, plot_dir, lang=lang)
        report["plots"] = {k: v.name for k, v in backtest.plots.items()}
    report["tracking"] = report.get("tracking")
    report.setdefault("calibration_by_origin", None)  # no LightGBM model: nothing calibrated
    return backtest


def tiers_block(orders: pd.DataFrame, cutoff: pd.Timestamp, customer_ids, predicted: dict, tiers: Tiers) -> dict:
    """The predicted tier a year on against the tier reached, beside persistence (the tier stays).

    The tier reached is the band of each customer's spend (or orders) in
    ``(cutoff, cutoff + 365 days]``: their trailing-year value a year after the cutoff.
    """
    ahead = between(orders, cutoff, YEAR_DAYS)
    per_customer = ahead.groupby("customer_id")["amount"].agg(["sum", "size"])
    ids = pd.Index(pd.Series(customer_ids).astype(str))
    per_customer.index = per_customer.index.astype(str)
    value = per_customer["sum" if tiers.basis == "spend" else "size"].reindex(ids, fill_value=0).to_numpy(dtype=float)
    truth = tiers.names_of(tiers.index_of(value))
    model = tier_metrics(truth, predicted["predicted_tier"], tiers.names)
    stays = tier_metrics(truth, predicted["member_tier"], tiers.names)
    share = lambda names: {n: float(np.mean(np.asarray(names) == n)) for n in tiers.names}  # noqa: E731
    return {
        "accuracy": model["accuracy"],
        "macro_f1": model["macro_f1"],
        "persistence_accuracy": stays["accuracy"],
        "persistence_macro_f1": stays["macro_f1"],
        "n_customers": int(len(ids)),
        "basis": tiers.basis,
        "thresholds": dict(zip(tiers.names, tiers.thresholds)),
        "share": {"at_cutoff": share(predicted["member_tier"]), "actual": share(truth),
                  "predicted": share(predicted["predicted_tier"])},
        "mean_p_upgrade": float(np.mean(predicted["p_upgrade"])),
        "upgraded": float(np.mean(tiers.index_of(value) > tiers.index_of_names(predicted["member_tier"]))),
        "mean_p_downgrade": float(np.mean(predicted["p_downgrade"])),
        "downgraded": float(np.mean(tiers.index_of(value) < tiers.index_of_names(predicted["member_tier"]))),
    }


def _timing(frame: pd.DataFrame, prefix: str, horizon_days: int) -> dict:
    return timing_metrics(
        frame["label_days_to_next"],
        frame["label_censored"],
        *(frame[f"{prefix}_next_order_days_{q}"].to_numpy() for q in ("p10", "p50", "p90")),
    )


def draw_plots(backtest: Backtest, orders: pd.DataFrame, plot_dir: Path, *, lang: str | None = None) -> dict[str, Path]:
    """The backtest's PNG plots, their text in ``lang`` (``training.i18n``); returns name -> path."""
    plot_dir = Path(plot_dir)
    frame, report = backtest.frame, backtest.report
    y = frame["label_repurchase"].to_numpy()
    probabilities = {"bgnbd": frame["bgnbd_p_repurchase"].to_numpy()}
    with_model = backtest.model is not None and not backtest.model.is_btyd_only()
    if with_model:
        probabilities = {"model": frame["model_p_repurchase"].to_numpy(), **probabilities}
    rankers = {**probabilities, "recency_only": frame["recency_score"].to_numpy()}
    out = {
        "roc": plots.roc_plot(y, rankers, plot_dir / "roc.png", lang=lang),
        "calibration": plots.calibration_plot(y, probabilities, plot_dir / "calibration.png", lang=lang),
        "gain": plots.gain_plot(y, rankers, plot_dir / "gain.png", lang=lang),
    }
    revenue = {"bgnbd": frame["bgnbd_expected_revenue"].to_numpy()}
    if with_model:
        revenue = {"model": frame["model_expected_revenue"].to_numpy(), **revenue}
        reordered = frame["label_censored"].to_numpy() == 0
        out["timing"] = plots.timing_plot(
            frame.loc[reordered, "label_days_to_next"].to_numpy(),
            *(frame.loc[reordered, f"model_next_order_days_{q}"].to_numpy() for q in ("p10", "p50", "p90")),
            path=plot_dir / "timing.png",
            horizon_days=report["horizon_days"],
            lang=lang,
        )
        model = backtest.model
        out["importance"] = plots.importance_plot(
            model.spec_.model_features, model.classifier_.feature_importance("gain"), plot_dir / "importance.png",
            lang=lang,
        )
    out["revenue_deciles"] = plots.decile_plot(frame["label_revenue"].to_numpy(), revenue, plot_dir / "revenue_deciles.png",
                                               lang=lang)
    bgnbd = BTYDModel.from_params(report["bgnbd"]["params"])
    report["tracking"] = _tracking(orders, frame, pd.Timestamp(report["cutoff"]), report["horizon_days"], bgnbd,
                                   plot_dir / "tracking.png", lang)
    out["tracking"] = plot_dir / "tracking.png"
    return out


def write_report(report: dict, path: Path) -> Path:
    """Write the backtest JSON atomically (NaN as null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(report), indent=2))
    return path


def model_note(report: dict, lang: Language | str | None = "en") -> str | None:
    """The report's ``model_note`` (why the model column is empty) in ``lang``; None without one.

    backtest.json keeps the English line; its numbers (``model_note_why``) let other languages say it.
    """
    note = report.get("model_note")
    why = report.get("model_note_why")
    if not note or not why:
        return note or None
    return btyd_only_reason(why, lang)


def fit_meaning(block: dict, lang: Language | str | None = "en") -> str | None:
    """The ``fit_meaning`` of a backtest's BG/NBD block in ``lang``, said again from its ``fit_status``."""
    status = block.get("fit_status")
    if status is None:
        return block.get("fit_meaning")
    return fit_status_meaning(status, lang)


def no_backtest_reason(why: dict, lang: Language | str | None = "en") -> str | None:
    """Why there is no backtest (a report's ``backtest_note_why``) in ``lang``; None for a reason without numbers."""
    lang = language(lang)
    if why.get("kind") == "truth_after_last_order":
        return lang.gettext("its {days} days of truth lie after the last order ({last_order})").format(
            days=why["horizon_days"], last_order=why["last_order"])
    if "repeat_customers" in why:
        return thin_data_reason(why, lang)
    return None


def backtest_note(report: dict, lang: Language | str | None = "en") -> str | None:
    """The report's ``backtest_note`` (why there is no backtest) in ``lang``; None without one.

    backtest.json keeps the English line; its numbers (``backtest_note_why``) let other languages say it.
    """
    note, why = report.get("backtest_note"), report.get("backtest_note_why")
    lang = language(lang)
    reason = no_backtest_reason(why, lang) if why and not lang.is_default else None
    if reason is None:
        return note or None
    return lang.gettext("no backtest at {cutoff} ({days} days before the cutoff): {reason}").format(
        cutoff=why["cutoff"], days=why["horizon_days"], reason=reason)
