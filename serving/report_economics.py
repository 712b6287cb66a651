"""Report sections on member tiers, repurchase economics and movement since the previous run.

Each function returns an HTML fragment (text from data escaped) for one section of the
report: :func:`tiers_section` (tiers now and a year on, and the backtest's ``tiers``
block), :func:`economics_section` (``economics.json`` and its cohort heatmap) and
:func:`movement_section` (``transitions.json``).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

DASH = "–"
SECTION_TITLES = {
    "tiers": "Member tiers: who will reach or lose a tier",
    "economics": "Economics: repurchase, cohorts, LTV",
    "movement": "Movement since the previous run",
}


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _pct(value, decimals: int = 1) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:.{decimals}%}"


def _money(value) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:,.0f}"


def _fixed(value, decimals: int = 3) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:.{decimals}f}"


def _months(value) -> str:
    return DASH if value is None else f"{value} month{'' if value == 1 else 's'}"


def _table(headers, rows) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path | None, title: str, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure class="wide"><img src="data:image/png;base64,{data}" alt="{_esc(title)}">'
            f"<figcaption><b>{_esc(title)}</b>. {_esc(caption)}</figcaption></figure>")


def tiers_section(scores: pd.DataFrame, backtest: dict | None = None) -> str:
    """Customers by tier today and predicted a year on, mean P(upgrade) / P(downgrade), and the backtest's tiers block."""
    if "member_tier" not in scores.columns:
        return "<p>These scores have no member tiers (written before tiers existed); score again for them.</p>"
    parts = ["<p>A member's tier is the band of their spend over the last 365 days. The predicted tier is the highest "
             "one their spend over the next 365 days reaches with a chance of at least one half (the median of its "
             "predicted distribution: BTYD purchases times Gamma-Gamma order values); P(upgrade) and P(downgrade) come from the same "
             "distribution.</p>"]
    names = list(dict.fromkeys(scores["member_tier"].astype(str)))
    order = [n for n in ("silver", "gold", "diamond") if n in names] + [n for n in names if n not in ("silver", "gold", "diamond")]
    rows = []
    for name in order:
        part = scores[scores["member_tier"].astype(str) == name]
        predicted = scores["predicted_tier"].astype(str)
        rows.append([name, f"{len(part):,}", f"{int((predicted == name).sum()):,}", _pct(part["p_upgrade"].mean()),
                     _pct(part["p_downgrade"].mean()), _money(part["spend_to_next_tier"].median())])
    parts.append(_table(["tier", "members now", "predicted a year on", "mean P(upgrade)", "mean P(downgrade)",
                         "median spend to next tier"], rows))
    block = (backtest or {}).get("tiers")
    if block:
        parts.append(
            f"<p>Backtest at {_esc(backtest.get('cutoff', DASH))}: the tier predicted a year on against the one "
            f"customers reached, beside \"the tier stays as it is\" ({block.get('n_customers', 0):,} customers).</p>")
        parts.append(_table(["", "accuracy", "macro-F1"], [
            ["model", _fixed(block.get("accuracy")), _fixed(block.get("macro_f1"))],
            ["tier stays", _fixed(block.get("persistence_accuracy")), _fixed(block.get("persistence_macro_f1"))],
        ]))
    return "".join(parts)


def economics_section(economics: dict | None, heatmap: Path | None = None) -> str:
    """Repurchase rate by month, the cohort heatmap, LTV by cohort and channel, LTV:CAC, the value of more repurchase."""
    if not economics:
        return "<p>No economics measured.</p>"
    parts = []
    value = economics.get("value_of_repurchase") or {}
    parts.append(
        f"<p>In the last {value.get('window_days', 365)} days {value.get('buyers', 0):,} customers ordered and "
        f"{_pct(value.get('repurchase_rate'))} of them ordered at least twice; each repeat buyer brought "
        f"{_money(value.get('revenue_per_repeat_buyer'))} beyond their first order in that time.</p>")
    parts.append(_table(["more repurchase rate", "more repeat buyers", "more revenue a year", "more margin a year"],
                        [[f"+{row['points']} points", _money(row.get("extra_repeat_buyers")),
                          _money(row.get("extra_revenue")), _money(row.get("extra_margin"))]
                         for row in value.get("points", [])]))
    months = economics.get("repurchase_by_month") or []
    parts.append("<p>Repurchase rate by month: of the customers who ordered in the month, the share who had ordered "
                 "before or ordered twice in it (last 12 months).</p>")
    parts.append(_table(["month", "buyers", "repeat buyers", "repurchase rate"],
                        [[m["month"], f"{m['buyers']:,}", f"{m['repeat_buyers']:,}", _pct(m["repurchase_rate"])]
                         for m in months[-12:]]))
    parts.append(_image(heatmap, "Cohort retention",
                        "Rows are customers grouped by the month of their first order, columns months since; the colour "
                        "is the share of the cohort that ordered in that month. Months not over yet are blank."))
    cohorts = economics.get("ltv_by_cohort") or []
    parts.append(_table(["acquisition cohort", "customers", "LTV realised", "LTV predicted (next 365 d)", "LTV"],
                        [[c["cohort"], f"{c['customers']:,}", _money(c["ltv_realised"]), _money(c["ltv_predicted"]),
                          _money(c["ltv"])] for c in cohorts[-12:]]))
    channels = economics.get("ltv_by_channel")
    if channels:
        cac = {row["channel"]: row for row in economics.get("ltv_cac") or []}
        parts.append(_table(["acquisition channel", "customers", "LTV", "CAC", "LTV:CAC", "payback"],
                            [[c["channel"], f"{c['customers']:,}", _money(c["ltv"]),
                              _money((cac.get(c["channel"]) or {}).get("cac")),
                              _fixed((cac.get(c["channel"]) or {}).get("ltv_cac"), 2),
                              _months((cac.get(c["channel"]) or {}).get("payback_months"))] for c in channels]))
    if economics.get("ltv_cac_note"):
        parts.append(f"<p class=note>{_esc(economics['ltv_cac_note'])}.</p>")
    return "".join(parts)


def movement_section(moves: dict | None) -> str:
    """The lifecycle and RFM transition matrices since the previous run."""
    if not moves:
        return ("<p>No previous run given: pass the scores of an earlier run with "
                "<code>repurchase target --previous OLD_SCORES.parquet</code> to see who moved.</p>")
    parts = [f"<p>Since {_esc(moves.get('previous_as_of', 'the previous run'))}: {moves.get('moved_lifecycle', 0):,} "
             f"customers changed lifecycle stage, {moves.get('active_to_at_risk', 0):,} of them from active to at risk; "
             f"{moves.get('acquired_since', 0):,} were acquired since. Rows: stage or segment then; columns: now.</p>"]
    for key, title in (("lifecycle_stage", "lifecycle stage"), ("rfm_segment", "RFM segment")):
        matrix = moves.get(key)
        if not matrix:
            continue
        counts = np.asarray(matrix["counts"], dtype=int)
        rows = [[name, *[f"{v:,}" for v in counts[i]]] for i, name in enumerate(matrix["from"])]
        parts.append(f"<h3>{_esc(title)}</h3>" + _table(["then / now", *matrix["to"]], rows))
    return "".join(parts)
