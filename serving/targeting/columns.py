"""The columns a rule can name beyond the scores: the feature snapshot and the derived helpers."""

from __future__ import annotations

import difflib
import re
from typing import Callable

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.pipeline import FEATURES
from training.contract import UPLIFT, UPLIFT_PREFIX, uplift_column
from training.segments import REMINDER

REPLENISH_COLUMNS = (
    "replenish_category",
    "replenish_days_p50",
    "replenish_p_within_horizon",
    "replenish_remind_on",
    "replenish_days_since_last",
    "replenish_gap_days",
)
DERIVED_COLUMNS = ("clv_pct", "expected_order_value", "expected_value", UPLIFT, "incremental_value", *REPLENISH_COLUMNS)
REPLENISHMENT_REQUIRED = ("customer_id", "category", "last_purchase", "next_purchase_days_p50", "p_within_horizon", "remind_on")

_FEATURE_PATTERNS = tuple(
    re.compile("^" + re.escape(name).replace(re.escape("<value>"), ".+") + "$") for name in FEATURES if "<value>" in name
)


def join_features(frame: pd.DataFrame, features: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with the feature snapshot's columns joined on ``customer_id`` (a score column wins a name clash)."""
    if features is None:
        return frame
    if "customer_id" not in features.columns:
        raise InputError("features: missing column customer_id")
    keys = features["customer_id"].astype(str)
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        raise InputError(f"features: customer_id '{duplicated.iloc[0]}' has more than one row; give one snapshot row per customer")
    extra = [c for c in features.columns if c not in frame.columns and c not in DERIVED_COLUMNS]
    right = features[extra].set_axis(keys.to_numpy(), axis=0)
    joined = right.reindex(frame["customer_id"].astype(str).to_numpy()).reset_index(drop=True)
    return pd.concat([frame, joined], axis=1)


def add_derived(frame: pd.DataFrame, contact_cost: float, clv_reference: np.ndarray | None = None) -> pd.DataFrame:
    """``frame`` with ``clv_pct``, ``expected_order_value`` and ``expected_value``."""
    clv = pd.to_numeric(frame["clv"], errors="coerce").astype(float)
    if clv_reference is not None and len(clv_reference):
        reference = np.asarray(clv_reference, dtype=float)
        clv_pct = pd.Series(np.searchsorted(reference, clv.to_numpy(), side="right") / len(reference), index=clv.index)
        clv_pct = clv_pct.where(clv.notna())
    else:
        clv_pct = clv.rank(pct=True, method="average")
    revenue = pd.to_numeric(frame["expected_revenue"], errors="coerce").astype(float).to_numpy()
    orders = pd.to_numeric(frame["expected_orders"], errors="coerce").astype(float).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        per_order = np.where(orders > 0, revenue / orders, np.nan)
    if "avg_order_value" in frame.columns:
        fallback = pd.to_numeric(frame["avg_order_value"], errors="coerce").astype(float).to_numpy()
        per_order = np.where(orders > 0, per_order, fallback)
    p = pd.to_numeric(frame["p_repurchase"], errors="coerce").astype(float).to_numpy()
    return frame.assign(
        clv_pct=clv_pct,
        expected_order_value=per_order,
        expected_value=p * per_order - contact_cost,
    )


def add_replenishment(frame: pd.DataFrame, replenishment: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with the ``replenish_*`` columns of each customer's most urgent category (all missing without a frame)."""
    n = len(frame)
    empty = {c: np.full(n, np.nan) for c in REPLENISH_COLUMNS}
    empty["replenish_category"] = pd.Series(np.full(n, None, dtype=object), dtype="str")
    empty["replenish_remind_on"] = pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns]")
    if replenishment is None:
        return frame.assign(**empty)
    missing = [c for c in REPLENISHMENT_REQUIRED if c not in replenishment.columns]
    if missing:
        raise InputError(f"replenishment: missing column(s) {', '.join(missing)}; expected the replenish output")
    table = pd.DataFrame(
        {
            "customer_id": replenishment["customer_id"].astype(str),
            "replenish_category": replenishment["category"].astype(str),
            "replenish_days_p50": pd.to_numeric(replenishment["next_purchase_days_p50"], errors="coerce").astype(float),
            "replenish_p_within_horizon": pd.to_numeric(replenishment["p_within_horizon"], errors="coerce").astype(float),
            "replenish_remind_on": pd.to_datetime(replenishment["remind_on"], errors="coerce").astype("datetime64[ns]"),
            "last_purchase": pd.to_datetime(replenishment["last_purchase"], errors="coerce").astype("datetime64[ns]"),
            "gap_days": (
                pd.to_numeric(replenishment["gap_days"], errors="coerce").astype(float)
                if "gap_days" in replenishment.columns
                else np.nan
            ),
        }
    )
    # One category per customer: among the ones likely to be bought again within the horizon
    # (REMINDER.min_p_within_horizon) if any, the soonest due, then the likelier; a
    # long-abandoned category that is "overdue" must not hide one that is really due. Stable
    # sort keeps file order on ties.
    likely = table["replenish_p_within_horizon"] >= REMINDER.min_p_within_horizon
    table = table.assign(_unlikely=~likely).sort_values(
        ["_unlikely", "replenish_days_p50", "replenish_p_within_horizon"],
        ascending=[True, True, False],
        na_position="last",
        kind="mergesort",
    )
    urgent = table.drop_duplicates("customer_id", keep="first").drop(columns="_unlikely").set_index("customer_id")
    picked = urgent.reindex(frame["customer_id"].astype(str).to_numpy()).reset_index(drop=True)
    as_of = pd.to_datetime(frame["as_of"]).astype("datetime64[ns]")
    since = (as_of - picked["last_purchase"]).dt.days.astype(float)
    gap = picked["gap_days"].where(picked["gap_days"].notna(), since + picked["replenish_days_p50"])
    return frame.assign(
        replenish_category=picked["replenish_category"],
        replenish_days_p50=picked["replenish_days_p50"],
        replenish_p_within_horizon=picked["replenish_p_within_horizon"],
        replenish_remind_on=picked["replenish_remind_on"],
        replenish_days_since_last=since,
        replenish_gap_days=gap,
    )


def uplift_by_action(frame: pd.DataFrame) -> Callable[[str | None], np.ndarray]:
    """``uplift_of(action)``: each row's uplift for that action (see ``uplift`` in the package docs);
    ``uplift_of(None)`` is the scores' own ``uplift`` (NaN without one)."""
    n = len(frame)
    given = frame[UPLIFT].to_numpy(dtype=float).copy() if UPLIFT in frame.columns else np.full(n, np.nan)
    per_action = any(c.startswith(UPLIFT_PREFIX) for c in frame.columns)

    def uplift_of(action: str | None) -> np.ndarray:
        if action is None:
            return given
        column = uplift_column(action)
        if column in frame.columns:
            return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        return np.full(n, np.nan) if per_action else given

    return uplift_of


def set_uplift(frame: pd.DataFrame, uplift: np.ndarray, contact_cost: float) -> None:
    """Put ``uplift`` and ``incremental_value`` for one action (per row) into the frame, in place."""
    frame[UPLIFT] = uplift
    frame["incremental_value"] = uplift * frame["expected_order_value"].to_numpy(dtype=float) - contact_cost


def is_feature_name(name: str) -> bool:
    """Whether ``name`` is a column of the feature snapshot (:data:`features.pipeline.FEATURES`)."""
    return name in FEATURES or any(p.match(name) for p in _FEATURE_PATTERNS)


def unknown_column(frame: pd.DataFrame, name: str, label: str) -> str:
    """Why ``name`` (shown as ``label``) cannot be used, with the nearest column names."""
    if is_feature_name(name):
        return f"{label} is a feature column the data does not have; give the feature snapshot (features=) that has it"
    columns = list(frame.columns)
    close = difflib.get_close_matches(name, columns, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {label}{hint}; columns: {', '.join(columns)}"
