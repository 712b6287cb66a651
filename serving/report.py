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
import re
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from features.common.outputs import atomic_path
from training.backtest import backtest_note, fit_meaning, model_note
from training.btyd import fit_status_label
from training.i18n import N_, Language, finite_number, language, use_language_fonts
from training.measure import verdict_summary
from training.model import btyd_only_note
from training.segments import LIFECYCLE_STAGES, RFM_SEGMENTS, SEGMENT_MEANINGS, rfm_scales, stage_meanings


DASH = "–"
SECTIONS = ("summary", "backtest", "segments", "lifecycle", "actions", "reasons")
MEASURED = "did_it_work"  # the section added when a campaign measurement is given
PLOT_ORDER = ("roc", "gain", "calibration", "revenue_deciles", "timing", "tracking", "importance")
PLOT_CAPTIONS = {
    "roc": (N_("Who reorders: ROC"),
            N_("Each curve shows how many of the customers who did reorder a score catches (up) for how many false "
               "alarms (right). Higher and further left is better; the dotted diagonal is guessing.")),
    "gain": (N_("Gain"),
             N_("Share of next-period buyers reached (up) when contacting the top x% of customers by each score "
                "(right). The further above the diagonal, the better the targeting; the thin line marks the top 10%.")),
    "calibration": (N_("Calibration"),
                    N_("Predicted probability against the share who actually reordered, in ten equal-size groups. "
                       "Points on the dotted diagonal mean the probabilities can be taken at face value.")),
    "revenue_deciles": (N_("Revenue by predicted decile"),
                        N_("Customers split into ten groups by predicted revenue (1 = highest). Bars are the revenue that "
                           "actually came in, dots the prediction: close pairs mean the revenue forecast holds group by group.")),
    "timing": (N_("Next-order timing"),
               N_("For customers who did reorder, sorted by predicted days to their next order: the shaded band is the "
                  "predicted p10-p90 range, the line the median, dots the actual day. Dots inside the band are good.")),
    "tracking": (N_("Tracking"),
                 N_("Cumulative repeat purchases week by week, actual against BG/NBD. Left of the dotted cutoff line "
                    "is the fit; right of it is a forecast of days the model never saw.")),
    "importance": (N_("What drives the score"),
                   N_("The customer facts the model leans on most (share of total gain). It explains the model, "
                      "not cause and effect.")),
}
GROUP_NOTES = {
    "rfm_segment": N_("Segments follow from each row's RFM scores: {scales}; M (spend against the training "
                      "population) is in the scores but does not move the segment."),
    "lifecycle_stage": N_("Stages follow each customer's own rhythm (usual gap = mean days between their purchase "
                          "days) and the model's answers; p_alive is the chance the customer has not dropped out."),
}
BAR_COLOR = "#1f77b4"
EXAMPLES_PER_ACTION = 5
TOP_REASONS = 5


def _get(block, *keys):
    for key in keys:
        if not isinstance(block, dict):
            return None
        block = block.get(key)
    return block


def _fmt(lang: Language, kind: str, value) -> str:
    """``value`` formatted as a ``count``, ``metric`` (3 decimals), ``days`` (1 decimal) or ``percent``."""
    if kind == "count":
        return lang.count(value)
    if kind == "percent":
        return lang.percent(value)
    return lang.decimal(value, 1 if kind == "days" else 3)


def _points(lang: Language, value, decimals: int = 1) -> str:
    """A difference of rates in percentage points: ``0.034`` -> ``+3.4 pts``."""
    number = finite_number(value)
    return DASH if number is None else lang.gettext("{value} pts").format(value=lang.signed(100 * number, decimals))


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


def _figure_png(fig: Figure, lang: Language) -> bytes:
    use_language_fonts(fig, lang)
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


def _bar_chart(labels, panels: dict[str, np.ndarray], title: str, lang: Language) -> bytes:
    """Horizontal bars, one panel per measure, the first label on top (``labels`` as a person reads them)."""
    labels = list(labels)
    fig = Figure(figsize=(10, 1.0 + 0.38 * max(len(labels), 1)))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    y = np.arange(len(labels))
    for ax, (name, values) in zip(axes, panels.items()):
        values = np.nan_to_num(np.asarray(values, dtype=float))
        bars = ax.barh(y, values, color=BAR_COLOR, alpha=0.85)
        ax.bar_label(bars, labels=[lang.count(v) for v in values], fontsize=7, padding=2)
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
    return _figure_png(fig, lang)


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


# (column, the column as a person reads it, the group chart's title)
GROUPINGS = {
    "rfm_segment": (N_("RFM segment"), N_("Customers and value by RFM segment"), N_("By RFM segment")),
    "lifecycle_stage": (N_("lifecycle stage"), N_("Customers and value by lifecycle stage"), N_("By lifecycle stage")),
}


def _group_section(summary: pd.DataFrame, scores: pd.DataFrame, column: str, horizon: str, lang: Language,
                   descriptions: dict | None = None) -> dict:
    """Data of a section grouping customers by ``column`` (``group.html.j2``)."""
    _ = lang.gettext
    what, chart_title, figure_title = (_(text) for text in GROUPINGS[column])
    if summary.empty:
        return {"what": what, "empty": True}
    revenue = _("expected revenue ({horizon})").format(horizon=horizon)
    headers = [what, _("customers"), _("share"), _("mean p_repurchase"), _("mean p_alive"), revenue, _("total CLV")]
    if descriptions:
        headers.insert(1, _("meaning"))
    rows = []
    for key, row in summary.iterrows():
        cells = [lang.label(column, key), lang.count(row.customers), lang.percent(row.share),
                 lang.decimal(row.mean_p_repurchase), lang.decimal(row.mean_p_alive), lang.count(row.expected_revenue),
                 lang.count(row.clv)]
        if descriptions:
            cells.insert(1, descriptions.get(key, ""))
        rows.append(cells)
    footer = [_("all customers"), lang.count(len(scores)), lang.percent(1.0 if len(scores) else None),
              lang.decimal(_score_column(scores, "p_repurchase").mean()),
              lang.decimal(_score_column(scores, "p_alive").mean()),
              lang.count(_score_column(scores, "expected_revenue").sum()), lang.count(_score_column(scores, "clv").sum())]
    if descriptions:
        footer.insert(1, "")
    chart = _bar_chart(
        [lang.label(column, key) for key in summary.index],
        {_("customers"): summary["customers"].to_numpy(), revenue: summary["expected_revenue"].to_numpy(),
         _("total CLV"): summary["clv"].to_numpy()},
        chart_title, lang,
    )
    return {
        "what": what,
        "empty": False,
        "note": _(GROUP_NOTES[column]).format(scales=rfm_scales(lang.gettext)) if column in GROUP_NOTES else None,
        "table": _table(headers, rows, text_columns=(0, 1) if descriptions else (0,), footer=footer),
        "figure": _figure(chart, figure_title,
                          _("Bar length is the number of customers, expected revenue and CLV of each group."), wide=True),
    }


# --- sections ------------------------------------------------------------------------------------


def _as_of(scores: pd.DataFrame, lang: Language) -> str:
    if "as_of" not in scores or scores["as_of"].dropna().empty:
        return DASH
    values = pd.to_datetime(scores["as_of"].dropna(), errors="coerce").dropna()
    if values.empty:
        return str(scores["as_of"].dropna().iloc[0])
    first, last = values.min().date(), values.max().date()
    if first == last:
        return lang.date(first)
    return lang.gettext("{first} to {last}").format(first=lang.date(first), last=lang.date(last))


def _horizon_days(scores: pd.DataFrame, report: dict):
    if "horizon_days" in scores:
        values = pd.to_numeric(scores["horizon_days"], errors="coerce").dropna().unique()
        if len(values) == 1:
            return int(values[0])
    return finite_number(report.get("horizon_days"))


def _audience(targeted: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows of ``targeted`` that some rule gave an action."""
    if targeted is None:
        return None
    if "action" not in targeted:
        raise ValueError("targeted: no 'action' column; pass the frame apply_rules returns, or None")
    action = targeted["action"].astype("string").str.strip()
    return targeted.loc[action.notna() & (action != "")].assign(action=action)


def _summary_section(report: dict, scores: pd.DataFrame, audience: pd.DataFrame | None, lang: Language,
                     model_notes: tuple[str, ...] = ()) -> dict:
    """Key figures as cards, notes on the model, and the findings in sentences (``summary.html.j2``)."""
    _ = lang.gettext
    n = len(scores)
    horizon = _horizon_days(scores, report)
    horizon_text = _("{days} days").format(days=lang.count(horizon)) if horizon is not None else _("the horizon")
    repurchasers = _score_column(scores, "p_repurchase").sum()
    orders = _score_column(scores, "expected_orders").sum()
    revenue = _score_column(scores, "expected_revenue").sum()
    as_of = _as_of(scores, lang)
    cards = [
        (_("customers scored"), lang.count(n)),
        (_("as of"), as_of),
        (_("horizon"), horizon_text),
        (_("expected repurchasers"), lang.count(repurchasers)),
        (_("expected orders"), lang.count(orders)),
        (_("expected revenue"), lang.count(revenue)),
    ]
    if audience is not None:
        cards.append((_("customers targeted"), lang.count(audience["customer_id"].nunique() if "customer_id" in audience
                                                         else len(audience))))
    sentences = [
        _("As of {as_of}, {customers} customers were scored for the next {horizon}. About {repurchasers} of them "
          "({share}) are expected to buy again, placing {orders} orders worth {revenue} in total.").format(
            as_of=as_of, customers=lang.count(n), horizon=horizon_text, repurchasers=lang.count(repurchasers),
            share=lang.percent(repurchasers / n if n else None), orders=lang.count(orders), revenue=lang.count(revenue))
    ]
    model, bgnbd = report.get("model"), report.get("bgnbd")
    if report.get("cutoff"):
        split = dict(cutoff=report["cutoff"], days=lang.count(report.get("horizon_days")),
                     customers=lang.count(report.get("n_customers")), base_rate=lang.percent(report.get("base_rate")))
        m_auc, b_auc = finite_number(_get(model, "auc")), finite_number(_get(bgnbd, "auc"))
        if m_auc is not None and b_auc is not None:
            if m_auc - b_auc > 0.005:
                message = N_("In the backtest (trained on orders up to {cutoff} and checked against the following {days} "
                             "days for {customers} customers, {base_rate} of whom bought again), the model ranks "
                             "customers better than BG/NBD: AUC {model_auc} against {bgnbd_auc} ({difference}).")
            elif b_auc - m_auc > 0.005:
                message = N_("In the backtest (trained on orders up to {cutoff} and checked against the following {days} "
                             "days for {customers} customers, {base_rate} of whom bought again), the model ranks "
                             "customers worse than BG/NBD: AUC {model_auc} against {bgnbd_auc} ({difference}).")
            else:
                message = N_("In the backtest (trained on orders up to {cutoff} and checked against the following {days} "
                             "days for {customers} customers, {base_rate} of whom bought again), the model ranks "
                             "customers about as well as BG/NBD: AUC {model_auc} against {bgnbd_auc} ({difference}).")
            top = _("Contacting the top 10% by the model reaches {model_capture} of next-period buyers (lift "
                    "{model_lift}×) against {bgnbd_capture} (lift {bgnbd_lift}×) with BG/NBD.").format(
                model_capture=lang.percent(_get(model, "capture_top10")),
                model_lift=lang.decimal(_get(model, "lift_top10"), 2),
                bgnbd_capture=lang.percent(_get(bgnbd, "capture_top10")),
                bgnbd_lift=lang.decimal(_get(bgnbd, "lift_top10"), 2))
            sentences.append(_("{comparison} {top}").format(
                comparison=_(message).format(**split, model_auc=lang.decimal(m_auc), bgnbd_auc=lang.decimal(b_auc),
                                             difference=lang.signed(m_auc - b_auc)),
                top=top))
        elif b_auc is not None:
            sentences.append(_("In the backtest (trained on orders up to {cutoff} and checked against the following "
                               "{days} days for {customers} customers, {base_rate} of whom bought again), BG/NBD alone "
                               "was evaluated: AUC {auc}, lift at the top 10% {lift}×.").format(
                **split, auc=lang.decimal(b_auc), lift=lang.decimal(_get(bgnbd, "lift_top10"), 2)))
        if report.get("backtest_note"):
            sentences.append(_("{note}.").format(note=backtest_note(report, lang)))
        if report.get("model_note"):
            sentences.append(_("Model column empty: {note}.").format(note=model_note(report, lang)))
        holdout = report.get("holdout_orders") or {}
        actual, predicted = finite_number(holdout.get("actual")), finite_number(holdout.get("model"))
        if actual and predicted is not None:
            sentences.append(_("Over that period the model predicted {predicted} orders; {actual} were placed "
                               "({error}).").format(predicted=lang.count(predicted), actual=lang.count(actual),
                                                    error=lang.signed_percent(predicted / actual - 1)))
    if audience is None:
        sentences.append(_("No targeting rules were applied."))
    elif audience.empty:
        sentences.append(_("Targeting rules were applied but selected no customers."))
    else:
        sizes = audience["action"].value_counts()
        top = _(", ").join(_("{action} {customers}").format(action=lang.label("action", a), customers=lang.count(c))
                           for a, c in sizes.head(3).items())
        sentences.append(lang.ngettext(
            "Targeting rules put {customers} customers into {actions} action (largest: {top}).",
            "Targeting rules put {customers} customers into {actions} actions (largest: {top}).", len(sizes),
        ).format(customers=lang.count(len(audience)), actions=len(sizes), top=top))
    return {"cards": [{"label": k, "value": v} for k, v in cards], "model_notes": list(model_notes),
            "sentences": sentences}


# (label, keys into a scorer's block, format, which way is better)
BACKTEST_ROWS = (
    _group(N_("Who reorders (p_repurchase)")),
    (N_("ROC AUC"), ("auc",), "metric", "higher"),
    (N_("PR AUC"), ("pr_auc",), "metric", "higher"),
    (N_("Brier score"), ("brier",), "metric", "lower"),
    (N_("log loss"), ("log_loss",), "metric", "lower"),
    (N_("calibration error (ECE)"), ("ece",), "metric", "lower"),
    (N_("lift at top 10%"), ("lift_top10",), "metric", "higher"),
    (N_("capture at top 10%"), ("capture_top10",), "percent", "higher"),
    _group(N_("Revenue in the horizon")),
    (N_("Gini (normalized)"), ("revenue", "gini"), "metric", "higher"),
    (N_("Spearman"), ("revenue", "spearman"), "metric", "higher"),
    (N_("decile MAPE"), ("revenue", "decile_mape"), "percent", "lower"),
    _group(N_("Next-order timing")),
    (N_("p50 MAE (days, reorderers)"), ("timing", "p50_mae_days"), "days", "lower"),
    (N_("p10-p90 coverage (about 80% is right)"), ("timing", "coverage_p10_p90"), "percent", "closer to 80%"),
)
SCORERS = (("model", N_("model")), ("bgnbd", N_("BG/NBD")), ("recency_only", N_("recency only")))
BETTER = {"higher": N_("higher"), "lower": N_("lower"), "closer to 80%": N_("closer to 80%")}


def _best(values: list[float | None], better: str) -> int | None:
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(present) < 2:
        return None
    key = {"higher": lambda iv: -iv[1], "lower": lambda iv: iv[1], "closer to 80%": lambda iv: abs(iv[1] - 0.8)}[better]
    return min(present, key=key)[0]


def _compare_rows(specs, blocks: dict, scorers, lang: Language) -> list:
    """One row per metric, scorers side by side, the best in bold; sub-heading rows pass through."""
    rows = []
    for spec in specs:
        if isinstance(spec, dict):
            rows.append(_group(lang.gettext(spec["group"])))
            continue
        label, keys, kind, better = spec
        values = [finite_number(_get(blocks.get(key), *keys)) for key, _name in scorers]
        best = _best(values, better)
        cells = [_fmt(lang, kind, v) for v in values]
        rows.append([lang.gettext(label), *(_best_cell(c) if i == best else c for i, c in enumerate(cells)),
                     lang.gettext(BETTER[better])])
    return rows


def _backtest_section(report: dict, plot_paths: dict[str, Path], lang: Language) -> dict:
    """Metrics against the baselines, holdout orders, fitted parameters and plots (``backtest.html.j2``)."""
    _ = lang.gettext
    body = {"intro": None, "notes": [], "calibration_by_origin": None, "bgnbd": None, "replenishment": None,
            "figures": []}
    if report.get("cutoff"):
        body["intro"] = _("Trained on orders up to {cutoff}; every scorer ranked the same {customers} customers, and the "
                          "truth is who ordered in the following {days} days (base rate {base_rate}). The best value "
                          "of each row is in bold.").format(
            cutoff=report["cutoff"], customers=lang.count(report.get("n_customers")),
            days=lang.count(report.get("horizon_days")), base_rate=lang.percent(report.get("base_rate")))
    body["metrics"] = _table([_("metric"), *(_(name) for _key, name in SCORERS), _("better when")],
                             _compare_rows(BACKTEST_ROWS, report, SCORERS, lang), css_class="metrics")
    if report.get("backtest_note"):
        body["notes"].append(_("{note}.").format(note=backtest_note(report, lang)))
    if report.get("model_note"):
        body["notes"].append(_("The model column is empty. {note}.").format(note=model_note(report, lang)))

    holdout = report.get("holdout_orders") or {}
    actual = finite_number(holdout.get("actual"))
    holdout_rows = [[_("actual"), lang.count(actual), DASH]]
    for key, name in SCORERS[:2]:
        if key in holdout:
            predicted = finite_number(holdout.get(key))
            error = predicted / actual - 1 if predicted is not None and actual else None
            holdout_rows.append([_("predicted: {scorer}").format(scorer=_(name)), lang.count(predicted),
                                 lang.signed_percent(error)])
    body["holdout"] = _table(["", _("orders"), _("error vs actual")], holdout_rows, css_class="narrow")

    if report.get("calibration_by_origin"):
        body["calibration_by_origin"] = _calibration_by_origin_table(report["calibration_by_origin"], lang)

    bgnbd = report.get("bgnbd") or {}
    params = bgnbd.get("params") or {}
    if params:
        unit = bgnbd.get("time_unit")
        rows = [[k, lang.decimal(params.get(k))] for k in ("r", "alpha", "a", "b")]
        rows.append([_("log-likelihood"), lang.decimal(bgnbd.get("log_likelihood"), 1)])
        if bgnbd.get("fit_status"):
            rows.append([_("fit"), fit_status_label(bgnbd["fit_status"], lang)])
        for k, v in (bgnbd.get("gamma_gamma_params") or {}).items():
            rows.append([_("Gamma-Gamma {parameter}").format(parameter=k), lang.decimal(v)])
        if bgnbd.get("gamma_gamma_fit_status"):
            rows.append([_("Gamma-Gamma fit"), fit_status_label(bgnbd["gamma_gamma_fit_status"], lang)])
        meaning = fit_meaning(bgnbd, lang) if bgnbd.get("fit_status") not in (None, "interior") else None
        body["bgnbd"] = {"time_unit": _(TIME_UNITS[unit]) if unit in TIME_UNITS else unit, "fit_meaning": meaning,
                         "table": _table([_("parameter"), _("value")], rows, css_class="narrow")}

    replenishment = report.get("replenishment")
    if replenishment:
        body["replenishment"] = _replenishment_table(replenishment, lang)

    names = [n for n in PLOT_ORDER if n in plot_paths] + sorted(n for n in plot_paths if n not in PLOT_ORDER)
    for name in names:
        path = Path(plot_paths[name])
        title, caption = PLOT_CAPTIONS.get(name, (name.replace("_", " ").capitalize(), ""))
        if not path.is_file():
            body["figures"].append({"missing": _("Plot {name} is missing ({file}).").format(name=repr(name),
                                                                                           file=path.name)})
            continue
        body["figures"].append(_figure(path.read_bytes(), _(title) if title else title, _(caption) if caption else "",
                                       sized=True))
    return body


TIME_UNITS = {"week": N_("week"), "day": N_("day")}
ORIGIN_ROLES = {
    "training": N_("training"),
    "season": N_("same season a year earlier: training and calibration"),
    "latest": N_("latest: early stopping and calibration"),
    "backtest": N_("backtest (the truth)"),
}


def _calibration_by_origin_table(rows: list[dict], lang: Language) -> dict:
    """The model's level against each training origin's base rate, and on the backtest split."""
    _ = lang.gettext
    body = [[row.get("origin"), _(ORIGIN_ROLES[row.get("role")]) if row.get("role") in ORIGIN_ROLES else row.get("role"),
             lang.count(row.get("customers")), lang.percent(row.get("base_rate")),
             lang.percent(row.get("mean_p_repurchase")), _points(lang, row.get("calibration_gap")),
             lang.decimal(row.get("ece"))] for row in rows]
    return _table([_("origin"), _("role"), _("customers"), _("bought again"), _("mean predicted"), _("gap"), _("ECE")],
                  body, text_columns=(0, 1), css_class="narrow calibration-by-origin")


REPLENISHMENT_SCORERS = (("model", N_("model")), ("own_last_gap", N_("own last gap")),
                         ("category_median", N_("category median gap")))
REPLENISHMENT_ROWS = (
    (N_("p50 MAE (days, pairs that bought)"), ("p50_mae_days",), "days", "lower"),
    (N_("p10-p90 coverage"), ("coverage_p10_p90",), "percent", "closer to 80%"),
    (N_("AUC of P(purchase within the horizon)"), ("auc",), "metric", "higher"),
)


def _replenishment_table(block: dict, lang: Language) -> dict:
    """Product-level replenishment in the backtest: the model against its two baselines."""
    _ = lang.gettext
    return {"pairs": lang.count(block.get("n_pairs")), "customers": lang.count(block.get("n_customers")),
            "base_rate": lang.percent(block.get("base_rate")),
            "table": _table([_("metric"), *(_(name) for _key, name in REPLENISHMENT_SCORERS), _("better when")],
                            _compare_rows(REPLENISHMENT_ROWS, block, REPLENISHMENT_SCORERS, lang), css_class="metrics")}


def _actions_section(scores: pd.DataFrame, audience: pd.DataFrame | None, horizon: str, lang: Language) -> dict:
    """Audiences and revenue at stake per action (``actions.html.j2``)."""
    _ = lang.gettext
    if audience is None:
        return {"applied": False}
    if audience.empty:
        return {"applied": True, "empty": True}
    summary = group_summary(audience, "action")
    summary["share"] = summary["customers"] / max(len(scores), 1)
    groups = _group_counts(audience, summary.index)
    group_headers = [] if groups is None else [_(GROUP_COUNT_LABELS[g]) for g in groups.columns]
    rows = [[lang.label("action", a), lang.count(r.customers),
             *([] if groups is None else [lang.count(v) for v in groups.loc[a]]),
             lang.percent(r.share), lang.decimal(r.mean_p_repurchase), lang.count(r.expected_revenue),
             lang.count(r.clv)]
            for a, r in summary.iterrows()]
    footer = [_("all actions"), lang.count(summary["customers"].sum()),
              *([] if groups is None else [lang.count(v) for v in groups.sum()]),
              lang.percent(summary["customers"].sum() / max(len(scores), 1)),
              lang.decimal(_score_column(audience, "p_repurchase").mean()), lang.count(summary["expected_revenue"].sum()),
              lang.count(summary["clv"].sum())]
    revenue = _("expected revenue ({horizon})").format(horizon=horizon)
    chart = _bar_chart([lang.label("action", a) for a in summary.index],
                       {_("customers"): summary["customers"].to_numpy(), revenue: summary["expected_revenue"].to_numpy(),
                        _("CLV"): summary["clv"].to_numpy()}, _("Audiences and revenue at stake by action"), lang)
    return {
        "applied": True,
        "empty": False,
        "holdouts": groups is not None,
        "held_back": groups is not None and "held_back" in groups.columns,
        "table": _table([_("action"), _("customers"), *group_headers, _("share of scored"), _("mean p_repurchase"),
                         _("revenue at stake ({horizon})").format(horizon=horizon), _("CLV at stake")], rows,
                        footer=footer),
        "figure": _figure(chart, _("By action"), _("Audience size, expected revenue and CLV of each action."),
                          wide=True),
    }


GROUP_COUNT_LABELS = {"treatment": N_("treatment (sent)"), "holdout": N_("holdout"), "held_back": N_("held back")}


def _group_counts(audience: pd.DataFrame, actions) -> pd.DataFrame | None:
    """Per action: customers in the treatment group (to send), in the holdout, and held back; None without groups."""
    if "group" not in audience:
        return None
    group = audience["group"].astype("string")
    held = (audience["held_back"].astype("string").fillna("") != "") if "held_back" in audience else None
    counts = pd.DataFrame(index=pd.Index(actions))
    kept = ~held if held is not None else pd.Series(True, index=audience.index)
    counts["treatment"] = (group.eq("treatment") & kept).groupby(audience["action"]).sum()
    counts["holdout"] = (group.eq("holdout") & kept).groupby(audience["action"]).sum()
    if held is not None:
        counts["held_back"] = held.groupby(audience["action"]).sum()
    return counts.fillna(0).astype(int)


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _reason_pattern(reason: str) -> str:
    """Reasons differing only in their numbers count as one: ``due in 12 days`` -> ``due in # days``."""
    return _NUMBER.sub("#", reason)


def _p50_text(value, horizon_days, lang: Language) -> str:
    number = finite_number(value)
    if number is None:
        if finite_number(horizon_days) is not None:
            return lang.gettext("beyond {days} days").format(days=lang.count(horizon_days))
        return lang.gettext("beyond horizon")
    return lang.decimal(number, 0)


def _reasons_section(audience: pd.DataFrame | None, horizon_days, lang: Language) -> dict:
    """Per action: the rules behind it, its most common reasons and example customers (``reasons.html.j2``)."""
    _ = lang.gettext
    if audience is None:
        return {"applied": False}
    if audience.empty:
        return {"applied": True, "empty": True}
    reasons = audience["reason"].astype("string").fillna("") if "reason" in audience else pd.Series("", index=audience.index)
    actions = []
    for action in audience["action"].value_counts().index:
        rows = audience.loc[audience["action"] == action]
        block = {"action": lang.label("action", action), "customers": lang.count(len(rows)), "rules": None,
                 "reasons": None}
        if "rule" in rows:
            by_rule = rows["rule"].astype("string").fillna("(none)").value_counts()
            block["rules"] = _table([_("rule"), _("customers"), _("share of action")],
                                    [[r, lang.count(c), lang.percent(c / len(rows))] for r, c in by_rule.items()],
                                    css_class="narrow")
        texts = reasons.loc[rows.index]
        if (texts != "").any():
            patterns = texts.map(_reason_pattern)
            counts = patterns.value_counts().head(TOP_REASONS)
            example = texts.groupby(patterns).first()
            block["reasons"] = _table([_("reason"), _("customers"), _("example")],
                                      [[p, lang.count(c), example[p]] for p, c in counts.items()], text_columns=(0, 2),
                                      css_class="reasons")
        top = rows.assign(_clv=_score_column(rows, "clv")).sort_values("_clv", ascending=False, kind="stable")
        example_rows = [
            [r.get("customer_id", DASH), lang.decimal(finite_number(r.get("p_repurchase"))),
             _p50_text(r.get("next_order_days_p50"), horizon_days, lang), lang.count(finite_number(r.get("clv"))),
             "" if pd.isna(r.get("reason")) else r.get("reason", "")]
            for _i, r in top.head(EXAMPLES_PER_ACTION).iterrows()
        ]
        block["examples"] = _table([_("customer"), _("p_repurchase"), _("next order p50 (days)"), _("CLV"), _("reason")],
                                   example_rows, text_columns=(0, 4), css_class="examples")
        actions.append(block)
    return {"applied": True, "empty": False, "examples_per_action": EXAMPLES_PER_ACTION, "actions": actions}


# --- did it work? -----------------------------------------------------------------------------

def _verdict_summary(block: dict, lang: Language) -> str:
    """The block's verdict in the reader's language; the JSON's own sentence for a block that lacks a number."""
    if lang.is_default:
        return block.get("summary", "")
    try:
        return verdict_summary(block, lang)
    except (KeyError, TypeError, ValueError):
        return block.get("summary", "")


VERDICT_LABELS = {"significant": N_("significant"), "not_significant": N_("not significant"),
                  "too_small": N_("too small to tell")}


def _interval(lang: Language, values) -> str:
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        return DASH
    return lang.gettext("{low} to {high}").format(low=_points(lang, values[0]), high=_points(lang, values[1]))


def _p_text(value) -> str:
    number = finite_number(value)
    if number is None:
        return DASH
    return "< 0.001" if number < 0.001 else f"{number:.3f}"


def measurement_section(measurement: dict, lang: Language | None = None) -> dict:
    """The "Did it work?" section: per action, treatment against holdout, in words, tables and a chart."""
    lang = lang or language("en")
    _ = lang.gettext
    blocks = {**{a: b for a, b in (measurement.get("actions") or {}).items()}}
    if not blocks:
        return {"empty": True}
    cost = finite_number(measurement.get("contact_cost"))
    rows = [*((lang.label("action", a), b) for a, b in blocks.items()),
            (_("all actions"), measurement.get("overall") or {})]
    verdicts = [{"action": name, "verdict": _(VERDICT_LABELS[b.get("verdict")]) if b.get("verdict") in VERDICT_LABELS
                 else DASH, "summary": _verdict_summary(b, lang)} for name, b in rows]
    group_rows = []
    for name, block in rows:
        group_rows.append(_group(name))
        for group in ("treatment", "holdout"):
            g = block.get(group) or {}
            group_rows.append([lang.label("group", group), lang.count(g.get("customers")), lang.count(g.get("buyers")),
                               lang.percent(g.get("rate")), lang.decimal(g.get("orders_per_customer")),
                               lang.decimal(g.get("revenue_per_customer"), 2)])
    lift_rows = [[name, _points(lang, b.get("rate_diff")), _interval(lang, b.get("rate_diff_ci95")),
                  _p_text(b.get("p_value")), lang.signed_percent(b.get("rel_lift")),
                  lang.count(b.get("incremental_orders")), lang.count(b.get("incremental_revenue")),
                  lang.signed_percent(b.get("roi"), 0), _points(lang, b.get("mde"))]
                 for name, b in rows]
    mismatched = [name for name, b in rows if (b.get("srm") or {}).get("mismatch")]
    chart = _lift_chart(rows, lang)
    return {
        "empty": False,
        "window": lang.count(measurement.get("window_days")),
        "verdicts": verdicts,
        "groups": _table([_("group"), _("customers"), _("buyers"), _("repurchase rate"), _("orders per customer"),
                          _("revenue per customer")], group_rows),
        "lift": _table([_("action"), _("rate difference"), _("95% interval"), _("p-value"), _("relative lift"),
                        _("incremental orders"), _("incremental revenue"), _("ROI"), _("detectable")], lift_rows),
        "mismatched": _(", ").join(mismatched),
        "cost": _("{cost} per contact").format(cost=lang.decimal(cost, 2)) if cost is not None else DASH,
        "figure": None if chart is None else _figure(
            chart, _("Measured lift"), _("Difference in repurchase rate, treatment minus holdout, with its 95% "
                                         "interval; an interval crossing the dotted zero line may be chance."),
            wide=True),
    }


def _lift_chart(rows, lang: Language) -> bytes | None:
    measured = [(name, b) for name, b in rows if finite_number(b.get("rate_diff")) is not None
                and isinstance(b.get("rate_diff_ci95"), (list, tuple))]
    if not measured:
        return None
    labels = [name for name, _b in measured]
    diff = np.array([100 * float(b["rate_diff"]) for _n, b in measured])
    low = np.array([100 * float(b["rate_diff_ci95"][0]) for _n, b in measured])
    high = np.array([100 * float(b["rate_diff_ci95"][1]) for _n, b in measured])
    fig = Figure(figsize=(9, 1.2 + 0.45 * len(labels)))
    ax = fig.subplots()
    y = np.arange(len(labels))
    ax.errorbar(diff, y, xerr=[diff - low, high - diff], fmt="o", color=BAR_COLOR, capsize=4)
    ax.axvline(0, color="#888", linestyle=":")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(lang.gettext("treatment minus holdout, percentage points"), fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _figure_png(fig, lang)


def render_measurement(measurement: dict, out_path: Path, *, lang: str | None = None) -> Path:
    """Write the "Did it work?" page (:func:`build_measurement_html`) atomically."""
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_text(build_measurement_html(measurement, lang=lang), encoding="utf-8")
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
# (heading, its short form in the navigation)
SECTION_TITLES = {
    "summary": (N_("Summary"), N_("Summary")),
    "backtest": (N_("How good are the predictions? Backtest against baselines"), N_("How good are the predictions")),
    "segments": (N_("RFM segments"), N_("RFM segments")),
    "lifecycle": (N_("Lifecycle stages"), N_("Lifecycle stages")),
    "actions": (N_("Actions and revenue at stake"), N_("Actions and revenue at stake")),
    "reasons": (N_("Why these customers"), N_("Why these customers")),
    MEASURED: (N_("Did it work? Campaigns against their holdouts"), N_("Did it work")),
    "tiers": (N_("Member tiers: who will reach or lose a tier"), N_("Member tiers")),
    "economics": (N_("Economics: repurchase, cohorts, LTV"), N_("Economics")),
    "movement": (N_("Movement since the previous run"), N_("Movement since the previous run")),
}
DEFAULT_TITLE = N_("Repurchase report")
DEFAULT_MEASUREMENT_TITLE = N_("Repurchase report: did it work?")


def _content_security_policy() -> str:
    digest = base64.b64encode(hashlib.sha256(IMAGE_CHECK_SCRIPT.encode()).digest()).decode("ascii")
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def build_report_html(report: dict, plot_paths: dict[str, Path], scores: pd.DataFrame, targeted: pd.DataFrame | None,
                      *, title: str | None = None, model_notes=(), measurement: dict | None = None,
                      lang: str | None = None, extra_sections: dict[str, dict] | None = None) -> str:
    """The report page as a string (see :func:`render_report`)."""
    lang = language(lang)
    _ = lang.gettext
    report = report or {}
    audience = _audience(targeted)
    horizon_days = _horizon_days(scores, report)
    horizon = _("{days} d").format(days=lang.count(horizon_days)) if horizon_days is not None else _("horizon")
    bodies = {
        "summary": _summary_section(report, scores, audience, lang, tuple(model_notes)),
        "backtest": _backtest_section(report, plot_paths or {}, lang),
        "segments": _group_section(group_summary(scores, "rfm_segment", RFM_SEGMENTS, keep_empty=True),
                                   scores, "rfm_segment", horizon, lang,
                                   {k: _(v) for k, v in SEGMENT_MEANINGS.items()}),
        "lifecycle": _group_section(group_summary(scores, "lifecycle_stage", LIFECYCLE_STAGES, keep_empty=True),
                                    scores, "lifecycle_stage", horizon, lang, stage_meanings(horizon_days, gettext=_)),
        "actions": _actions_section(scores, audience, horizon, lang),
        "reasons": _reasons_section(audience, horizon_days, lang),
    }
    order = SECTIONS
    for key, body in (extra_sections or {}).items():
        # tiers, economics, movement: data of serving.report_economics for sections/<key>.html.j2
        bodies[key] = body
        order = (*order, key)
    if measurement is not None:
        bodies[MEASURED] = measurement_section(measurement, lang)
        order = (*order, MEASURED)
    versions = sorted({str(v) for v in scores.get("model_version", pd.Series(dtype=object)).dropna() if str(v)})
    subtitle = _("{customers} customers as of {as_of}").format(customers=lang.count(len(scores)),
                                                               as_of=_as_of(scores, lang))
    if versions:
        subtitle = _("{customers} customers as of {as_of}, model version {versions}").format(
            customers=lang.count(len(scores)), as_of=_as_of(scores, lang), versions=", ".join(versions))
    footer = _("Expected values are sums of per-customer predictions; {dash} means not measured.").format(dash=DASH)
    if report.get("source"):
        footer = _("{footer} Source: {source}.").format(footer=footer, source=report["source"])
    footer = _("{footer} This page is self-contained and works offline.").format(footer=footer)
    return _page(_(DEFAULT_TITLE) if title is None else title, subtitle, order, bodies, footer, lang)


def build_measurement_html(measurement: dict, *, title: str | None = None, lang: str | None = None) -> str:
    """A page with the "Did it work?" section only (what ``repurchase measure`` writes beside its JSON)."""
    lang = language(lang)
    _ = lang.gettext
    subtitle = _("{contacts} contacts from {first} to {last}, {days}-day window").format(
        contacts=lang.count(measurement.get("contacts")), first=measurement.get("first_contact", DASH),
        last=measurement.get("last_contact", DASH), days=lang.count(measurement.get("window_days")))
    return _page(_(DEFAULT_MEASUREMENT_TITLE) if title is None else title, subtitle, (MEASURED,),
                 {MEASURED: measurement_section(measurement, lang)},
                 _("Measured by repurchase measure; {dash} means not measurable. This page is self-contained and "
                   "works offline.").format(dash=DASH), lang)


@functools.cache
def _environment(lang: str) -> Environment:
    """Templates from the installed package, with the language's messages; autoescaped, so data never becomes markup.

    One environment per language, since gettext is installed into the environment.
    """
    environment = Environment(loader=PackageLoader("serving", "templates"), extensions=["jinja2.ext.i18n"],
                              autoescape=select_autoescape(("html", "j2"), default_for_string=True, default=True))
    environment.install_gettext_translations(language(lang).catalog, newstyle=True)
    return environment


def render_section(key: str, body: dict, lang: str | None = None) -> Markup:
    """One section's body (``sections/<key>.html.j2`` with the data ``body``) as an HTML fragment, without its heading."""
    return Markup(_environment(language(lang).code).get_template(f"sections/{key}.html.j2").render(s={"body": body}))


def _page(title: str, subtitle: str, order, bodies: dict[str, dict], footer: str, lang: Language) -> str:
    sections = [{"id": s, "title": lang.gettext(SECTION_TITLES[s][0]), "nav": lang.gettext(SECTION_TITLES[s][1]),
                 "body": bodies[s]} for s in order]
    return _environment(lang.code).get_template("report.html.j2").render(
        lang=lang.code, title=title, subtitle=subtitle, sections=sections, footer=footer,
        csp=_content_security_policy(), image_check_script=IMAGE_CHECK_SCRIPT,
    )


def model_notes(model, lang: str | None = None) -> list[str]:
    """What a reader of the report must know about the model that scored, one line each, in ``lang``."""
    from training.btyd import INTERIOR, fit_status_meaning

    lang = language(lang)
    _ = lang.gettext
    notes = []
    if model.is_btyd_only():
        notes.append(_("Scores come from BG/NBD and Gamma-Gamma alone ({reason}).").format(
            reason=btyd_only_note(model, lang)))
    status = getattr(model.bgnbd_, "fit_status_", INTERIOR)
    if status != INTERIOR:
        notes.append(_("BG/NBD at {cutoff}: {meaning}.").format(cutoff=model.spec_.training_cutoff,
                                                              meaning=fit_status_meaning(status, lang)))
    alive = getattr(model, "alive_model_", None)
    if alive is None:
        notes.append(_("p_alive comes from BG/NBD, which reads 1 for every one-time buyer (the model was trained before "
                       "p_alive came from MBG/NBD, or MBG/NBD had no fit): one-time buyers are never churned; "
                       "retrain for the chance that they are still active."))
    elif alive is not model.bgnbd_ and getattr(alive, "fit_status_", INTERIOR) != INTERIOR:
        meaning = fit_status_meaning(alive.fit_status_, lang)
        if alive.params_["a"] == 0:
            notes.append(_("MBG/NBD behind p_alive at {cutoff}: {meaning}; p_alive is 1, so nobody is churned until "
                           "drop-out shows.").format(cutoff=model.spec_.training_cutoff, meaning=meaning))
        else:
            notes.append(_("MBG/NBD behind p_alive at {cutoff}: {meaning}.").format(
                cutoff=model.spec_.training_cutoff, meaning=meaning))
    return notes


def render_report(
    report: dict,
    plot_paths: dict[str, Path],
    scores: pd.DataFrame,
    targeted: pd.DataFrame | None,
    out_path: Path,
    *,
    title: str | None = None,
    model_notes=(),
    measurement: dict | None = None,
    lang: str | None = None,
    extra_sections: dict[str, dict] | None = None,
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
    title : str, optional
        The page's title; "Repurchase report" in the page's language by default.
    lang : str, optional
        Language of the page (``en``, ``zh``; default ``$REPURCHASE_LANG``, else English): headings,
        captions, explanations, labels of segments, stages and actions, numbers and dates. Text from
        the data (reasons, rule names, notes) is shown as given.
    extra_sections : dict of str to dict, optional
        Data of further sections by key (``tiers``, ``economics``, ``movement``), built by
        :mod:`serving.report_economics` in the same ``lang``; shown after the standard sections.
    """
    page = build_report_html(report, plot_paths, scores, targeted, title=title, model_notes=model_notes,
                             measurement=measurement, lang=lang, extra_sections=extra_sections)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_path
