"""The numbers a retention team is judged on, from the order log (and scores for predicted LTV).

* **Repurchase rate by month**: of the customers who ordered in a calendar month, the
  share who were buying again: they had ordered before that month, or ordered twice in it.
* **Cohort retention triangle**: customers grouped by the month of their first order
  (acquisition cohort); cell (cohort, k) is the share of the cohort with an order in the
  k-th month after the first one's (k = 1, 2, ...). Cells whose month is not over yet at
  the as-of date are left out (a half month would read as churn). ``repurchased`` per
  cohort is the share who have ordered again at all so far.
* **LTV by cohort and by channel**: realised revenue per customer so far plus, when scores
  are given, the predicted ``clv`` (the next 365 days, BTYD, discounted) per customer.
  A customer's channel is that of their first order (the channel that acquired them).
* **LTV:CAC and payback** per channel when CAC is given (``economics: {cac: {CHANNEL:
  VALUE}}``, and optionally ``margin``, the share of revenue that is gross margin, default
  1): LTV x margin / CAC, and payback months, the first month since acquisition in which the
  channel's mean cumulative margin per acquired customer reaches CAC (over cohorts old enough
  to have that month; null when no month has yet).
* **What more repurchase is worth**: over the last 365 days, ``buyers`` customers ordered and
  a share ``repurchase_rate`` of them ordered at least twice; each repeat buyer brought
  ``revenue_per_repeat_buyer`` beyond their first order in the window. N more points of
  repurchase rate is N/100 x buyers more repeat buyers, each worth that much (times margin):
  the shop's own numbers, no benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.timecut import after, until
from training.tiers import read_yaml_mapping

POINTS = (1, 5, 10)
MAX_COHORT_MONTHS = 24
YEAR_DAYS = 365


class EconomicsError(InputError):
    """An economics file that cannot be used."""


@dataclass(frozen=True)
class EconomicsConfig:
    """CAC per acquisition channel (the log's ``channel`` values) and the gross margin share."""

    cac: dict[str, float] = field(default_factory=dict)
    margin: float = 1.0


def _positive(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def parse_economics(data: dict, origin: str = "economics") -> EconomicsConfig:
    """Check ``{"economics": {"cac": {CHANNEL: VALUE}, "margin": 0.4}}`` and build the config."""
    if set(data) != {"economics"} or not isinstance(data["economics"], dict):
        raise EconomicsError(f"{origin}: expected 'economics:' at the top with 'cac: {{CHANNEL: VALUE}}' under it")
    body = data["economics"]
    unknown = sorted(set(body) - {"cac", "margin"})
    if unknown:
        raise EconomicsError(f"{origin}: economics: unknown key {unknown[0]!r}; expected 'cac' and optionally 'margin'")
    cac = body.get("cac", {})
    if not isinstance(cac, dict):
        raise EconomicsError(f"{origin}: economics.cac must map each channel to its cost per acquired customer")
    checked = {}
    for channel, value in cac.items():
        number = _positive(value)
        if number is None:
            raise EconomicsError(f"{origin}: economics.cac.{channel}: {value!r} is not a positive number")
        checked[str(channel)] = number
    margin = body.get("margin", 1.0)
    if _positive(margin) is None or margin > 1:
        raise EconomicsError(f"{origin}: economics.margin: {margin!r} must be a share of revenue in (0, 1]")
    return EconomicsConfig(checked, float(margin))


def load_economics(path: Path | str | None) -> EconomicsConfig:
    """The economics file at ``path`` (``--economics FILE``), or no CAC when None."""
    if path is None:
        return EconomicsConfig()
    return parse_economics(read_yaml_mapping(path, "economics"), str(path))


def _month(ts: pd.Series) -> pd.Series:
    return ts.dt.to_period("M")


def repurchase_by_month(orders: pd.DataFrame) -> list[dict]:
    """Per calendar month: buyers, repeat buyers (ordered before, or twice in the month) and their share."""
    month = _month(orders["order_ts"])
    first = orders.groupby("customer_id")["order_ts"].transform("min")
    per = pd.DataFrame({"customer_id": orders["customer_id"], "month": month, "returning": _month(first) < month})
    grouped = per.groupby(["month", "customer_id"]).agg(orders=("returning", "size"), returning=("returning", "any"))
    grouped["repeat"] = grouped["returning"] | (grouped["orders"] >= 2)
    table = grouped.groupby(level="month")["repeat"].agg(["size", "sum"])
    return [{"month": str(m), "buyers": int(row["size"]), "repeat_buyers": int(row["sum"]),
             "repurchase_rate": float(row["sum"] / row["size"])} for m, row in table.iterrows()]


def cohort_triangle(orders: pd.DataFrame, as_of: pd.Timestamp, max_months: int = MAX_COHORT_MONTHS) -> pd.DataFrame:
    """Share of each acquisition cohort (rows, first-order month) with an order in month k after (columns 1..)."""
    month = _month(orders["order_ts"])
    cohort = month.groupby(orders["customer_id"]).transform("min")
    k = (month - cohort).map(lambda offset: offset.n)
    sizes = cohort.groupby(orders["customer_id"]).first().value_counts().sort_index()
    active = pd.DataFrame({"cohort": cohort, "k": k, "customer_id": orders["customer_id"]})
    active = active[(active["k"] >= 1) & (active["k"] <= max_months)].drop_duplicates()
    counts = active.groupby(["cohort", "k"]).size().unstack("k").reindex(index=sizes.index)
    last_complete = pd.Period(as_of, "M") - (0 if (as_of + pd.Timedelta(days=1)).month != as_of.month else 1)
    columns = range(1, max_months + 1)
    counts = counts.reindex(columns=columns).fillna(0.0)
    share = counts.div(sizes, axis=0)
    for c in share.index:
        for kk in columns:
            if c + kk > last_complete:
                share.loc[c, kk] = np.nan
    share = share.loc[:, share.notna().any(axis=0)]
    share.insert(0, "customers", sizes)
    return share


def _acquisition(orders: pd.DataFrame) -> pd.DataFrame:
    """Per customer: first order time, cohort month, acquisition channel (or None), revenue so far."""
    ordered = orders.sort_values(["customer_id", "order_ts"], kind="stable")
    first = ordered.groupby("customer_id").first()
    out = pd.DataFrame({"first_order": first["order_ts"], "cohort": _month(first["order_ts"]).astype(str),
                        "revenue": ordered.groupby("customer_id")["amount"].sum()})
    if "channel" in orders.columns:
        out["channel"] = first["channel"].astype(str)
    out.index = out.index.astype(str)
    return out


def _ltv_rows(customers: pd.DataFrame, key: str, margin: float) -> list[dict]:
    grouped = customers.groupby(key)
    rows = []
    for name, part in grouped:
        realised = float(part["revenue"].mean())
        predicted = float(part["predicted"].mean()) if part["predicted"].notna().any() else None
        rows.append({key: str(name), "customers": int(len(part)), "ltv_realised": realised,
                     "ltv_predicted": predicted, "ltv": realised + (predicted or 0.0),
                     "ltv_margin": (realised + (predicted or 0.0)) * margin})
    return rows


def payback_months(orders: pd.DataFrame, customers: pd.DataFrame, channel: str, cac: float, margin: float,
                   as_of: pd.Timestamp, max_months: int = MAX_COHORT_MONTHS) -> int | None:
    """Months after acquisition until the channel's mean cumulative margin per customer reaches CAC."""
    ids = customers.index[customers["channel"] == channel]
    part = orders[orders["customer_id"].astype(str).isin(ids)]
    if part.empty:
        return None
    first = customers.loc[part["customer_id"].astype(str), "first_order"].to_numpy()
    months_since = ((part["order_ts"].to_numpy() - first) / np.timedelta64(1, "D")) // 30.4375
    age = (as_of - customers.loc[ids, "first_order"]).dt.days / 30.4375
    for m in range(0, max_months + 1):
        observed = age[age >= m + 1].index  # customers acquired long enough ago to have finished month m
        if len(observed) == 0:
            return None
        mask = (months_since <= m) & part["customer_id"].astype(str).isin(observed).to_numpy()
        if part.loc[mask, "amount"].sum() * margin / len(observed) >= cac:
            return m + 1
    return None


def value_of_repurchase(orders: pd.DataFrame, as_of: pd.Timestamp, margin: float, points=POINTS) -> dict:
    """What N more points of 12-month repurchase rate would bring, from the last 365 days of this log."""
    window = after(orders, as_of - pd.Timedelta(days=YEAR_DAYS)).sort_values("order_ts", kind="stable")
    per = window.groupby("customer_id")["amount"].agg(["size", "sum", "first"])
    buyers = len(per)
    repeaters = per[per["size"] >= 2]
    rate = len(repeaters) / buyers if buyers else None
    extra = float((repeaters["sum"] - repeaters["first"]).mean()) if len(repeaters) else None
    return {
        "window_days": YEAR_DAYS,
        "buyers": int(buyers),
        "repeat_buyers": int(len(repeaters)),
        "repurchase_rate": rate,
        "revenue_per_repeat_buyer": extra,
        "margin": margin,
        "points": [{"points": n, "extra_repeat_buyers": buyers * n / 100,
                    "extra_revenue": None if extra is None else buyers * n / 100 * extra,
                    "extra_margin": None if extra is None else buyers * n / 100 * extra * margin} for n in points],
    }


def economics_report(orders: pd.DataFrame, as_of, scores: pd.DataFrame | None = None,
                     config: EconomicsConfig | None = None, source: str = "") -> dict:
    """The economics JSON (``economics.json``): repurchase by month and cohort, LTV, LTV:CAC, payback, value of repurchase.

    ``orders`` are validated orders; those after ``as_of`` are ignored. ``scores`` (a score
    file's rows) add the predicted part of LTV (``clv``).
    """
    config = config or EconomicsConfig()
    as_of = pd.Timestamp(as_of).normalize()
    orders = until(orders, as_of)
    if orders.empty:
        raise InputError(f"no orders on or before {as_of.date()}: nothing to measure")
    customers = _acquisition(orders)
    customers["predicted"] = np.nan
    if scores is not None and "clv" in scores.columns:
        clv = scores.set_index(scores["customer_id"].astype(str))["clv"]
        customers["predicted"] = clv.reindex(customers.index).to_numpy(dtype=float)
    triangle = cohort_triangle(orders, as_of)
    # Again = on a later day: two orders on one day are one purchase, as in the BTYD summary.
    repurchased = orders["order_ts"].dt.normalize().groupby(orders["customer_id"]).nunique().gt(1)
    repurchased.index = repurchased.index.astype(str)
    cohort_rows = []
    for cohort, row in triangle.iterrows():
        cells = row.drop("customers")
        members = customers.index[customers["cohort"] == str(cohort)]
        cohort_rows.append({"cohort": str(cohort), "customers": int(row["customers"]),
                            "repurchased": float(repurchased.reindex(members).mean()),
                            "retention": [None if pd.isna(v) else float(v) for v in cells.to_numpy()]})
    report = {
        "source": source,
        "as_of": as_of.date().isoformat(),
        "n_customers": int(len(customers)),
        "repurchase_by_month": repurchase_by_month(orders),
        "cohorts": {"months": [int(k) for k in triangle.columns[1:]], "rows": cohort_rows},
        "ltv_by_cohort": _ltv_rows(customers, "cohort", config.margin),
        "ltv_predicted_basis": "clv (365 days, BTYD, discounted) from the scores" if scores is not None else None,
        "value_of_repurchase": value_of_repurchase(orders, as_of, config.margin),
    }
    if "channel" not in customers.columns:
        report["ltv_by_channel"] = None
        report["ltv_cac"] = None
        report["ltv_cac_note"] = ("this log has no channel column: LTV:CAC and payback need each order's acquisition "
                                  "channel (the optional 'channel' column) and CAC per channel (--economics FILE)")
        return report
    report["ltv_by_channel"] = _ltv_rows(customers, "channel", config.margin)
    if not config.cac:
        report["ltv_cac"] = None
        report["ltv_cac_note"] = ("no CAC given: pass --economics FILE with economics: {cac: {CHANNEL: VALUE}} "
                                  "for LTV:CAC and payback months per channel")
        return report
    rows = []
    known = set(customers["channel"])
    for entry in report["ltv_by_channel"]:
        cac = config.cac.get(entry["channel"])
        rows.append({"channel": entry["channel"], "cac": cac, "ltv": entry["ltv"],
                     "ltv_cac": None if cac is None else entry["ltv_margin"] / cac,
                     "payback_months": None if cac is None else payback_months(
                         orders, customers, entry["channel"], cac, config.margin, as_of)})
    report["ltv_cac"] = rows
    missing = sorted(set(config.cac) - known)
    report["cac_not_in_log"] = missing  # so that the report can say it in its own language
    uncosted = sorted(known - set(config.cac))
    notes = []
    if missing:
        notes.append(f"CAC given for channels not in the log: {', '.join(missing)}")
    if uncosted:
        notes.append(f"no CAC for: {', '.join(uncosted)}")
    report["ltv_cac_note"] = "; ".join(notes) or None
    return report


def write_economics(report: dict, json_path: Path, *, lang: str | None = None) -> dict[str, Path]:
    """Write ``economics.json`` and the cohort heatmap beside it (``<stem>.cohorts.png``, text in ``lang``); returns the paths."""
    from training.backtest import write_report
    from training.plots import cohort_heatmap

    json_path = Path(json_path)
    heatmap = cohort_heatmap(report["cohorts"], json_path.with_name(f"{json_path.stem}.cohorts.png"), lang=lang)
    report["plots"] = {"cohorts": heatmap.name}
    write_report(report, json_path)
    return {"json": json_path, "cohorts": heatmap}
