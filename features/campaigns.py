"""Past campaigns with a random holdout and a known, heterogeneous true effect (``synth --campaigns``).

:func:`simulate_campaigns` takes the synthetic shop of :mod:`features.synth` as the world
without any contact, runs monthly reminder campaigns over its last year, and writes what
contacting did into the order log, so that ``repurchase measure`` can be checked against
the truth:

* **Audiences.** On each campaign date ``D`` (every 28 days, from a year before the end
  until the last date whose window still ends inside the log, shifted by up to a week by
  the seed), three actions pick customers from the log as of ``D`` (:data:`ACTIONS`):
  ``replenishment_reminder`` (a replenishment category bought, last order 14-45 days
  ago), ``churn_warning`` (two orders or more, last order 60-150 days ago) and
  ``win_back`` (two orders or more, 150-400 days ago). Each eligible customer joins with
  probability :data:`JOIN_PROBABILITY`; a customer is in one campaign at most, so every
  contact's effect is its own.
* **Groups.** The holdout is drawn exactly as ``repurchase target`` draws it
  (:func:`features.contacts.holdout_draw` of customer, action and date, below
  ``holdout_share``).
* **Who responds.** Whether the customer orders in the window ``(D, D + window]`` without
  a contact is what the simulated shop says. Among customers who would not order, some
  are *persuadable*: they order only if contacted (probability ``persuadable``, higher
  for community-leaning customers: the effect is heterogeneous); the others never buy.
  Among customers who would order anyway, a few are *put off* by a contact (probability
  ``put_off``) and do not order in the window; the others buy anyway.
* **The log.** For treated customers only: a persuadable customer gets one extra order
  1-``window`` days after ``D`` (their usual order value, category and channel); a
  put-off customer loses every order in the window. Holdout customers keep the world as it
  was.

The truth is the effect on the customers actually in each campaign, computed from both
potential outcomes of every contact (what they did and what they would have done in the
other group): the sample average treatment effect that ``measure``'s difference
estimates. Days are calendar days; a window counts orders on days ``D+1`` to
``D+window``, as ``measure`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.contacts import HOLDOUT, HOLDOUT_SHARE, TREATMENT, holdout_draw
from features.synth import COLUMNS, REPLENISHMENT_CYCLE_DAYS, generate_order_log
from features.timecut import in_horizon, until

CAMPAIGN_EVERY_DAYS = 28
CAMPAIGN_SPAN_DAYS = 365
JOIN_PROBABILITY = 0.6
HISTORY_BEFORE_FIRST_CAMPAIGN_DAYS = 120
DEFAULT_WINDOW_DAYS = 30


@dataclass(frozen=True)
class Effect:
    """How an action changes behaviour: who qualifies, who is persuaded, who is put off."""

    min_days_since_last: int
    max_days_since_last: int
    min_orders: int
    needs_replenishment: bool
    persuadable: dict[str, float]  # by the channel of the customer's last order
    put_off: dict[str, float]


#: The simulated campaigns, in the order they pick customers on a campaign date.
ACTIONS = {
    "replenishment_reminder": Effect(14, 45, 1, True, {"community": 0.45, "storefront": 0.25},
                                     {"community": 0.01, "storefront": 0.03}),
    "churn_warning": Effect(60, 150, 2, False, {"community": 0.12, "storefront": 0.08},
                            {"community": 0.02, "storefront": 0.06}),
    "win_back": Effect(150, 400, 2, False, {"community": 0.08, "storefront": 0.05},
                       {"community": 0.02, "storefront": 0.04}),
}
TYPES = ("persuadable", "sure_thing", "lost_cause", "put_off")


@dataclass
class CampaignLog:
    """A simulated shop with past campaigns.

    Attributes
    ----------
    lines : pandas.DataFrame
        The order log (columns of :data:`features.synth.COLUMNS`) with the campaigns' effects.
    contacts : pandas.DataFrame
        The contacts file: ``customer_id``, ``action``, ``contacted_at``, ``group``, ``holdout_share``.
    units : pandas.DataFrame
        One row per contact with the truth: ``type`` (:data:`TYPES`), ``bought_without``
        and ``bought_with`` (ordered in the window without / with the contact),
        ``orders_without``, ``orders_with``, ``revenue_without``, ``revenue_with``.
    true_effects : dict
        Per action and ``overall``: ``customers``, ``treatment``, ``holdout``,
        ``rate_diff`` (the true difference in the share who order in the window),
        ``orders_per_customer_diff``, ``revenue_per_customer_diff``, ``incremental_orders``
        and ``incremental_revenue`` (for the treatment group), and the count of each type.
    window_days : int
        The window the truth is computed over.
    """

    lines: pd.DataFrame
    contacts: pd.DataFrame
    units: pd.DataFrame
    true_effects: dict
    window_days: int


def simulate_campaigns(
    n_customers: int,
    seed: int = 0,
    start: str = "2023-01-01",
    end: str = "2025-12-31",
    *,
    holdout_share: float = 0.1,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> CampaignLog:
    """Simulate a shop (:func:`features.synth.generate_order_log`) and its past campaigns (see module docs)."""
    if not 0 < holdout_share < 1:
        raise InputError(f"holdout_share must be between 0 and 1, got {holdout_share}")
    if not 1 <= window_days <= 120:
        raise InputError(f"window_days must be from 1 to 120, got {window_days}")
    base = generate_order_log(n_customers, seed=seed, start=start, end=end)
    rng = np.random.default_rng([seed, 20_240_618])
    orders = _orders(base)
    dates = _campaign_dates(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), window_days, rng)
    units = _audiences(orders, dates, rng)
    if units.empty:
        raise InputError(f"no customer qualified for a campaign between {start} and {end}; simulate more customers "
                         "or a longer log")
    units["group"] = _groups(units, holdout_share)
    units = _outcomes(units, orders, window_days, rng)
    lines = _apply_effects(base, orders, units, window_days, rng)
    contacts = units[["customer_id", "action", "contacted_at", "group"]].assign(**{HOLDOUT_SHARE: float(holdout_share)})
    return CampaignLog(
        lines=lines,
        contacts=contacts.reset_index(drop=True),
        units=units.reset_index(drop=True),
        true_effects=_truth(units),
        window_days=window_days,
    )


def _orders(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per order: customer, day, value, and the first line's category, product and channel."""
    first = lines.drop_duplicates("order_id")
    value = lines.groupby("order_id", sort=False)["amount"].sum()
    return pd.DataFrame(
        {
            "order_id": first["order_id"].to_numpy(),
            "customer_id": first["customer_id"].to_numpy(),
            "day": first["order_ts"].dt.normalize().to_numpy(),
            "amount": value.reindex(first["order_id"]).to_numpy(),
            "category": first["category"].to_numpy(),
            "product_id": first["product_id"].to_numpy(),
            "channel": first["channel"].to_numpy(),
        }
    )


def _campaign_dates(start: pd.Timestamp, end: pd.Timestamp, window_days: int, rng: np.random.Generator) -> list:
    last = end - pd.Timedelta(days=window_days)
    first = max(end - pd.Timedelta(days=CAMPAIGN_SPAN_DAYS), start + pd.Timedelta(days=HISTORY_BEFORE_FIRST_CAMPAIGN_DAYS))
    first += pd.Timedelta(days=int(rng.integers(0, 7)))
    if first > last:
        raise InputError(
            f"the log from {start.date()} to {end.date()} is too short for campaigns: they need "
            f"{HISTORY_BEFORE_FIRST_CAMPAIGN_DAYS} days of history and a {window_days}-day window after them"
        )
    return list(pd.date_range(first, last, freq=f"{CAMPAIGN_EVERY_DAYS}D"))


def _audiences(orders: pd.DataFrame, dates: list, rng: np.random.Generator) -> pd.DataFrame:
    """Who each action contacts on each date (each customer once at most), with the channel of their last order."""
    replenishment = orders["category"].isin(list(REPLENISHMENT_CYCLE_DAYS))
    taken: set[str] = set()
    parts = []
    for day in dates:
        past = until(orders, day, column="day")
        by_customer = past.groupby("customer_id", sort=True)
        last = by_customer["day"].max()
        count = by_customer.size()
        channel = past.sort_values("day", kind="mergesort").groupby("customer_id")["channel"].last()
        replenisher = replenishment[past.index].groupby(past["customer_id"]).any()
        since = (day - last).dt.days
        free = ~last.index.isin(list(taken))
        for action, effect in ACTIONS.items():
            eligible = free & since.between(effect.min_days_since_last, effect.max_days_since_last).to_numpy()
            eligible &= (count >= effect.min_orders).to_numpy()
            if effect.needs_replenishment:
                eligible &= replenisher.reindex(last.index, fill_value=False).to_numpy()
            eligible &= rng.random(len(last)) < JOIN_PROBABILITY
            ids = last.index[eligible]
            free &= ~eligible
            taken.update(ids)
            parts.append(pd.DataFrame({"customer_id": ids.astype(str), "action": action, "contacted_at": day,
                                       "channel": channel.reindex(ids).to_numpy()}))
    units = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["customer_id", "action", "contacted_at", "channel"])
    units["contacted_at"] = pd.to_datetime(units["contacted_at"]).astype("datetime64[ns]")
    return units


def _groups(units: pd.DataFrame, holdout_share: float) -> np.ndarray:
    groups = np.empty(len(units), dtype=object)
    for (action, day), positions in units.groupby(["action", "contacted_at"], sort=False).indices.items():
        draws = holdout_draw(units["customer_id"].to_numpy()[positions], action, day)
        groups[positions] = np.where(draws < holdout_share, HOLDOUT, TREATMENT)
    return groups


def _in_window(units: pd.DataFrame, orders: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """(unit position, order) pairs: each contact's orders on days D+1 .. D+window."""
    pairs = units[["customer_id", "contacted_at"]].reset_index(names="unit").merge(
        orders[["customer_id", "order_id", "day", "amount"]], on="customer_id", how="inner"
    )
    return pairs[in_horizon(pairs["day"], pairs["contacted_at"], window_days).to_numpy()]


def _outcomes(units: pd.DataFrame, orders: pd.DataFrame, window_days: int, rng: np.random.Generator) -> pd.DataFrame:
    """Each contact's type and both potential outcomes over the window."""
    units = units.reset_index(drop=True)
    window = _in_window(units, orders, window_days).groupby("unit").agg(orders=("order_id", "size"), revenue=("amount", "sum"))
    orders_without = window["orders"].reindex(units.index, fill_value=0).to_numpy()
    revenue_without = window["revenue"].reindex(units.index, fill_value=0.0).to_numpy()
    bought = orders_without > 0
    persuadable = np.array([ACTIONS[a].persuadable.get(c, 0.0) for a, c in zip(units["action"], units["channel"])])
    put_off = np.array([ACTIONS[a].put_off.get(c, 0.0) for a, c in zip(units["action"], units["channel"])])
    draw = rng.random(len(units))
    kind = np.where(bought, np.where(draw < put_off, "put_off", "sure_thing"),
                    np.where(draw < persuadable, "persuadable", "lost_cause"))
    value = _usual_order_value(units, orders) * rng.lognormal(0.0, 0.2, len(units))
    is_persuadable, is_put_off = kind == "persuadable", kind == "put_off"
    return units.assign(
        type=kind,
        bought_without=bought,
        bought_with=(bought & ~is_put_off) | is_persuadable,
        orders_without=orders_without,
        orders_with=np.where(is_put_off, 0, orders_without + is_persuadable),
        revenue_without=revenue_without,
        revenue_with=np.where(is_put_off, 0.0, revenue_without + np.where(is_persuadable, np.round(value, 2), 0.0)),
        extra_value=np.where(is_persuadable, np.round(value, 2), np.nan),
    )


def _usual_order_value(units: pd.DataFrame, orders: pd.DataFrame) -> np.ndarray:
    """Median value of each customer's orders up to the contact."""
    pairs = units[["customer_id", "contacted_at"]].reset_index(names="unit").merge(
        orders[["customer_id", "day", "amount"]], on="customer_id")
    median = pairs[pairs["day"] <= pairs["contacted_at"]].groupby("unit")["amount"].median()
    return median.reindex(units.index).fillna(float(orders["amount"].median())).to_numpy()


def _apply_effects(
    base: pd.DataFrame, orders: pd.DataFrame, units: pd.DataFrame, window_days: int, rng: np.random.Generator
) -> pd.DataFrame:
    """The order log after the campaigns: treated put-off customers lose their window's orders, treated
    persuadable customers gain one order."""
    treated = units["group"].to_numpy() == TREATMENT
    put_off = units[treated & (units["type"] == "put_off").to_numpy()]
    lost = _in_window(put_off, orders, window_days)["order_id"]
    kept = base[~base["order_id"].isin(set(lost))]

    gaining = units[treated & (units["type"] == "persuadable").to_numpy()]
    latest = orders.merge(gaining[["customer_id", "contacted_at"]], on="customer_id")
    latest = latest[latest["day"] <= latest["contacted_at"]].sort_values("day", kind="mergesort")
    latest = latest.drop_duplicates("customer_id", keep="last").set_index("customer_id")
    like = latest.reindex(gaining["customer_id"].to_numpy())
    delay = np.minimum(1 + np.floor(rng.exponential(window_days / 4.0, len(gaining))), window_days)
    seconds = rng.integers(9 * 3600, 22 * 3600, len(gaining))
    added = pd.DataFrame(
        {
            "customer_id": gaining["customer_id"].to_numpy(),
            "order_id": [f"oc{k:08d}" for k in range(1, len(gaining) + 1)],
            "order_ts": (gaining["contacted_at"].to_numpy() + pd.to_timedelta(delay, unit="D").to_numpy()
                         + pd.to_timedelta(seconds, unit="s").to_numpy()),
            "amount": gaining["extra_value"].to_numpy(),
            "quantity": 1.0,
            "product_id": like["product_id"].to_numpy(),
            "category": like["category"].to_numpy(),
            "channel": like["channel"].to_numpy(),
        },
        columns=COLUMNS,
    )
    lines = pd.concat([kept, added.astype({c: "str" for c in ("customer_id", "order_id", "product_id", "category",
                                                                "channel")})], ignore_index=True)
    lines["order_ts"] = lines["order_ts"].astype("datetime64[ns]")
    return lines.sort_values(["order_ts", "order_id"], kind="mergesort").reset_index(drop=True)


def _truth(units: pd.DataFrame) -> dict:
    out = {}
    for name, rows in [*units.groupby("action", sort=True), ("overall", units)]:
        n = len(rows)
        n_treatment = int((rows["group"] == TREATMENT).sum())
        rate_diff = float((rows["bought_with"].astype(float) - rows["bought_without"].astype(float)).mean())
        orders_diff = float((rows["orders_with"] - rows["orders_without"]).mean())
        revenue_diff = float((rows["revenue_with"] - rows["revenue_without"]).mean())
        out[str(name)] = {
            "customers": n,
            "treatment": n_treatment,
            "holdout": n - n_treatment,
            "rate_diff": rate_diff,
            "rate_without": float(rows["bought_without"].mean()),
            "orders_per_customer_diff": orders_diff,
            "revenue_per_customer_diff": revenue_diff,
            "incremental_orders": orders_diff * n_treatment,
            "incremental_revenue": revenue_diff * n_treatment,
            "types": {kind: int((rows["type"] == kind).sum()) for kind in TYPES},
        }
    return out
