"""The HTML report: one self-contained page a marketing lead can read, offline or on paper.

Everything is inline: CSS in a ``<style>`` block, plots as base64 PNG data URIs, and one
small inline script (allowed by hash in the page's Content-Security-Policy, which also
forbids loading anything from anywhere) that records how many images decoded, so a
headless browser can check the page.

The markup lives in Jinja2 templates (``serving/templates``: the page, one template per
section, macros for tables and figures); this module turns scores and the backtest report
into plain data for them. Autoescaping is on, so text from data (segment names, rule
reasons) shows as text: a reason such as ``<script>`` never runs.

Charts are drawn with matplotlib's object API (``Figure``): no pyplot, no global state.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from features.io import atomic_path
from training.segments import LIFECYCLE_STAGES, RFM_SEGMENTS, SEGMENT_MEANINGS, rfm_scales, stage_meanings

DASH = "–"
SECTIONS = ("summary", "backtest", "segments", "lifecycle", "actions", "reasons")
MEASURED = "did_it_work"  # the section added when a campaign measurement is given
PLOT_ORDER = ("roc", "gain", "calibration", "revenue_deciles", "timing", "tracking", "importance")
PLOT_CAPTIONS = {
    "roc": ("Who reorders: ROC",
            "Each curve shows how many of the customers who did reorder a score catches (up) for how many false "
            "alarms (right). Higher and further left is better; the dotted diagonal is guessing."),
    "gain": ("Gain",
             "Share of next-period buyers reached (up) when contacting the top x% of customers by each score "
             "(right). The further above the diagonal, the better the targeting; the thin line marks the top 10%."),
    "calibration": ("Calibration",
                    "Predicted probability against the share who actually reordered, in ten equal-size groups. "
                    "Points on the dotted diagonal mean the probabilities can be taken at face value."),
    "revenue_deciles": ("Revenue by predicted decile",
                        "Customers split into ten groups by predicted revenue (1 = highest). Bars are the revenue that "
                        "actually came in, dots the prediction: close pairs mean the revenue forecast holds group by group."),
    "timing": ("Next-order timing",
               "For customers who did reorder, sorted by predicted days to their next order: the shaded band is the "
               "predicted p10-p90 range, the line the median, dots the actual day. Dots inside the band are good."),
    "tracking": ("Tracking",
                 "Cumulative repeat purchases week by week, actual against BG/NBD. Left of the dotted cutoff line "
                 "is the fit; right of it is a forecast of days the model never saw."),
    "importance": ("What drives the score",
                   "The customer facts the model leans on most (share of total gain). It explains the model, "
                   "not cause and effect."),
}
GROUP_NOTES = {
    "RFM segment": (f"Segments follow from each row's RFM scores: {rfm_scales()}; M (spend against the training "
                    "population) is in the scores but does not move the segment."),
    "lifecycle stage": ("Stages follow each customer's own rhythm (usual gap = mean days between their purchase "
                        "days) and the model's answers; p_alive is the chance the customer has not dropped out."),
}
BAR_COLOR = "#1f77b4"
EXAMPLES_PER_ACTION = 5
TOP_REASONS = 5


def _number(value) -> float | None:
    """``value`` as a finite float, or None when it is missing, NaN, infinite or not a number."""
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt_count(value) -> str:
    """Whole number with thousands separators: ``23,570``."""
    number = _number(value)
    return DASH if number is None else f"{number:,.0f}"


def fmt_metric(value, decimals: int = 3) -> str:
    """A score such as AUC with three decimals: ``0.775``."""
    number = _number(value)
    return DASH if number is None else f"{number:,.{decimals}f}"


def fmt_pct(value, decimals: int = 1) -> str:
    """A share as a percentage: ``0.341`` -> ``34.1%``."""
    number = _number(value)
    return DASH if number is None else f"{100 * number:,.{decimals}f}%"


def fmt_signed_pct(value, decimals: int = 1) -> str:
    number = _number(value)
    return DASH if number is None else f"{100 * number:+,.{decimals}f}%"


def fmt_days(value, decimals: int = 1) -> str:
    number = _number(value)
    return DASH if number is None else f"{number:,.{decimals}f}"


def _get(block, *keys):
    for key in keys:
        if not isinstance(block, dict):
            return None
        block = block.get(key)
    return block


def _label(name) -> str:
    """``potential_loyalist`` -> ``potential loyalist``."""
    return str(name).replace("_", " ")


# --- building blocks -------------------------------------------------------------------------


def _table(headers, rows, *, text_columns=(0,), footer=None, css_class: str = "") -> dict:
    """A table for the ``table`` macro; columns other than ``text_columns`` are right-aligned numbers."""
    return {"headers": list(headers), "rows": list(rows), "text_columns": tuple(text_columns), "footer": footer,
            "css_class": css_class}


def _group(title: str) -> dict:
    """A sub-heading row inside a table."""
    return {"group": title}


def _best_cell(value: str) -> dict:
    """A cell shown in bold: the best value of its row."""
    return {"best": value}


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_png(fig: Figure) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk, None when ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _figure(data: bytes, title: str, caption: str, *, wide: bool = False, sized: bool = False) -> dict:
    """A figure for the ``figure`` macro.

    With ``sized``, it grows in a row in proportion to its aspect ratio, so plots in a row share a height.
    """
    size = _png_size(data) if sized else None
    layout = None
    if size and size[1] > 0:
        aspect = size[0] / size[1]
        # never wider than the PNG itself (no blurry upscaling), but wide enough for the caption
        layout = {"flex": f"{aspect:.3f} 1 {300 * aspect:.0f}px", "max_width": max(size[0], 360), "width": size[0]}
    return {"src": _png_data_uri(data), "title": title, "caption": caption, "wide": wide, "size": layout}


def _compact(value, _position=None) -> str:
    """Axis ticks: 25,000 -> 25k, 1,200,000 -> 1.2M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _bar_chart(labels, panels: dict[str, np.ndarray], title: str) -> bytes:
    """Horizontal bars, one panel per measure, the first label on top."""
    labels = [_label(v) for v in labels]
    fig = Figure(figsize=(10, 1.0 + 0.38 * max(len(labels), 1)))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    y = np.arange(len(labels))
    for ax, (name, values) in zip(axes, panels.items()):
        values = np.nan_to_num(np.asarray(values, dtype=float))
        bars = ax.barh(y, values, color=BAR_COLOR, alpha=0.85)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
        ax.set_title(name, fontsize=9)
        ax.margins(x=0.3)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(_compact))
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    return _figure_png(fig)


# --- summaries of the score frame --------------------------------------------------------------


def _score_column(frame: pd.DataFrame, column: str) -> pd.Series:
    if column in frame:
        return pd.to_numeric(frame[column], errors="coerce")
    return pd.Series(np.nan, index=frame.index, dtype="float64")


def group_summary(scores: pd.DataFrame, column: str, order=(), *, keep_empty: bool = False) -> pd.DataFrame:
    """Customers, share, mean p_repurchase and p_alive, total expected revenue and CLV per value of ``column``.

    Groups come in ``order`` first (all of them with ``keep_empty``), then any others by size.
    """
    keys = scores[column].astype("string").fillna("(none)") if column in scores else pd.Series(dtype="string")
    frame = pd.DataFrame({
        "key": keys,
        "p_repurchase": _score_column(scores, "p_repurchase"),
        "p_alive": _score_column(scores, "p_alive"),
        "expected_revenue": _score_column(scores, "expected_revenue"),
        "clv": _score_column(scores, "clv"),
    })
    grouped = frame.groupby("key", sort=False).agg(
        customers=("key", "size"),
        mean_p_repurchase=("p_repurchase", "mean"),
        mean_p_alive=("p_alive", "mean"),
        expected_revenue=("expected_revenue", "sum"),
        clv=("clv", "sum"),
    )
    known = [k for k in order if keep_empty or k in grouped.index]
    others = grouped.drop(index=[k for k in known if k in grouped.index]).sort_values("customers", ascending=False)
    out = pd.concat([grouped.reindex(known), others])
    out["customers"] = out["customers"].fillna(0).astype(int)
    out[["expected_revenue", "clv"]] = out[["expected_revenue", "clv"]].fillna(0.0)
    out["share"] = out["customers"] / max(len(scores), 1)
    out.index.name = column
    return out


def _group_section(summary: pd.DataFrame, scores: pd.DataFrame, what: str, horizon: str,
                   descriptions: dict | None = None) -> dict:
    """Data of a section grouping customers by ``what`` (``group.html.j2``)."""
    if summary.empty:
        return {"what": what, "empty": True}
    headers = [what, "customers", "share", "mean p_repurchase", "mean p_alive", f"expected revenue ({horizon})",
               "total CLV"]
    if descriptions:
        headers.insert(1, "meaning")
    rows = []
    for key, row in summary.iterrows():
        cells = [_label(key), fmt_count(row.customers), fmt_pct(row.share), fmt_metric(row.mean_p_repurchase),
                 fmt_metric(row.mean_p_alive), fmt_count(row.expected_revenue), fmt_count(row.clv)]
        if descriptions:
            cells.insert(1, descriptions.get(key, ""))
        rows.append(cells)
    footer = ["all customers", fmt_count(len(scores)), fmt_pct(1.0 if len(scores) else None),
              fmt_metric(_score_column(scores, "p_repurchase").mean()), fmt_metric(_score_column(scores, "p_alive").mean()),
              fmt_count(_score_column(scores, "expected_revenue").sum()), fmt_count(_score_column(scores, "clv").sum())]
    if descriptions:
        footer.insert(1, "")
    chart = _bar_chart(
        summary.index,
        {"customers": summary["customers"].to_numpy(), f"expected revenue ({horizon})": summary["expected_revenue"].to_numpy(),
         "total CLV": summary["clv"].to_numpy()},
        f"Customers and value by {what}",
    )
    return {
        "what": what,
        "empty": False,
        "note": GROUP_NOTES.get(what),
        "table": _table(headers, rows, text_columns=(0, 1) if descriptions else (0,), footer=footer),
        "figure": _figure(chart, f"By {what}", "Bar length is the number of customers, expected revenue and CLV of each group.",
                          wide=True),
    }


# --- sections ------------------------------------------------------------------------------------


def _as_of(scores: pd.DataFrame) -> str:
    if "as_of" not in scores or scores["as_of"].dropna().empty:
        return DASH
    values = pd.to_datetime(scores["as_of"].dropna(), errors="coerce").dropna()
    if values.empty:
        return str(scores["as_of"].dropna().iloc[0])
    first, last = values.min().date(), values.max().date()
    return str(first) if first == last else f"{first} to {last}"


def _horizon_days(scores: pd.DataFrame, report: dict):
    if "horizon_days" in scores:
        values = pd.to_numeric(scores["horizon_days"], errors="coerce").dropna().unique()
        if len(values) == 1:
            return int(values[0])
    return _number(report.get("horizon_days"))


def _audience(targeted: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows of ``targeted`` that some rule gave an action."""
    if targeted is None:
        return None
    if "action" not in targeted:
        raise ValueError("targeted: no 'action' column; pass the frame apply_rules returns, or None")
    action = targeted["action"].astype("string").str.strip()
    return targeted.loc[action.notna() & (action != "")].assign(action=action)


def _summary_section(report: dict, scores: pd.DataFrame, audience: pd.DataFrame | None,
                     model_notes: tuple[str, ...] = ()) -> dict:
    """Key figures as cards, notes on the model, and the findings in sentences (``summary.html.j2``)."""
    n = len(scores)
    horizon = _horizon_days(scores, report)
    horizon_text = f"{fmt_count(horizon)} days" if horizon is not None else "the horizon"
    repurchasers = _score_column(scores, "p_repurchase").sum()
    orders = _score_column(scores, "expected_orders").sum()
    revenue = _score_column(scores, "expected_revenue").sum()
    cards = [
        ("customers scored", fmt_count(n)),
        ("as of", _as_of(scores)),
        ("horizon", horizon_text),
        ("expected repurchasers", fmt_count(repurchasers)),
        ("expected orders", fmt_count(orders)),
        ("expected revenue", fmt_count(revenue)),
    ]
    if audience is not None:
        cards.append(("customers targeted", fmt_count(audience["customer_id"].nunique() if "customer_id" in audience
                                                       else len(audience))))
    sentences = [
        f"As of {_as_of(scores)}, {fmt_count(n)} customers were scored for the next {horizon_text}. "
        f"About {fmt_count(repurchasers)} of them ({fmt_pct(repurchasers / n if n else None)}) are expected to buy "
        f"again, placing {fmt_count(orders)} orders worth {fmt_count(revenue)} in total."
    ]
    model, bgnbd = report.get("model"), report.get("bgnbd")
    if report.get("cutoff"):
        split = (f"In the backtest (trained on orders up to {report['cutoff']} and checked against the following "
                 f"{fmt_count(report.get('horizon_days'))} days for {fmt_count(report.get('n_customers'))} customers, "
                 f"{fmt_pct(report.get('base_rate'))} of whom bought again)")
        m_auc, b_auc = _number(_get(model, "auc")), _number(_get(bgnbd, "auc"))
        if m_auc is not None and b_auc is not None:
            verdict = "better than" if m_auc - b_auc > 0.005 else "worse than" if b_auc - m_auc > 0.005 else "about as well as"
            sentences.append(
                f"{split}, the model ranks customers {verdict} BG/NBD: AUC {fmt_metric(m_auc)} against "
                f"{fmt_metric(b_auc)} ({m_auc - b_auc:+.3f}). Contacting the top 10% by the model reaches "
                f"{fmt_pct(_get(model, 'capture_top10'))} of next-period buyers (lift {fmt_metric(_get(model, 'lift_top10'), 2)}×) "
                f"against {fmt_pct(_get(bgnbd, 'capture_top10'))} (lift {fmt_metric(_get(bgnbd, 'lift_top10'), 2)}×) with BG/NBD."
            )
        elif b_auc is not None:
            sentences.append(f"{split}, BG/NBD alone was evaluated: AUC {fmt_metric(b_auc)}, "
                             f"lift at the top 10% {fmt_metric(_get(bgnbd, 'lift_top10'), 2)}×.")
        for key in ("backtest_note", "model_note"):
            if report.get(key):
                sentences.append(f"{'Model column empty: ' if key == 'model_note' else ''}{report[key]}.")
        holdout = report.get("holdout_orders") or {}
        actual, predicted = _number(holdout.get("actual")), _number(holdout.get("model"))
        if actual and predicted is not None:
            sentences.append(f"Over that period the model predicted {fmt_count(predicted)} orders; "
                             f"{fmt_count(actual)} were placed ({fmt_signed_pct(predicted / actual - 1)}).")
    if audience is None:
        sentences.append("No targeting rules were applied.")
    elif audience.empty:
        sentences.append("Targeting rules were applied but selected no customers.")
    else:
        sizes = audience["action"].value_counts()
        top = ", ".join(f"{_label(a)} {fmt_count(c)}" for a, c in sizes.head(3).items())
        sentences.append(f"Targeting rules put {fmt_count(len(audience))} customers into {len(sizes)} "
                         f"action{'s' if len(sizes) != 1 else ''} (largest: {top}).")
    return {"cards": [{"label": k, "value": v} for k, v in cards], "model_notes": list(model_notes),
            "sentences": sentences}


# (label, keys into a scorer's block, formatter, which way is better)
BACKTEST_ROWS = (
    _group("Who reorders (p_repurchase)"),
    ("ROC AUC", ("auc",), fmt_metric, "higher"),
    ("PR AUC", ("pr_auc",), fmt_metric, "higher"),
    ("Brier score", ("brier",), fmt_metric, "lower"),
    ("log loss", ("log_loss",), fmt_metric, "lower"),
    ("calibration error (ECE)", ("ece",), fmt_metric, "lower"),
    ("lift at top 10%", ("lift_top10",), fmt_metric, "higher"),
    ("capture at top 10%", ("capture_top10",), fmt_pct, "higher"),
    _group("Revenue in the horizon"),
    ("Gini (normalized)", ("revenue", "gini"), fmt_metric, "higher"),
    ("Spearman", ("revenue", "spearman"), fmt_metric, "higher"),
    ("decile MAPE", ("revenue", "decile_mape"), fmt_pct, "lower"),
    _group("Next-order timing"),
    ("p50 MAE (days, reorderers)", ("timing", "p50_mae_days"), fmt_days, "lower"),
    ("p10-p90 coverage (about 80% is right)", ("timing", "coverage_p10_p90"), fmt_pct, "closer to 80%"),
)
SCORERS = (("model", "model"), ("bgnbd", "BG/NBD"), ("recency_only", "recency only"))


def _best(values: list[float | None], better: str) -> int | None:
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(present) < 2:
        return None
    key = {"higher": lambda iv: -iv[1], "lower": lambda iv: iv[1], "closer to 80%": lambda iv: abs(iv[1] - 0.8)}[better]
    return min(present, key=key)[0]


def _backtest_section(report: dict, plot_paths: dict[str, Path]) -> dict:
    """Metrics against the baselines, holdout orders, fitted parameters and plots (``backtest.html.j2``)."""
    body = {"intro": None, "notes": [], "calibration_by_origin": None, "bgnbd": None, "replenishment": None,
            "figures": []}
    if report.get("cutoff"):
        body["intro"] = (f"Trained on orders up to {report['cutoff']}; every scorer ranked the same "
                         f"{fmt_count(report.get('n_customers'))} customers, and the truth is who ordered in the following "
                         f"{fmt_count(report.get('horizon_days'))} days (base rate {fmt_pct(report.get('base_rate'))}). "
                         "The best value of each row is in bold.")
    rows = []
    for spec in BACKTEST_ROWS:
        if isinstance(spec, dict):
            rows.append(spec)
            continue
        label, keys, formatter, better = spec
        values = [_number(_get(report.get(key), *keys)) for key, _ in SCORERS]
        best = _best(values, better)
        cells = [_best_cell(formatter(v)) if i == best else formatter(v) for i, v in enumerate(values)]
        rows.append([label, *cells, better])
    body["metrics"] = _table(["metric", *(name for _, name in SCORERS), "better when"], rows, css_class="metrics")
    for key, lead in (("backtest_note", ""), ("model_note", "The model column is empty. ")):
        if report.get(key):
            body["notes"].append(f"{lead}{report[key]}.")

    holdout = report.get("holdout_orders") or {}
    actual = _number(holdout.get("actual"))
    holdout_rows = [["actual", fmt_count(actual), DASH]]
    for key, name in SCORERS[:2]:
        if key in holdout:
            predicted = _number(holdout.get(key))
            error = predicted / actual - 1 if predicted is not None and actual else None
            holdout_rows.append([f"predicted: {name}", fmt_count(predicted), fmt_signed_pct(error)])
    body["holdout"] = _table(["", "orders", "error vs actual"], holdout_rows, css_class="narrow")

    if report.get("calibration_by_origin"):
        body["calibration_by_origin"] = _calibration_by_origin_table(report["calibration_by_origin"])

    bgnbd = report.get("bgnbd") or {}
    params = bgnbd.get("params") or {}
    if params:
        unit = bgnbd.get("time_unit")
        rows = [[k, fmt_metric(params.get(k))] for k in ("r", "alpha", "a", "b")]
        rows.append(["log-likelihood", fmt_metric(bgnbd.get("log_likelihood"), 1)])
        if bgnbd.get("fit_status"):
            rows.append(["fit", bgnbd["fit_status"]])
        for k, v in (bgnbd.get("gamma_gamma_params") or {}).items():
            rows.append([f"Gamma-Gamma {k}", fmt_metric(v)])
        if bgnbd.get("gamma_gamma_fit_status"):
            rows.append(["Gamma-Gamma fit", bgnbd["gamma_gamma_fit_status"]])
        meaning = bgnbd.get("fit_meaning") if bgnbd.get("fit_status") not in (None, "interior") else None
        body["bgnbd"] = {"time_unit": unit, "fit_meaning": meaning,
                         "table": _table(["parameter", "value"], rows, css_class="narrow")}

    replenishment = report.get("replenishment")
    if replenishment:
        body["replenishment"] = _replenishment_table(replenishment)

    names = [n for n in PLOT_ORDER if n in plot_paths] + sorted(n for n in plot_paths if n not in PLOT_ORDER)
    for name in names:
        path = Path(plot_paths[name])
        title, caption = PLOT_CAPTIONS.get(name, (_label(name).capitalize(), ""))
        if not path.is_file():
            body["figures"].append({"missing": f"Plot {name!r} is missing ({path.name})."})
            continue
        body["figures"].append(_figure(path.read_bytes(), title, caption, sized=True))
    return body


ORIGIN_ROLES = {
    "training": "training",
    "season": "same season a year earlier: training and calibration",
    "latest": "latest: early stopping and calibration",
    "backtest": "backtest (the truth)",
}


def _calibration_by_origin_table(rows: list[dict]) -> dict:
    """The model's level against each training origin's base rate, and on the backtest split."""
    body = [[row.get("origin"), ORIGIN_ROLES.get(row.get("role"), row.get("role")), fmt_count(row.get("customers")),
             fmt_pct(row.get("base_rate")), fmt_pct(row.get("mean_p_repurchase")),
             fmt_points(row.get("calibration_gap")), fmt_metric(row.get("ece"))] for row in rows]
    return _table(["origin", "role", "customers", "bought again", "mean predicted", "gap", "ECE"], body,
                  text_columns=(0, 1), css_class="narrow calibration-by-origin")


REPLENISHMENT_SCORERS = (("model", "model"), ("own_last_gap", "own last gap"), ("category_median", "category median gap"))
REPLENISHMENT_ROWS = (
    ("p50 MAE (days, pairs that bought)", "p50_mae_days", lambda v: fmt_days(v), "lower"),
    ("p10-p90 coverage", "coverage_p10_p90", lambda v: fmt_pct(v), "closer to 80%"),
    ("AUC of P(purchase within the horizon)", "auc", lambda v: fmt_metric(v), "higher"),
)


def _replenishment_table(block: dict) -> dict:
    """Product-level replenishment in the backtest: the model against its two baselines."""
    rows = []
    for label, key, formatter, better in REPLENISHMENT_ROWS:
        values = [_number(_get(block.get(name), key)) for name, _ in REPLENISHMENT_SCORERS]
        best = _best(values, better)
        cells = [_best_cell(formatter(v)) if i == best else formatter(v) for i, v in enumerate(values)]
        rows.append([label, *cells, better])
    return {"pairs": fmt_count(block.get("n_pairs")), "customers": fmt_count(block.get("n_customers")),
            "base_rate": fmt_pct(block.get("base_rate")),
            "table": _table(["metric", *(name for _, name in REPLENISHMENT_SCORERS), "better when"], rows,
                            css_class="metrics")}


def _actions_section(scores: pd.DataFrame, audience: pd.DataFrame | None, horizon: str) -> dict:
    """Audiences and revenue at stake per action (``actions.html.j2``)."""
    if audience is None:
        return {"applied": False}
    if audience.empty:
        return {"applied": True, "empty": True}
    summary = group_summary(audience, "action")
    summary["share"] = summary["customers"] / max(len(scores), 1)
    groups = _group_counts(audience, summary.index)
    group_headers = [] if groups is None else [g for g in groups.columns]
    rows = [[_label(a), fmt_count(r.customers), *([] if groups is None else [fmt_count(v) for v in groups.loc[a]]),
             fmt_pct(r.share), fmt_metric(r.mean_p_repurchase), fmt_count(r.expected_revenue), fmt_count(r.clv)]
            for a, r in summary.iterrows()]
    footer = ["all actions", fmt_count(summary["customers"].sum()),
              *([] if groups is None else [fmt_count(v) for v in groups.sum()]),
              fmt_pct(summary["customers"].sum() / max(len(scores), 1)),
              fmt_metric(_score_column(audience, "p_repurchase").mean()), fmt_count(summary["expected_revenue"].sum()),
              fmt_count(summary["clv"].sum())]
    chart = _bar_chart(summary.index, {"customers": summary["customers"].to_numpy(),
                                       f"expected revenue ({horizon})": summary["expected_revenue"].to_numpy(),
                                       "CLV": summary["clv"].to_numpy()}, "Audiences and revenue at stake by action")
    return {
        "applied": True,
        "empty": False,
        "holdouts": groups is not None,
        "held_back": groups is not None and "held back" in groups.columns,
        "table": _table(["action", "customers", *group_headers, "share of scored", "mean p_repurchase",
                         f"revenue at stake ({horizon})", "CLV at stake"], rows, footer=footer),
        "figure": _figure(chart, "By action", "Audience size, expected revenue and CLV of each action.", wide=True),
    }


def _group_counts(audience: pd.DataFrame, actions) -> pd.DataFrame | None:
    """Per action: customers in the treatment group (to send), in the holdout, and held back; None without groups."""
    if "group" not in audience:
        return None
    group = audience["group"].astype("string")
    held = (audience["held_back"].astype("string").fillna("") != "") if "held_back" in audience else None
    counts = pd.DataFrame(index=pd.Index(actions))
    kept = ~held if held is not None else pd.Series(True, index=audience.index)
    counts["treatment (sent)"] = (group.eq("treatment") & kept).groupby(audience["action"]).sum()
    counts["holdout"] = (group.eq("holdout") & kept).groupby(audience["action"]).sum()
    if held is not None:
        counts["held back"] = held.groupby(audience["action"]).sum()
    return counts.fillna(0).astype(int)


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _reason_pattern(reason: str) -> str:
    """Reasons differing only in their numbers count as one: ``due in 12 days`` -> ``due in # days``."""
    return _NUMBER.sub("#", reason)


def _p50_text(value, horizon_days) -> str:
    number = _number(value)
    if number is None:
        return f"beyond {fmt_count(horizon_days)} days" if _number(horizon_days) is not None else "beyond horizon"
    return fmt_days(number, 0)


def _reasons_section(audience: pd.DataFrame | None, horizon_days) -> dict:
    """Per action: the rules behind it, its most common reasons and example customers (``reasons.html.j2``)."""
    if audience is None:
        return {"applied": False}
    if audience.empty:
        return {"applied": True, "empty": True}
    reasons = audience["reason"].astype("string").fillna("") if "reason" in audience else pd.Series("", index=audience.index)
    actions = []
    for action in audience["action"].value_counts().index:
        rows = audience.loc[audience["action"] == action]
        block = {"action": _label(action), "customers": fmt_count(len(rows)), "rules": None, "reasons": None}
        if "rule" in rows:
            by_rule = rows["rule"].astype("string").fillna("(none)").value_counts()
            block["rules"] = _table(["rule", "customers", "share of action"],
                                    [[r, fmt_count(c), fmt_pct(c / len(rows))] for r, c in by_rule.items()],
                                    css_class="narrow")
        texts = reasons.loc[rows.index]
        if (texts != "").any():
            patterns = texts.map(_reason_pattern)
            counts = patterns.value_counts().head(TOP_REASONS)
            example = texts.groupby(patterns).first()
            block["reasons"] = _table(["reason", "customers", "example"],
                                      [[p, fmt_count(c), example[p]] for p, c in counts.items()], text_columns=(0, 2),
                                      css_class="reasons")
        top = rows.assign(_clv=_score_column(rows, "clv")).sort_values("_clv", ascending=False, kind="stable")
        example_rows = [
            [r.get("customer_id", DASH), fmt_metric(_number(r.get("p_repurchase"))),
             _p50_text(r.get("next_order_days_p50"), horizon_days), fmt_count(_number(r.get("clv"))),
             "" if pd.isna(r.get("reason")) else r.get("reason", "")]
            for _, r in top.head(EXAMPLES_PER_ACTION).iterrows()
        ]
        block["examples"] = _table(["customer", "p_repurchase", "next order p50 (days)", "CLV", "reason"], example_rows,
                                   text_columns=(0, 4), css_class="examples")
        actions.append(block)
    return {"applied": True, "empty": False, "examples_per_action": EXAMPLES_PER_ACTION, "actions": actions}


# --- did it work? -----------------------------------------------------------------------------

VERDICT_LABELS = {"significant": "significant", "not_significant": "not significant", "too_small": "too small to tell"}


def fmt_points(value, decimals: int = 1) -> str:
    """A difference of rates in percentage points: ``0.034`` -> ``+3.4 pts``."""
    number = _number(value)
    return DASH if number is None else f"{100 * number:+,.{decimals}f} pts"


def _interval(values, fmt) -> str:
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        return DASH
    return f"{fmt(values[0])} to {fmt(values[1])}"


def _p_text(value) -> str:
    number = _number(value)
    if number is None:
        return DASH
    return "< 0.001" if number < 0.001 else f"{number:.3f}"


def measurement_section(measurement: dict) -> dict:
    """The "Did it work?" section: per action, treatment against holdout, in words, tables and a chart."""
    blocks = {**{a: b for a, b in (measurement.get("actions") or {}).items()}}
    if not blocks:
        return {"empty": True}
    cost = _number(measurement.get("contact_cost"))
    rows = [*blocks.items(), ("all actions", measurement.get("overall") or {})]
    verdicts = [{"action": _label(name), "verdict": VERDICT_LABELS.get(b.get("verdict"), DASH),
                 "summary": b.get("summary", "")} for name, b in rows]
    group_rows = []
    for name, block in rows:
        group_rows.append(_group(_label(name)))
        for group in ("treatment", "holdout"):
            g = block.get(group) or {}
            group_rows.append([group, fmt_count(g.get("customers")), fmt_count(g.get("buyers")), fmt_pct(g.get("rate")),
                               fmt_metric(g.get("orders_per_customer")), fmt_metric(g.get("revenue_per_customer"), 2)])
    lift_rows = [[_label(name), fmt_points(b.get("rate_diff")), _interval(b.get("rate_diff_ci95"), fmt_points),
                  _p_text(b.get("p_value")), fmt_signed_pct(b.get("rel_lift")), fmt_count(b.get("incremental_orders")),
                  fmt_count(b.get("incremental_revenue")), fmt_signed_pct(b.get("roi"), 0), fmt_points(b.get("mde"))]
                 for name, b in rows]
    mismatched = [name for name, b in rows if (b.get("srm") or {}).get("mismatch")]
    chart = _lift_chart(rows)
    return {
        "empty": False,
        "window": fmt_count(measurement.get("window_days")),
        "verdicts": verdicts,
        "groups": _table(["group", "customers", "buyers", "repurchase rate", "orders per customer",
                          "revenue per customer"], group_rows),
        "lift": _table(["action", "rate difference", "95% interval", "p-value", "relative lift", "incremental orders",
                        "incremental revenue", "ROI", "detectable"], lift_rows),
        "mismatched": ", ".join(_label(n) for n in mismatched),
        "cost": f"{cost:,.2f} per contact" if cost is not None else DASH,
        "figure": None if chart is None else _figure(
            chart, "Measured lift", "Difference in repurchase rate, treatment minus holdout, with its 95% interval; "
            "an interval crossing the dotted zero line may be chance.", wide=True),
    }


def _lift_chart(rows) -> bytes | None:
    measured = [(name, b) for name, b in rows if _number(b.get("rate_diff")) is not None
                and isinstance(b.get("rate_diff_ci95"), (list, tuple))]
    if not measured:
        return None
    labels = [_label(name) for name, _ in measured]
    diff = np.array([100 * float(b["rate_diff"]) for _, b in measured])
    low = np.array([100 * float(b["rate_diff_ci95"][0]) for _, b in measured])
    high = np.array([100 * float(b["rate_diff_ci95"][1]) for _, b in measured])
    fig = Figure(figsize=(9, 1.2 + 0.45 * len(labels)))
    ax = fig.subplots()
    y = np.arange(len(labels))
    ax.errorbar(diff, y, xerr=[diff - low, high - diff], fmt="o", color=BAR_COLOR, capsize=4)
    ax.axvline(0, color="#888", linestyle=":")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("treatment minus holdout, percentage points", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _figure_png(fig)


def render_measurement(measurement: dict, out_path: Path) -> Path:
    """Write the "Did it work?" page (:func:`build_measurement_html`) atomically."""
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_text(build_measurement_html(measurement), encoding="utf-8")
    return out_path


# --- the page ------------------------------------------------------------------------------------

# Lets a headless browser check that every embedded image decoded.
IMAGE_CHECK_SCRIPT = (
    "window.addEventListener('load', function () {"
    " var images = Array.prototype.slice.call(document.images);"
    " document.body.dataset.imagesTotal = String(images.length);"
    " document.body.dataset.imagesLoaded = String(images.filter(function (i) {"
    " return i.complete && i.naturalWidth > 0; }).length); });"
)
SECTION_TITLES = {
    "summary": "Summary",
    "backtest": "How good are the predictions? Backtest against baselines",
    "segments": "RFM segments",
    "lifecycle": "Lifecycle stages",
    "actions": "Actions and revenue at stake",
    "reasons": "Why these customers",
    MEASURED: "Did it work? Campaigns against their holdouts",
}


def _content_security_policy() -> str:
    digest = base64.b64encode(hashlib.sha256(IMAGE_CHECK_SCRIPT.encode()).digest()).decode("ascii")
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def build_report_html(report: dict, plot_paths: dict[str, Path], scores: pd.DataFrame, targeted: pd.DataFrame | None,
                      *, title: str = "Repurchase report", model_notes=(), measurement: dict | None = None) -> str:
    """The report page as a string (see :func:`render_report`)."""
    report = report or {}
    audience = _audience(targeted)
    horizon_days = _horizon_days(scores, report)
    horizon = f"{fmt_count(horizon_days)} d" if horizon_days is not None else "horizon"
    bodies = {
        "summary": _summary_section(report, scores, audience, tuple(model_notes)),
        "backtest": _backtest_section(report, plot_paths or {}),
        "segments": _group_section(group_summary(scores, "rfm_segment", RFM_SEGMENTS, keep_empty=True),
                                        scores, "RFM segment", horizon, SEGMENT_MEANINGS),
        "lifecycle": _group_section(group_summary(scores, "lifecycle_stage", LIFECYCLE_STAGES, keep_empty=True),
                                         scores, "lifecycle stage", horizon, stage_meanings(horizon_days)),
        "actions": _actions_section(scores, audience, horizon),
        "reasons": _reasons_section(audience, horizon_days),
    }
    order = SECTIONS
    if measurement is not None:
        bodies[MEASURED] = measurement_section(measurement)
        order = (*SECTIONS, MEASURED)
    versions = sorted({str(v) for v in scores.get("model_version", pd.Series(dtype=object)).dropna() if str(v)})
    subtitle = f"{fmt_count(len(scores))} customers as of {_as_of(scores)}"
    if versions:
        subtitle += f", model version {', '.join(versions)}"
    source = f" Source: {report['source']}." if report.get("source") else ""
    return _page(title, subtitle, order, bodies,
                 f"Expected values are sums of per-customer predictions; {DASH} means not measured.{source} "
                 "This page is self-contained and works offline.")


def build_measurement_html(measurement: dict, *, title: str = "Repurchase report: did it work?") -> str:
    """A page with the "Did it work?" section only (what ``repurchase measure`` writes beside its JSON)."""
    subtitle = (f"{fmt_count(measurement.get('contacts'))} contacts from {measurement.get('first_contact', DASH)} to "
                f"{measurement.get('last_contact', DASH)}, {fmt_count(measurement.get('window_days'))}-day window")
    return _page(title, subtitle, (MEASURED,), {MEASURED: measurement_section(measurement)},
                 f"Measured by repurchase measure; {DASH} means not measurable. This page is self-contained and works "
                 "offline.")


@functools.cache
def _environment() -> Environment:
    """Templates from the installed package; autoescaped, so data never becomes markup."""
    return Environment(loader=PackageLoader("serving", "templates"),
                       autoescape=select_autoescape(("html", "j2"), default_for_string=True, default=True))


def _page(title: str, subtitle: str, order, bodies: dict[str, dict], footer: str) -> str:
    sections = [{"id": s, "title": SECTION_TITLES[s], "nav": SECTION_TITLES[s].split(":")[0].split("?")[0],
                 "body": bodies[s]} for s in order]
    return _environment().get_template("report.html.j2").render(
        lang="en", title=title, subtitle=subtitle, sections=sections, footer=footer,
        csp=_content_security_policy(), image_check_script=IMAGE_CHECK_SCRIPT,
    )


def model_notes(model) -> list[str]:
    """What a reader of the report must know about the model that scored, one line each."""
    from training.btyd import INTERIOR, fit_status_meaning

    notes = []
    if model.is_btyd_only():
        notes.append(f"Scores come from BG/NBD and Gamma-Gamma alone ({model.btyd_only_reason_}).")
    status = getattr(model.bgnbd_, "fit_status_", INTERIOR)
    if status != INTERIOR:
        notes.append(f"BG/NBD at {model.spec_.training_cutoff}: {fit_status_meaning(status)}.")
    alive = getattr(model, "alive_model_", None)
    if alive is None:
        notes.append("p_alive comes from BG/NBD, which reads 1 for every one-time buyer (the model was trained before "
                     "p_alive came from MBG/NBD, or MBG/NBD had no fit): one-time buyers are never churned; "
                     "retrain for the chance that they are still active.")
    elif alive is not model.bgnbd_ and getattr(alive, "fit_status_", INTERIOR) != INTERIOR:
        consequence = "; p_alive is 1, so nobody is churned until drop-out shows" if alive.params_["a"] == 0 else ""
        notes.append(f"MBG/NBD behind p_alive at {model.spec_.training_cutoff}: "
                     f"{fit_status_meaning(alive.fit_status_)}{consequence}.")
    return notes


def render_report(
    report: dict,
    plot_paths: dict[str, Path],
    scores: pd.DataFrame,
    targeted: pd.DataFrame | None,
    out_path: Path,
    *,
    title: str = "Repurchase report",
    model_notes=(),
    measurement: dict | None = None,
) -> Path:
    """Write the self-contained HTML report and return its path.

    Parameters
    ----------
    report : dict
        The backtest report (``training.backtest.run_backtest(...).report``); missing metrics show as "–".
    plot_paths : dict of str to Path
        Backtest PNGs by name (roc, gain, calibration, revenue_deciles, timing, tracking, importance);
        embedded as data URIs.
    scores : pandas.DataFrame
        Score rows (``training.contract.SCORE_COLUMNS``).
    targeted : pandas.DataFrame or None
        Score rows with ``action`` and ``reason`` (and ``rule``) from the targeting rules; None when
        no rules were applied. Rows without an action are not in any audience.
    out_path : Path
        Where the HTML goes; written atomically.
    model_notes : sequence of str
        One line each about the model that scored (:func:`model_notes`): BTYD-only and what
        more data would unlock, a BG/NBD fit that found no drop-out yet. Shown at the top.
    measurement : dict, optional
        A campaign measurement (``training.measure.measure_campaigns``); adds the
        "Did it work?" section after the others.
    """
    page = build_report_html(report, plot_paths, scores, targeted, title=title, model_notes=model_notes,
                             measurement=measurement)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_path
