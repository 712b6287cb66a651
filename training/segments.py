"""RFM scores, RFM segments, lifecycle stages and reminder thresholds: the words operators use for groups of customers.

RFM scores
----------
One formula, :func:`rfm_scores`, gives the ``rfm_r``, ``rfm_f``, ``rfm_m`` of the score rows,
of the API and pyfunc rows, and of the feature snapshot beside a batch run (1 worst, 5 best):

===== ====================================================================================
score rule
===== ====================================================================================
R     days since the last order: <= 30 -> 5, 31-90 -> 4, 91-180 -> 3, 181-365 -> 2, more -> 1
F     orders: 1 -> 1, 2 -> 2, 3-4 -> 3, 5-9 -> 4, 10 or more -> 5
M     total spend against the 20/40/60/80th percentiles of the training population's spend
===== ====================================================================================

R and F are each customer's own facts on fixed scales (:data:`RFM_RECENCY_DAYS`,
:data:`RFM_FREQUENCY_ORDERS`), not ranks: on a log dominated by one-time buyers, quintiles
of order counts tie (every repeat buyer scores F >= 4 when over 60% bought once) and
quintiles of recency reach back over a year (CDNOW at 1998-06-30: the top 40% by recency
include customers 432 days past their last order). Operators' tools count orders too
(Klaviyo's frequency score: 1, 2, 3 or more). Spend has no natural scale across shops, so
M ranks, against the population the model was trained on (never the population being
scored, so a customer scored alone gets the batch answer).

The population ranks that the pipeline computes (``rfm_rank_r``, ``rfm_rank_f``,
``rfm_rank_m``: quintiles within the population at a cutoff) are model inputs, not these
scores; the model's M rank at scoring time is the same number as ``rfm_m``.

RFM segments
------------
The widely used map over the R x F grid (M is carried in the scores but does not move the
segment), checked against what Klaviyo's RFM groups and Shopify's ``rfmGroup`` mean by
each name: champions bought very recently, buy often (and spend most); loyal buy often and
recently; "new" and "promising" bought once, recently; at risk and cannot-lose have a strong
history but no recent order; hibernating and lost bought little, long ago. A one-time buyer
is never a champion, loyal, at risk or cannot-lose, however the log is distributed.

==================== ======= ======= ==============================================
segment              R       F       what it means (:data:`SEGMENT_MEANINGS`)
==================== ======= ======= ==============================================
champions            5       4-5     5+ orders, the last within 30 days
loyal                3-4     4-5     5+ orders, the last 31-180 days ago
potential_loyalist   4-5     2-3     2-4 orders, the last within 90 days
new                  5       1       a first and only order within 30 days
promising            4       1       one order, 31-90 days ago
need_attention       3       3       3-4 orders, the last 91-180 days ago
about_to_sleep       3       1-2     1-2 orders, the last 91-180 days ago
cannot_lose          1-2     5       10+ orders, none in the last 180 days
at_risk              1-2     3-4     3-9 orders, none in the last 180 days
hibernating          2       1-2     1-2 orders, the last 181-365 days ago
lost                 1       1-2     1-2 orders, none for over a year
==================== ======= ======= ==============================================

Lifecycle stages
----------------
From the customer's own rhythm, ``overdue = days_since_last / gap_mean`` (how many of their
usual gaps have passed since the last order), the horizon H, and the model's answers,
checked in this order:

* ``churned``: probably dropped out: ``p_alive`` < 0.5, ``p_repurchase`` < 0.05 and no order
  for more than H days. ``p_alive`` is the probability that the customer has not dropped
  out (``training.model``), so a churned customer never reads "chance still active" above
  50%; a customer as quiet whom the model still thinks alive is lapsed (or, within their
  rhythm, active or at risk), not churned;
* ``new``: a single purchase day, within the last H days;
* ``active``: a repeat buyer at most 1.5 usual gaps since the last order;
* ``at_risk``: a repeat buyer 1.5 to 3 usual gaps since the last order;
* ``lapsed``: everyone else (over 3 usual gaps, or a one-time buyer older than H, and not churned).

Due for a reminder
------------------
:data:`REMINDER` holds the two cut points of a replenishment reminder: how soon the next
order (``next_order_days_p50``) or the next purchase of a category
(``next_purchase_days_p50``) must be expected, and how likely a category must be to be
bought within the horizon (``p_within_horizon``; below that the customer seems to have
stopped buying it). They are written only here: the default targeting rules name them
``REMIND_WITHIN_DAYS`` and ``MIN_P_WITHIN_HORIZON`` (``serving.targeting``), and the
replenishment counts of the CLI, quickstart and MLflow read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.i18n import N_

RFM_RECENCY_DAYS = (365, 180, 90, 30)
"""Days since the last order at or under which R rises past 1, 2, 3 and 4."""
RFM_FREQUENCY_ORDERS = (2, 3, 5, 10)
"""Orders at or above which F rises past 1, 2, 3 and 4."""

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
SEGMENT_MEANINGS = {
    "champions": N_("best customers: 5+ orders, the last within 30 days"),
    "loyal": N_("frequent buyers: 5+ orders, the last 31-180 days ago"),
    "cannot_lose": N_("were among the best (10+ orders) but none in the last 180 days"),
    "at_risk": N_("a good history (3-9 orders) but none in the last 180 days"),
    "potential_loyalist": N_("recent repeat buyers: 2-4 orders, the last within 90 days"),
    "new": N_("a first and only order within the last 30 days"),
    "promising": N_("one order, 31-90 days ago"),
    "need_attention": N_("3-4 orders, the last 91-180 days ago"),
    "about_to_sleep": N_("1-2 orders, the last 91-180 days ago"),
    "hibernating": N_("1-2 orders, the last 181-365 days ago"),
    "lost": N_("1-2 orders, none for over a year"),
}
"""One line per RFM segment, as the report shows it beside the segment's row."""

LIFECYCLE_STAGES = ("new", "active", "at_risk", "lapsed", "churned")


@dataclass(frozen=True)
class LifecycleThresholds:
    """The documented cut points of :func:`lifecycle_stage`."""

    active_max_overdue: float = 1.5
    at_risk_max_overdue: float = 3.0
    churned_max_p_repurchase: float = 0.05
    churned_max_p_alive: float = 0.5


@dataclass(frozen=True)
class ReminderThresholds:
    """When a customer, or one of their categories, is due for a replenishment reminder."""

    within_days: int = 14
    """Due: the next order or purchase is expected (p50) within this many days."""
    min_p_within_horizon: float = 0.5
    """Likely: a category with at least this chance of a purchase within the horizon is still bought."""


REMINDER = ReminderThresholds()


def _english(message: str) -> str:
    return message


def stage_meanings(horizon_days, thresholds: LifecycleThresholds = LifecycleThresholds(), *,
                   gettext=_english) -> dict[str, str]:
    """One line per lifecycle stage, with the horizon and the cut points filled in.

    ``gettext`` translates the messages (``training.i18n.Language.gettext``); English by default.
    """
    _ = gettext
    t = thresholds
    h = _("the horizon") if horizon_days is None else _("{days} days").format(days=f"{horizon_days:g}")
    return {
        "new": _("a single purchase day, within the last {horizon}").format(horizon=h),
        "active": _("repeat buyer, at most {gaps} usual gaps since the last order").format(
            gaps=f"{t.active_max_overdue:g}"),
        "at_risk": _("repeat buyer, {low} to {high} usual gaps since the last order").format(
            low=f"{t.active_max_overdue:g}", high=f"{t.at_risk_max_overdue:g}"),
        "lapsed": _("over {gaps} usual gaps since the last order, or a one-time buyer older than {horizon}, "
                    "and not churned").format(gaps=f"{t.at_risk_max_overdue:g}", horizon=h),
        "churned": _("probably dropped out: chance still active (p_alive) under {p_alive}, p_repurchase under "
                     "{p_repurchase} and no order within {horizon}").format(
            p_alive=f"{t.churned_max_p_alive:.0%}", p_repurchase=f"{t.churned_max_p_repurchase:.0%}", horizon=h),
    }


def rfm_scales(gettext=_english) -> str:
    """The R and F scales in words, one line (from :data:`RFM_RECENCY_DAYS` and :data:`RFM_FREQUENCY_ORDERS`)."""
    _ = gettext
    days = sorted(RFM_RECENCY_DAYS)
    recency = [_("5: within {days}").format(days=days[0])] + [
        _("{score}: {low}-{high}").format(score=4 - k, low=lo + 1, high=hi) for k, (lo, hi) in enumerate(zip(days, days[1:]))]
    orders = [1, *sorted(RFM_FREQUENCY_ORDERS)]
    counts = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(orders, orders[1:])] + [f"{orders[-1]}+"]
    return _("R counts days since the last order ({recency}, 1: longer), F counts orders ({counts} for 1 to 5)").format(
        recency=_(", ").join(recency), counts=_(", ").join(counts))


def monetary_cut_points(reference) -> np.ndarray:
    """The four spend thresholds that score M against a reference population.

    ``reference`` is the population's sorted quantile grid (``training.model.reference_quantiles``).
    M = 1 + floor(5 x the share of the grid below the spend), capped at 5, is exactly
    1 + the number of these thresholds the spend exceeds: the grid value below which the
    share first reaches 1/5, 2/5, 3/5, 4/5 (infinite where the grid is too short to reach it).
    """
    grid = np.asarray(reference, dtype=float)
    span = max(len(grid) - 1, 1)
    cuts = []
    for k in range(1, 5):
        needed = -(-k * span // 5)  # ceil(k * span / 5) grid values below
        cuts.append(grid[needed - 1] if needed <= len(grid) else np.inf)
    return np.array(cuts, dtype=float)


def rfm_scores(days_since_last, n_orders, total_spend, monetary_cuts) -> dict[str, np.ndarray]:
    """RFM scores 1-5 (the table in the module docstring), as int64 arrays ``r``, ``f``, ``m``.

    M counts the ``monetary_cuts`` (:func:`monetary_cut_points`) that ``total_spend`` exceeds.
    """
    days = np.asarray(days_since_last, dtype=float)
    orders = np.asarray(n_orders, dtype=float)
    spend = np.asarray(total_spend, dtype=float)
    r = 1 + sum((days <= d).astype(np.int64) for d in RFM_RECENCY_DAYS)
    f = 1 + sum((orders >= n).astype(np.int64) for n in RFM_FREQUENCY_ORDERS)
    m = 1 + sum((spend > c).astype(np.int64) for c in np.asarray(monetary_cuts, dtype=float))
    return {"r": np.asarray(r, dtype=np.int64), "f": np.asarray(f, dtype=np.int64), "m": np.asarray(m, dtype=np.int64)}


def rfm_segment(r, f) -> np.ndarray:
    """Segment name per customer from the recency and frequency scores (the table above)."""
    r = np.asarray(r, dtype=int)
    f = np.asarray(f, dtype=int)
    conditions = [
        (r == 5) & (f >= 4),
        (r >= 3) & (f >= 4),
        (r <= 2) & (f == 5),
        (r <= 2) & (f >= 3),
        (r >= 4) & (f >= 2),
        (r == 5) & (f == 1),
        (r == 4) & (f == 1),
        (r == 3) & (f == 3),
        (r == 3) & (f <= 2),
        (r == 2) & (f <= 2),
    ]
    return np.select(conditions, RFM_SEGMENTS[:-1], default="lost").astype(object)


def lifecycle_stage(
    features: pd.DataFrame,
    p_repurchase,
    p_alive,
    horizon_days: int,
    thresholds: LifecycleThresholds = LifecycleThresholds(),
) -> np.ndarray:
    """Lifecycle stage per customer (rules in the module docstring)."""
    since = np.asarray(features["days_since_last"], dtype=float)
    repeat = np.asarray(features["frequency"], dtype=float) > 0
    gap = np.asarray(features["gap_mean"], dtype=float)
    overdue = np.where(repeat & (gap > 0), since / np.where(gap > 0, gap, 1.0), np.inf)
    p = np.asarray(p_repurchase, dtype=float)
    alive = np.asarray(p_alive, dtype=float)
    conditions = [
        (alive < thresholds.churned_max_p_alive) & (p < thresholds.churned_max_p_repurchase) & (since > horizon_days),
        ~repeat & (since <= horizon_days),
        repeat & (overdue <= thresholds.active_max_overdue),
        repeat & (overdue <= thresholds.at_risk_max_overdue),
    ]
    return np.select(conditions, ["churned", "new", "active", "at_risk"], default="lapsed").astype(object)
