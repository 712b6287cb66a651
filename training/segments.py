"""RFM segments and lifecycle stages: the words operators use for groups of customers.

RFM segments follow the common 11-segment map over the recency score R and the frequency
score F (1-5, from ``features.pipeline``), checked in this order:

==================== =========================
segment              rule
==================== =========================
champions            R >= 4 and F >= 4
loyal                R >= 3 and F >= 4
cannot_lose          R <= 2 and F >= 4
at_risk              R <= 2 and F == 3
potential_loyalist   R >= 4 and F in (2, 3)
new                  R == 5 and F == 1
promising            R == 4 and F == 1
need_attention       R == 3 and F == 3
about_to_sleep       R == 3 and F <= 2
hibernating          R == 2 and F <= 2
lost                 R == 1 and F <= 2
==================== =========================

Lifecycle stages use the customer's own rhythm: ``overdue = days_since_last / gap_mean``
(how many of their usual gaps have passed since the last order), and the horizon H:

* ``churned``: p_repurchase < 0.05 and no order for more than H days;
* ``new``: a single purchase day, within the last H days;
* ``active``: a repeat buyer at most 1.5 usual gaps since the last order;
* ``at_risk``: a repeat buyer 1.5 to 3 usual gaps since the last order;
* ``lapsed``: everyone else (over 3 usual gaps, or a one-time buyer older than H).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RFM_SEGMENTS = (
    "champions",
    "loyal",
    "cannot_lose",
    "at_risk",
    "potential_loyalist",
    "new",
    "promising",
    "need_attention",
    "about_to_sleep",
    "hibernating",
    "lost",
)
LIFECYCLE_STAGES = ("new", "active", "at_risk", "lapsed", "churned")


@dataclass(frozen=True)
class LifecycleThresholds:
    """The documented cut points of :func:`lifecycle_stage`."""

    active_max_overdue: float = 1.5
    at_risk_max_overdue: float = 3.0
    churned_max_p_repurchase: float = 0.05


def rfm_segment(r, f) -> np.ndarray:
    """Segment name per customer from RFM recency and frequency scores (1-5)."""
    r = np.asarray(r, dtype=int)
    f = np.asarray(f, dtype=int)
    conditions = [
        (r >= 4) & (f >= 4),
        (r >= 3) & (f >= 4),
        (r <= 2) & (f >= 4),
        (r <= 2) & (f == 3),
        (r >= 4) & ((f == 2) | (f == 3)),
        (r == 5) & (f == 1),
        (r == 4) & (f == 1),
        (r == 3) & (f == 3),
        (r == 3) & (f <= 2),
        (r == 2) & (f <= 2),
        (r == 1) & (f <= 2),
    ]
    return np.select(conditions, RFM_SEGMENTS, default="lost").astype(object)


def lifecycle_stage(
    features: pd.DataFrame,
    p_repurchase,
    horizon_days: int,
    thresholds: LifecycleThresholds = LifecycleThresholds(),
) -> np.ndarray:
    """Lifecycle stage per customer (rules in the module docstring)."""
    since = features["days_since_last"].to_numpy(dtype=float)
    repeat = features["frequency"].to_numpy(dtype=float) > 0
    gap = features["gap_mean"].to_numpy(dtype=float)
    overdue = np.where(repeat & (gap > 0), since / np.where(gap > 0, gap, 1.0), np.inf)
    p = np.asarray(p_repurchase, dtype=float)
    conditions = [
        (p < thresholds.churned_max_p_repurchase) & (since > horizon_days),
        ~repeat & (since <= horizon_days),
        repeat & (overdue <= thresholds.active_max_overdue),
        repeat & (overdue <= thresholds.at_risk_max_overdue),
    ]
    return np.select(conditions, ["churned", "new", "active", "at_risk"], default="lapsed").astype(object)
