"""Data of the report's sections on member tiers, repurchase economics and movement since the previous run.

Each ``*_data`` function turns its input into plain data for the section's template
(``serving/templates/sections/{tiers,economics,movement}.html.j2``): text for people in the
report's language, numbers formatted by Babel (:mod:`training.i18n`), machine names (tiers,
stages, segments) as their labels. The templates escape everything, as in the other sections.

:func:`tiers_data` (tiers now and a year on, and the backtest's ``tiers`` block),
:func:`economics_data` (``economics.json`` and its cohort heatmap) and :func:`movement_data`
(``transitions.json``) go to :func:`serving.report.render_report` as ``extra_sections``;
the ``*_section`` functions render one section alone as an HTML fragment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from babel.dates import format_skeleton
from markupsafe import Markup

from serving.report import DASH, GROUPINGS, _figure, _table, render_section
from training.i18n import Language, language

TIER_ORDER = ("silver", "gold", "diamond")


def _lines(headers, rows) -> dict:
    """A table whose cells are all text: these sections have always shown them so (left-aligned, no class)."""
    headers = list(headers)
    return _table(headers, rows, text_columns=range(len(headers)))


def _month(lang: Language, value) -> str:
    """A month such as ``2025-03``: as it is in English, "2025年3月" in Chinese."""
    if lang.is_default:
        return str(value)
    try:
        month = pd.Period(str(value), freq="M")
    except ValueError:
        return str(value)
    return format_skeleton("yMMM", month.to_timestamp().date(), locale=lang.locale)


def _day(lang: Language, value, missing: str) -> str:
    """An ISO date from a JSON file in the page's language; ``missing`` when there is none."""
    if value in (None, ""):
        return missing
    try:
        return lang.date(pd.Timestamp(value).date())
    except ValueError:
        return str(value)


def _months(lang: Language, value) -> str:
    return DASH if value is None else lang.ngettext("{n} month", "{n} months", int(value)).format(n=lang.count(value))


def tiers_data(scores: pd.DataFrame, backtest: dict | None = None, lang: str | None = None) -> dict:
    """Customers by tier today and predicted a year on, mean P(upgrade) / P(downgrade), and the backtest's tiers block."""
    lang = language(lang)
    _ = lang.gettext
    if "member_tier" not in scores.columns:
        return {"has_tiers": False}
    names = list(dict.fromkeys(scores["member_tier"].astype(str)))
    order = [n for n in TIER_ORDER if n in names] + [n for n in names if n not in TIER_ORDER]
    predicted = scores["predicted_tier"].astype(str)
    rows = []
    for name in order:
        part = scores[scores["member_tier"].astype(str) == name]
        rows.append([lang.label("member_tier", name), lang.count(len(part)), lang.count((predicted == name).sum()),
                     lang.percent(part["p_upgrade"].mean()), lang.percent(part["p_downgrade"].mean()),
                     lang.count(part["spend_to_next_tier"].median())])
    data = {"has_tiers": True, "backtest": None,
            "table": _lines([_("tier"), _("members now"), _("predicted a year on"), _("mean P(upgrade)"),
                             _("mean P(downgrade)"), _("median spend to next tier")], rows)}
    block = (backtest or {}).get("tiers")
    if block:
        data["backtest"] = {
            "cutoff": _day(lang, backtest.get("cutoff"), DASH),
            "customers": lang.count(block.get("n_customers", 0)),
            "table": _lines(["", _("accuracy"), _("macro-F1")], [
                [_("model"), lang.decimal(block.get("accuracy")), lang.decimal(block.get("macro_f1"))],
                [_("tier stays"), lang.decimal(block.get("persistence_accuracy")),
                 lang.decimal(block.get("persistence_macro_f1"))],
            ]),
        }
    return data


def _cac_note(economics: dict, lang: Language) -> str | None:
    """Why LTV:CAC is missing or partial, in the page's language (``economics.json`` has it in English)."""
    _ = lang.gettext
    if economics.get("ltv_by_channel") is None:
        return _("this log has no channel column: LTV:CAC and payback need each order's acquisition channel "
                 "(the optional 'channel' column) and CAC per channel (--economics FILE)")
    if economics.get("ltv_cac") is None:
        return _("no CAC given: pass --economics FILE with economics: {cac: {CHANNEL: VALUE}} for LTV:CAC and "
                 "payback months per channel")
    notes = []
    missing = economics.get("cac_not_in_log") or []
    uncosted = [row["channel"] for row in economics["ltv_cac"] if row.get("cac") is None]
    if missing:
        notes.append(_("CAC given for channels not in the log: {channels}").format(channels=_(", ").join(missing)))
    if uncosted:
        notes.append(_("no CAC for: {channels}").format(channels=_(", ").join(uncosted)))
    return _("; ").join(notes) or None


def economics_data(economics: dict | None, heatmap: Path | None = None, lang: str | None = None) -> dict:
    """Repurchase rate by month, the cohort heatmap, LTV by cohort and channel, LTV:CAC, the value of more repurchase."""
    lang = language(lang)
    _ = lang.gettext
    if not economics:
        return {"empty": True}
    value = economics.get("value_of_repurchase") or {}
    months = economics.get("repurchase_by_month") or []
    cohorts = economics.get("ltv_by_cohort") or []
    data = {
        "empty": False,
        "window": lang.count(value.get("window_days", 365)),
        "buyers": lang.count(value.get("buyers", 0)),
        "rate": lang.percent(value.get("repurchase_rate")),
        "per_repeat_buyer": lang.count(value.get("revenue_per_repeat_buyer")),
        "points": _lines(
            [_("more repurchase rate"), _("more repeat buyers"), _("more revenue a year"), _("more margin a year")],
            [[_("+{points} points").format(points=lang.count(row["points"])), lang.count(row.get("extra_repeat_buyers")),
              lang.count(row.get("extra_revenue")), lang.count(row.get("extra_margin"))]
             for row in value.get("points", [])]),
        "months": _lines(
            [_("month"), _("buyers"), _("repeat buyers"), _("repurchase rate")],
            [[_month(lang, m["month"]), lang.count(m["buyers"]), lang.count(m["repeat_buyers"]),
              lang.percent(m["repurchase_rate"])] for m in months[-12:]]),
        "heatmap": None,
        "cohorts": _lines(
            [_("acquisition cohort"), _("customers"), _("LTV realised"), _("LTV predicted (next 365 d)"), _("LTV")],
            [[_month(lang, c["cohort"]), lang.count(c["customers"]), lang.count(c["ltv_realised"]),
              lang.count(c["ltv_predicted"]), lang.count(c["ltv"])] for c in cohorts[-12:]]),
        "channels": None,
        "note": _cac_note(economics, lang),
    }
    if heatmap is not None and Path(heatmap).is_file():
        data["heatmap"] = _figure(Path(heatmap).read_bytes(), _("Cohort retention"),
                                  _("Rows are customers grouped by the month of their first order, columns months "
                                    "since; the colour is the share of the cohort that ordered in that month. Months "
                                    "not over yet are blank."), wide=True)
    channels = economics.get("ltv_by_channel")
    if channels:
        cac = {row["channel"]: row for row in economics.get("ltv_cac") or []}
        data["channels"] = _lines(
            [_("acquisition channel"), _("customers"), _("LTV"), _("CAC"), _("LTV:CAC"), _("payback")],
            [[c["channel"], lang.count(c["customers"]), lang.count(c["ltv"]),
              lang.count((cac.get(c["channel"]) or {}).get("cac")),
              lang.decimal((cac.get(c["channel"]) or {}).get("ltv_cac"), 2),
              _months(lang, (cac.get(c["channel"]) or {}).get("payback_months"))] for c in channels])
    return data


def movement_data(moves: dict | None, lang: str | None = None) -> dict:
    """The lifecycle and RFM transition matrices since the previous run."""
    lang = language(lang)
    _ = lang.gettext
    if not moves:
        return {"empty": True}
    matrices = []
    for key in ("lifecycle_stage", "rfm_segment"):
        matrix = moves.get(key)
        if not matrix:
            continue
        counts = np.asarray(matrix["counts"], dtype=int)
        rows = [[lang.label(key, name), *[lang.count(v) for v in counts[i]]] for i, name in enumerate(matrix["from"])]
        matrices.append({"title": _(GROUPINGS[key][0]),
                         "table": _lines([_("then / now"), *[lang.label(key, n) for n in matrix["to"]]], rows)})
    return {
        "empty": False,
        "previous": _day(lang, moves.get("previous_as_of"), _("the previous run")),
        "moved": lang.count(moves.get("moved_lifecycle", 0)),
        "at_risk": lang.count(moves.get("active_to_at_risk", 0)),
        "acquired": lang.count(moves.get("acquired_since", 0)),
        "matrices": matrices,
    }


def tiers_section(scores: pd.DataFrame, backtest: dict | None = None, lang: str | None = None) -> Markup:
    """The tiers section alone as an HTML fragment (:func:`tiers_data` through ``sections/tiers.html.j2``)."""
    return render_section("tiers", tiers_data(scores, backtest, lang), lang)


def economics_section(economics: dict | None, heatmap: Path | None = None, lang: str | None = None) -> Markup:
    """The economics section alone as an HTML fragment (:func:`economics_data`)."""
    return render_section("economics", economics_data(economics, heatmap, lang), lang)


def movement_section(moves: dict | None, lang: str | None = None) -> Markup:
    """The movement section alone as an HTML fragment (:func:`movement_data`)."""
    return render_section("movement", movement_data(moves, lang), lang)
