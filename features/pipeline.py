"""Point-in-time customer features and horizon labels, written once as Ibis expressions.

Every feature "as of" a cutoff uses only orders with ``order_ts <= cutoff``; every label
for horizon ``H`` uses only orders in ``(cutoff, cutoff + H]``. The cutoff is a *date*:
an order at any time of day on the cutoff day belongs to the past
(``order_ts < cutoff + 1 day``), and label orders run from the day after the cutoff to
the day ``cutoff + H`` inclusive. :func:`split_at` cuts the log (through
:mod:`features.timecut`, the one place any code cuts it), and the label code is handed only the future half, so a label cannot leak into a
feature by construction.

Counting rule: purchase *days* for BTYD, *orders* for everything else
---------------------------------------------------------------------
The BTYD summary is exactly :func:`lifetimes.utils.summary_data_from_transaction_data`
with ``freq="D"`` and ``observation_period_end=cutoff``: orders are first collapsed to
purchase days (amounts summed per day), then

- ``frequency`` = distinct purchase days - 1 (repeat purchase days),
- ``recency`` = last purchase day - first purchase day, in days,
- ``T`` = cutoff day - first purchase day, in days,
- ``monetary_value`` = mean over the repeat purchase days of the day's summed amount
  (0 when ``frequency`` is 0).

The inter-purchase gaps (``gap_*``) are between consecutive purchase days as well, so
they are never 0 and ``gap_mean == recency / frequency``. Counts and spend
(``n_orders``, ``orders_30d``, ``spend_30d``, ...) count *orders*: two orders on one day
are two orders but one purchase day.

Trailing windows: ``orders_30d`` counts orders on the 30 days ending with the cutoff day,
i.e. ``cutoff - 29 days <= order day <= cutoff``.

Missing values: features that do not exist for a customer stay NaN (LightGBM handles
them natively): the gap statistics and ``overdue_ratio`` for one-purchase-day customers,
``gap_std`` with fewer than two gaps. Counts, spend and ``monetary_value`` are 0 instead.

RFM scores (1-5) are quintile scores within the population at the cutoff: the cut
points are the 20/40/60/80th percentiles (exact, linearly interpolated) of
``days_since_last`` (R), ``n_orders`` (F) and ``total_spend`` (M), and a score is 1 + the
number of cut points the value beats (is above; for R, is below, so the most recent
buyers score 5). Equal values always get equal scores, and a value sitting on a cut point
does not beat it: when 60 % of customers bought once, they all get F = 1 and the
customers with more orders get 4 or 5.

Engines: :func:`feature_expr` and :func:`label_expr` use only portable Ibis operations
(one window with ``lead`` and ``max``, plain and filtered aggregates, ``quantile``,
``DateValue.delta``), so the same definitions run on DuckDB (the embedded default used by
:func:`build_features`) and on PySpark through Ibis with the same result (tested). Plans
that read well but run slowly on DuckDB are avoided on purpose: ``argmin``/``argmax``
(ordered aggregates there; an integer packing of (age, gap) does the job), rank windows
over the whole population (a percentile aggregate does), and collapsing orders to
purchase days before the window (a second log-sized hash aggregation).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import threading
from collections.abc import Iterable, Sequence

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.common.errors import CutoffError, OrderLogError
from features.timecut import as_day, between, until

__all__ = [
    "CORE_FEATURES",
    "FEATURES",
    "LABELS",
    "SALES_DAYS",
    "WINDOWS",
    "build_features",
    "build_labels",
    "build_training_frame",
    "describe_features",
    "feature_expr",
    "label_expr",
    "mix_values",
    "split_at",
    "training_cutoffs",
]

WINDOWS: tuple[int, ...] = (14, 30, 60, 90, 180, 365)
"""Trailing windows (days ending with the cutoff day) for order counts and spend."""

TREND_DAYS = 90
"""Trends compare the last ``TREND_DAYS`` days with the ``TREND_DAYS`` days before."""

SALES_DAYS: tuple[tuple[int, int], ...] = ((6, 18), (11, 11))
"""(month, day) of the big yearly sales days (618 and Singles' Day)."""

RFM_CUTS = (0.2, 0.4, 0.6, 0.8)
"""Percentiles of the cutoff's population that separate the RFM ranks 1-5."""

MIX_TOP = 5
"""Channel / category values that get their own share column (most frequent first)."""

REQUIRED_COLUMNS = ("customer_id", "order_ts", "amount")

_CUT_TOLERANCE = 1e-9
"""Relative margin by which a value must beat an RFM cut point (engines round ties apart)."""

_PACK = 1 << 20
"""Gaps are below 2**20 days, so ``age * _PACK + gap`` orders by age and keeps the gap."""

FEATURES: dict[str, str] = {
    # BTYD summary (lifetimes, freq="D")
    "frequency": "repeat purchase days: distinct purchase days - 1 (lifetimes)",
    "recency": "days from first to last purchase day (lifetimes)",
    "T": "days from first purchase day to the cutoff day (lifetimes)",
    "monetary_value": "mean spend per repeat purchase day, 0 without repeats (lifetimes)",
    # volume and value
    "n_orders": "orders on or before the cutoff",
    "n_purchase_days": "distinct days with at least one order",
    "total_spend": "sum of order amounts",
    "avg_order_value": "total_spend / n_orders",
    "orders_per_purchase_day": "n_orders / n_purchase_days (basket splitting)",
    # first-order facts and tenure
    "first_day_spend": "spend on the first purchase day (all orders that day)",
    "first_day_orders": "orders on the first purchase day",
    "first_gap": "days from the first to the second purchase day (NaN if none)",
    "tenure_days": "days since the first purchase day (same as T, business name)",
    "days_since_last": "days from the last purchase day to the cutoff day (T - recency)",
    # trailing windows
    **{f"orders_{w}d": f"orders in the {w} days ending on the cutoff day" for w in WINDOWS},
    **{f"spend_{w}d": f"spend in the {w} days ending on the cutoff day" for w in WINDOWS},
    # rhythm
    "gap_mean": "mean days between consecutive purchase days (recency / frequency)",
    "gap_std": "sample std of days between purchase days (NaN with < 2 gaps)",
    "gap_min": "shortest gap between purchase days",
    "gap_max": "longest gap between purchase days",
    "gap_last": "gap between the last two purchase days",
    "overdue_ratio": "days_since_last / gap_mean: > 1 means later than own rhythm (NaN without repeats)",
    # trends
    f"orders_prev_{TREND_DAYS}d": f"orders in the {TREND_DAYS} days before the last {TREND_DAYS}",
    f"spend_prev_{TREND_DAYS}d": f"spend in the {TREND_DAYS} days before the last {TREND_DAYS}",
    "orders_trend": f"(orders_{TREND_DAYS}d - prev) / (orders_{TREND_DAYS}d + prev), 0 when both 0",
    "spend_trend": f"(spend_{TREND_DAYS}d - prev) / (spend_{TREND_DAYS}d + prev), 0 when both 0",
    "spend_share_365d": "spend_365d / total_spend",
    # RFM ranks within the population (model inputs; the RFM scores and segments of the
    # score rows, rfm_r / rfm_f / rfm_m, are training.segments' fixed scales)
    "rfm_rank_r": "recency rank 1-5: days_since_last against the population's quintile cut points (5 = most recent)",
    "rfm_rank_f": "frequency rank 1-5: n_orders against the population's quintile cut points (5 = most)",
    "rfm_rank_m": "monetary rank 1-5: total_spend against the population's quintile cut points (5 = most)",
    "rfm_rank_sum": "rfm_rank_r + rfm_rank_f + rfm_rank_m (3-15)",
    "rfm_rank_cell": "RFM rank cell code 100 * r + 10 * f + m (111-555)",
    # calendar position of the cutoff
    "days_to_next_sales_day": "days from the cutoff to the next 06-18 or 11-11 (strictly after)",
    "days_since_sales_day": "days since the last 06-18 or 11-11 (0 on the day)",
    "cutoff_month": "month of the cutoff (1-12)",
    "cutoff_weekday": "weekday of the cutoff (0 = Monday)",
    # optional: only when the log has the column
    "total_quantity": "units bought (only when the log has `quantity`)",
    "avg_quantity": "units per order (only when the log has `quantity`)",
    "n_categories": "distinct categories bought (only when the log has `category`)",
    "top_category_share": "share of orders in the customer's most bought category (only with `category`)",
    "share_category_<value>": "share of orders in category <value>, top categories only (only with `category`)",
    "share_channel_<value>": "share of orders through channel <value>, top channels only (only with `channel`)",
}
"""Feature name -> one-line description; ``<value>`` entries stand for one column per value."""

CORE_FEATURES: tuple[str, ...] = (
    "frequency",
    "recency",
    "T",
    "monetary_value",
    *(f"orders_{w}d" for w in WINDOWS),
    *(f"spend_{w}d" for w in WINDOWS),
    "gap_mean",
    "gap_std",
    "gap_min",
    "gap_last",
)
"""The shared core that the benchmark checks against a plain pandas implementation."""

LABELS: dict[str, str] = {
    "label_repurchase": "1 if the customer orders in (cutoff, cutoff + H], else 0",
    "label_orders": "orders in (cutoff, cutoff + H]",
    "label_revenue": "spend in (cutoff, cutoff + H]",
    "label_days_to_next": "days from the cutoff to the next order day; H when censored",
    "label_censored": "1 if no order within the horizon (label_days_to_next is censored at H)",
}

_INT_FEATURES = frozenset(
    {
        "n_orders",
        "n_purchase_days",
        "first_day_orders",
        *(f"orders_{w}d" for w in WINDOWS),
        f"orders_prev_{TREND_DAYS}d",
        "rfm_rank_r",
        "rfm_rank_f",
        "rfm_rank_m",
        "rfm_rank_sum",
        "rfm_rank_cell",
        "cutoff_month",
        "cutoff_weekday",
        "n_categories",
    }
)
_INT_LABELS = frozenset({"label_repurchase", "label_orders", "label_censored"})


# --------------------------------------------------------------------------- dates


def _sales_day_position(cutoff: dt.date) -> tuple[int, int]:
    """Days to the next sales day (strictly after the cutoff) and since the last one."""
    candidates = [
        dt.date(year, month, day)
        for year in (cutoff.year - 1, cutoff.year, cutoff.year + 1)
        for month, day in SALES_DAYS
    ]
    after = min(d for d in candidates if d > cutoff)
    before = max(d for d in candidates if d <= cutoff)
    return (after - cutoff).days, (cutoff - before).days


# --------------------------------------------------------------------------- inputs


def _as_table(orders: object) -> ir.Table:
    """An Ibis table over ``orders`` (pandas DataFrame, pyarrow Table or Ibis Table)."""
    if isinstance(orders, ir.Table):
        table = orders
    elif isinstance(orders, pd.DataFrame):
        table = ibis.memtable(_arrow_orders(orders))
    elif isinstance(orders, pa.Table):
        table = ibis.memtable(orders)
    else:
        raise OrderLogError(
            f"orders: expected a pandas DataFrame, pyarrow Table or Ibis Table, got {type(orders).__name__}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise OrderLogError(f"orders: missing column(s) {', '.join(map(repr, missing))}")
    if table.order_ts.type().is_date():
        table = table.mutate(order_ts=table.order_ts.cast("timestamp"))
    return table


def _arrow_orders(frame: pd.DataFrame) -> pa.Table:
    """The contract columns of a pandas order log as Arrow (other columns are not copied)."""
    keep = [c for c in (*REQUIRED_COLUMNS, "channel", "category", "quantity") if c in frame.columns]
    return pa.Table.from_pandas(frame[keep], preserve_index=False)


def split_at(orders: object, cutoff: object, horizon_days: int) -> tuple[ir.Table, ir.Table]:
    """Cut an order log at a cutoff date into the feature past and the label future.

    Parameters
    ----------
    orders
        Order log (pandas DataFrame, pyarrow Table or Ibis Table).
    cutoff
        The as-of date; orders at any time on that day belong to the past.
    horizon_days
        Label horizon H in days.

    Returns
    -------
    (past, future)
        ``past`` holds the orders with ``order_ts <= cutoff`` (day resolution) and is the
        only input features may see; ``future`` holds the orders on the days
        ``cutoff + 1 .. cutoff + H`` and is the only input labels may see.
    """
    table = _as_table(orders)
    future = between(table, cutoff, horizon_days)
    return until(table, cutoff), future


# --------------------------------------------------------------------------- mix values


def _slug(value: str) -> str:
    slug = re.sub(r"[^0-9a-z]+", "_", str(value).strip().lower()).strip("_")
    return slug or "blank"


def mix_values(orders: object, cutoff: object, column: str, top: int = MIX_TOP) -> list[str]:
    """The ``top`` most frequent values of ``column`` among orders on or before the cutoff.

    Ties in frequency are broken by value so the column set is deterministic. Returns an
    empty list when the log has no such column.
    """
    return _top_values(until(_as_table(orders), cutoff), [column], top)[column]


def _top_values(past: ir.Table, columns: Sequence[str], top: int = MIX_TOP) -> dict[str, list[str]]:
    """Most frequent values of each column, from one group-by over all of them."""
    present = [c for c in columns if c in past.columns]
    found: dict[str, list[str]] = {c: [] for c in columns}
    if not present:
        return found
    counts = past.group_by(present).agg(n=ibis._.count()).to_pyarrow().to_pandas()
    for column in present:
        totals = counts.groupby(column, dropna=True)["n"].sum().reset_index()
        totals[column] = totals[column].astype(str)
        ranked = totals.sort_values(["n", column], ascending=[False, True], kind="stable")
        found[column] = ranked[column].head(top).tolist()
    return found


def _share_columns(prefix: str, values: Sequence[str]) -> dict[str, str]:
    """Column name per value, with suffixes when two values slug to the same name."""
    names: dict[str, str] = {}
    for value in values:
        name, k = f"{prefix}_{_slug(value)}", 2
        while name in names.values():
            name, k = f"{prefix}_{_slug(value)}_{k}", k + 1
        names[value] = name
    return names


# --------------------------------------------------------------------------- features


def _value_code(column: ir.Value, values: Sequence[str]) -> ir.Value:
    """Position of the value in ``values`` (int8), -1 for any other value.

    Never null: Ibis counts ``count(where=...)`` on PySpark as a sum of the condition,
    which is null, not 0, when the condition is null on all of a customer's orders.
    """
    return ibis.cases(*((column == value, code) for code, value in enumerate(values)), else_=-1).cast("int8")


def _customer_aggregates(
    past: ir.Table,
    cutoff: dt.date,
    *,
    core_only: bool,
    channel_values: Sequence[str],
    category_values: Sequence[str],
) -> ir.Table:
    """One window pass over the orders, then one group-by to a row per customer.

    Orders are not collapsed to purchase days first (that would be a second hash
    aggregation as large as the log). Instead each order, ordered by ``age`` (days
    before the cutoff) within its customer, looks at the next older order. Between two
    orders of one day that gap is 0 and is set to null, so on every purchase day but the
    first exactly one order carries the gap back to the previous purchase day. Then
    ``count(gap)`` is the BTYD frequency and the gap statistics are over purchase days,
    as lifetimes counts them.
    """
    # Only narrow columns go through the window's sort: mix values become small codes.
    columns: dict[str, ir.Value] = {
        "customer_id": past.customer_id,
        "amount": past.amount,
        "age": ibis.date(cutoff).delta(past.order_ts.date(), unit="day").cast("int32"),
    }
    if not core_only:
        if "quantity" in past.columns:
            columns["quantity"] = past.quantity
        for column, values in (("channel", channel_values), ("category", category_values)):
            if values:
                columns[f"{column}_code"] = _value_code(past[column], values)
    orders = past.select(**columns)
    window = ibis.window(group_by="customer_id", order_by="age")
    orders = orders.mutate(
        gap=(orders.age.lead().over(window) - orders.age).nullif(0),
        first_age=orders.age.max().over(window),
    )
    orders = orders.mutate(
        repeat_amount=ibis.ifelse(orders.age == orders.first_age, ibis.null("float64"), orders.amount),
        # (age, gap) packed into one integer, so that min / max pick the gap of the
        # latest / earliest purchase day: an arg-min without an ordered aggregate
        age_gap=orders.age.cast("int64") * _PACK + orders.gap,
    )
    # Ibis types int32 differences as int64 and would drop a cast to int64, so DuckDB
    # squared INT32 gaps and overflowed past 46,340 days; float64 is exact here (gaps
    # < 2**17 days, sums < 2**53) and the cast is kept.
    gap = orders.gap.cast("float64")
    metrics: dict[str, ir.Value] = {
        "frequency": orders.gap.count(),
        "T": orders.age.max(),
        "days_since_last": orders.age.min(),
        "n_orders": orders.count(),
        "total_spend": orders.amount.sum(),
        "repeat_spend": orders.repeat_amount.sum(),
        "gap_sq_sum": (gap * gap).sum(),
        "gap_min": orders.gap.min(),
        "gap_last": orders.age_gap.min() % _PACK,
    }
    for w in WINDOWS:
        recent = orders.age < w
        metrics[f"orders_{w}d"] = orders.count(where=recent)
        metrics[f"spend_{w}d"] = orders.amount.sum(where=recent)
    if not core_only:
        prev = (orders.age >= TREND_DAYS) & (orders.age < 2 * TREND_DAYS)
        metrics |= {
            "gap_max": orders.gap.max(),
            "first_day_orders": orders.count(where=orders.age == orders.first_age),
            "first_gap": orders.age_gap.max() % _PACK,
            f"orders_prev_{TREND_DAYS}d": orders.count(where=prev),
            f"spend_prev_{TREND_DAYS}d": orders.amount.sum(where=prev),
        }
        if "quantity" in orders.columns:
            metrics["total_quantity"] = orders.quantity.sum()
        for column, values in (("channel", channel_values), ("category", category_values)):
            for code, name in enumerate(_share_columns(f"n_{column}", values).values()):
                metrics[name] = orders.count(where=orders[f"{column}_code"] == code)
    return orders.group_by("customer_id").agg(**metrics)


def _category_mix(past: ir.Table) -> ir.Table:
    """Distinct categories per customer and the order count of the most bought one."""
    per_category = (
        past.filter(past.category.notnull())
        .group_by(["customer_id", "category"])
        .agg(n=ibis._.count())
    )
    return per_category.group_by("customer_id").agg(
        n_categories=per_category.count(),
        top_category_n=per_category.n.max(),
    )


def _with_rfm_ranks(agg: ir.Table) -> ir.Table:
    """RFM quintile ranks from the population's 20/40/60/80th percentiles.

    How a customer compares with the others at the cutoff, which is what the model learns
    from at every training origin (relative recency transfers across origins better than
    raw days). Not the RFM scores of the score rows: ranks within a population dominated by
    one-time buyers tie and reach back too far to name segments (``training.segments``).

    A rank is 1 + the number of cut points the value beats (is above; for recency, is
    below), so equal values always score alike. Cut points are exact, linearly
    interpolated percentiles (DuckDB ``percentile_cont``, Spark ``percentile``): one
    aggregation over the customers instead of a sort per score. Interpolating between two
    equal values is not exact in every engine (DuckDB gives 27.939999999999998 between
    27.94 and 27.94, Spark 27.94), so a value beats a cut point only by more than
    :data:`_CUT_TOLERANCE` of it: a value on the cut point never beats it, on either engine.
    """
    cuts = list(RFM_CUTS)
    thresholds = agg.aggregate(
        rank_r_cuts=agg.days_since_last.quantile(cuts),
        rank_f_cuts=agg.n_orders.quantile(cuts),
        rank_m_cuts=agg.total_spend.quantile(cuts),
    )
    both = agg.cross_join(thresholds)

    def score(value: ir.Value, cut_points: ir.ArrayValue, *, lower_is_better: bool = False) -> ir.Value:
        beaten = []
        for k in range(len(cuts)):
            margin = cut_points[k].abs() * _CUT_TOLERANCE
            beaten.append((value < cut_points[k] - margin) if lower_is_better else (value > cut_points[k] + margin))
        return sum((b.cast("int64") for b in beaten), ibis.literal(1, type="int64"))

    return both.mutate(
        rfm_rank_r=score(both.days_since_last, both.rank_r_cuts, lower_is_better=True),
        rfm_rank_f=score(both.n_orders, both.rank_f_cuts),
        rfm_rank_m=score(both.total_spend, both.rank_m_cuts),
    ).drop("rank_r_cuts", "rank_f_cuts", "rank_m_cuts")


def _ratio(num: ir.Value, den: ir.Value) -> ir.Value:
    """num / den, null where den is 0 (never inf)."""
    return ibis.ifelse(den == 0, ibis.null("float64"), num.cast("float64") / den)


def _trend(recent: ir.Value, previous: ir.Value) -> ir.Value:
    total = recent + previous
    return ibis.ifelse(total == 0, 0.0, (recent - previous).cast("float64") / total)


def feature_expr(
    orders: ir.Table,
    cutoff: object,
    *,
    core_only: bool = False,
    channel_values: Sequence[str] | None = None,
    category_values: Sequence[str] | None = None,
) -> ir.Table:
    """Point-in-time features per customer as a backend-agnostic Ibis expression.

    Parameters
    ----------
    orders
        Order log as an Ibis table (pandas and Arrow are wrapped in a memtable); only its
        orders on or before the cutoff are read.
    cutoff
        The as-of date.
    core_only
        Only ``customer_id`` and :data:`CORE_FEATURES` (the benchmark's shared core).
    channel_values, category_values
        Values that get a ``share_channel_*`` / ``share_category_*`` column. ``None``
        takes the most frequent ones before the cutoff (:func:`mix_values`, which runs a
        small query); pass them explicitly to fix the column set across cutoffs.

    Returns
    -------
    ibis.Table
        One row per customer with an order on or before the cutoff; column order is
        ``customer_id`` then the :data:`FEATURES` order, with the per-value share
        columns last. Unordered: :func:`build_features` sorts.
    """
    day = as_day(cutoff)
    past = until(_as_table(orders), day)
    columns = past.columns
    wanted = [c for c, v in (("channel", channel_values), ("category", category_values)) if v is None and c in columns]
    found = _top_values(past, wanted) if wanted and not core_only else {}
    channel_values = [] if core_only or "channel" not in columns else found.get("channel", channel_values)
    category_values = [] if core_only or "category" not in columns else found.get("category", category_values)

    agg = _customer_aggregates(
        past,
        day,
        core_only=core_only,
        channel_values=channel_values,
        category_values=category_values,
    )
    zero_if_null = {name: agg[name].coalesce(0) for name in agg.columns if name.startswith(("orders_", "spend_"))}
    agg = agg.mutate(**zero_if_null)
    frequency = agg.frequency
    recency = agg.T - agg.days_since_last
    no_repeat = frequency == 0
    # Gaps are whole days, so these sums are exact integers (in float64 too: n <= recency,
    # so n * sum(x^2) <= recency^3 < 2**53 for any log within 1900-2200) and the textbook
    # n * sum(x^2) - (sum x)^2 variance formula loses nothing to cancellation.
    gap_var_num = frequency.cast("float64") * agg.gap_sq_sum - recency.cast("float64") * recency.cast("float64")
    gap_var = gap_var_num.cast("float64") / (frequency * (frequency - 1)).cast("float64")
    btyd = {
        "monetary_value": ibis.ifelse(no_repeat, 0.0, agg.repeat_spend.cast("float64") / frequency),
        "gap_mean": ibis.ifelse(no_repeat, ibis.null("float64"), recency.cast("float64") / frequency),
        "gap_std": ibis.ifelse(frequency < 2, ibis.null("float64"), gap_var.sqrt()),
    }
    agg = agg.mutate(recency=recency, **btyd)
    if core_only:
        return agg.select("customer_id", *[agg[name].cast("float64").name(name) for name in CORE_FEATURES])

    agg = _with_rfm_ranks(agg)
    sales_next, sales_since = _sales_day_position(day)
    values: dict[str, ir.Value] = {
        "frequency": agg.frequency,
        "recency": agg.recency,
        "T": agg.T,
        "monetary_value": agg.monetary_value,
        "n_orders": agg.n_orders,
        "n_purchase_days": agg.frequency + 1,
        "total_spend": agg.total_spend,
        "avg_order_value": agg.total_spend / agg.n_orders,
        "orders_per_purchase_day": agg.n_orders / (agg.frequency + 1),
        "first_day_spend": agg.total_spend - agg.repeat_spend.coalesce(0.0),
        "first_day_orders": agg.first_day_orders,
        "first_gap": agg.first_gap,
        "tenure_days": agg.T,
        "days_since_last": agg.days_since_last,
        **{f"orders_{w}d": agg[f"orders_{w}d"] for w in WINDOWS},
        **{f"spend_{w}d": agg[f"spend_{w}d"] for w in WINDOWS},
        "gap_mean": agg.gap_mean,
        "gap_std": agg.gap_std,
        "gap_min": agg.gap_min,
        "gap_max": agg.gap_max,
        "gap_last": agg.gap_last,
        "overdue_ratio": _ratio(agg.days_since_last, agg.gap_mean),
        f"orders_prev_{TREND_DAYS}d": agg[f"orders_prev_{TREND_DAYS}d"],
        f"spend_prev_{TREND_DAYS}d": agg[f"spend_prev_{TREND_DAYS}d"],
        "orders_trend": _trend(agg[f"orders_{TREND_DAYS}d"], agg[f"orders_prev_{TREND_DAYS}d"]),
        "spend_trend": _trend(agg[f"spend_{TREND_DAYS}d"], agg[f"spend_prev_{TREND_DAYS}d"]),
        "spend_share_365d": _ratio(agg.spend_365d, agg.total_spend),
        "days_to_next_sales_day": ibis.literal(float(sales_next)),
        "days_since_sales_day": ibis.literal(float(sales_since)),
        "cutoff_month": ibis.literal(day.month, type="int64"),
        "cutoff_weekday": ibis.literal(day.weekday(), type="int64"),
    }
    if "total_quantity" in agg.columns:
        values["total_quantity"] = agg.total_quantity
        values["avg_quantity"] = agg.total_quantity / agg.n_orders
    for prefix, column, mix in (
        ("share_channel", "channel", channel_values),
        ("share_category", "category", category_values),
    ):
        for value, name in _share_columns(prefix, mix).items():
            count_name = _share_columns(f"n_{column}", mix)[value]
            values[name] = agg[count_name] / agg.n_orders

    values |= {"rfm_rank_r": agg.rfm_rank_r, "rfm_rank_f": agg.rfm_rank_f, "rfm_rank_m": agg.rfm_rank_m}
    features = agg.select("customer_id", **values)
    features = features.mutate(
        rfm_rank_sum=features.rfm_rank_r + features.rfm_rank_f + features.rfm_rank_m,
        rfm_rank_cell=features.rfm_rank_r * 100 + features.rfm_rank_f * 10 + features.rfm_rank_m,
    )
    if "category" in columns:
        mix = _category_mix(past)
        features = features.left_join(mix, "customer_id").drop("customer_id_right")
        features = features.mutate(
            n_categories=features.n_categories.coalesce(0),
            top_category_share=features.top_category_n / features.n_orders,
        ).drop("top_category_n")
    return _ordered(features)


def _feature_order(names: Iterable[str]) -> list[str]:
    names = list(names)
    static = [n for n in FEATURES if n in names]
    dynamic = [n for n in names if n not in FEATURES and n != "customer_id"]
    return static + dynamic


def _ordered(features: ir.Table) -> ir.Table:
    """customer_id, then the registry order, with int64 counts and float64 everything else."""
    columns = []
    for name in _feature_order(features.columns):
        kind = "int64" if name in _INT_FEATURES else "float64"
        columns.append(features[name].cast(kind).name(name))
    return features.select(features.customer_id.cast("string").name("customer_id"), *columns)


def describe_features(columns: Iterable[str]) -> dict[str, str]:
    """One-line description for each feature column of a built frame (patterns resolved)."""
    described = {}
    for name in columns:
        if name in FEATURES:
            described[name] = FEATURES[name]
        elif name in LABELS:
            described[name] = LABELS[name]
        else:
            for prefix in ("share_channel_", "share_category_"):
                if name.startswith(prefix):
                    template = FEATURES[f"{prefix}<value>"]
                    described[name] = template.replace("<value>", name.removeprefix(prefix))
    return described


# --------------------------------------------------------------------------- labels


def _labels_from_future(population: ir.Table, future: ir.Table, cutoff: dt.date, horizon_days: int) -> ir.Table:
    """Labels for ``population`` (customer_id) from the future orders only."""
    days_after = future.order_ts.date().delta(ibis.date(cutoff), unit="day")
    outcome = (
        future.mutate(days_after=days_after)
        .group_by("customer_id")
        .agg(
            label_orders=ibis._.count(),
            label_revenue=ibis._.amount.sum(),
            first_day=ibis._.days_after.min(),
        )
    )
    joined = population.left_join(outcome, "customer_id")
    ordered = joined.label_orders.coalesce(0) > 0
    labels = {
        "label_repurchase": ordered.cast("int64"),
        "label_orders": joined.label_orders.coalesce(0),
        "label_revenue": joined.label_revenue.coalesce(0.0),
        "label_days_to_next": joined.first_day.coalesce(horizon_days),
        "label_censored": (~ordered).cast("int64"),
    }
    return joined.select(
        joined.customer_id.cast("string").name("customer_id"),
        *[labels[name].cast("int64" if name in _INT_LABELS else "float64").name(name) for name in LABELS],
    )


def label_expr(orders: object, cutoff: object, horizon_days: int) -> ir.Table:
    """Horizon labels for the customers with an order on or before the cutoff.

    The population comes from the past half of :func:`split_at` and the outcome from the
    future half only, so the label values are blind to orders outside
    ``(cutoff, cutoff + H]``.
    """
    day = as_day(cutoff)
    past, future = split_at(orders, day, horizon_days)
    population = past.select("customer_id").distinct()
    return _labels_from_future(population, future, day, horizon_days)


# --------------------------------------------------------------------------- execution


def _execute(expr: ir.Table, con: object | None, *, own_backend: bool) -> pd.DataFrame:
    """Run on ``con`` (else the expression's own backend, else in-memory DuckDB), by customer_id.

    Sorting the finished Arrow table is cheaper than an ``ORDER BY`` in the engine, which
    would carry every feature column through its sort.
    """
    if con is None and not own_backend:
        con = ibis.duckdb.connect()
    result = expr.to_pyarrow() if con is None else con.to_pyarrow(expr)
    result = result.take(pc.sort_indices(result, [("customer_id", "ascending")]))
    return result.to_pandas(split_blocks=True, self_destruct=True)


def build_features(
    orders: object,
    cutoff: object,
    *,
    con: object | None = None,
    core_only: bool = False,
    channel_values: Sequence[str] | None = None,
    category_values: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Features as of ``cutoff``, one row per customer with an order on or before it.

    Runs :func:`feature_expr` on ``con`` (an in-memory DuckDB when ``None`` and the
    orders are pandas or Arrow; an Ibis table runs on its own backend). The frame has
    ``customer_id`` first, is sorted by it, and holds only int64 and float64 features.
    """
    own_backend = isinstance(orders, ir.Table)
    if con is None and not own_backend:
        arrow = _arrow_orders(orders) if isinstance(orders, pd.DataFrame) else orders
        if isinstance(arrow, pa.Table) and _mix_resolved(arrow.column_names, channel_values, category_values):
            return _run_compiled(arrow, as_day(cutoff), core_only, channel_values, category_values)
    table = _as_table(orders)
    expr = feature_expr(
        table,
        cutoff,
        core_only=core_only,
        channel_values=channel_values,
        category_values=category_values,
    )
    return _execute(expr, con, own_backend=own_backend)


# Compiling the Ibis expression to SQL costs about 0.3 s whatever the data size, which is
# most of the time of scoring one customer online. With the mix values fixed, the SQL
# depends only on the input schema and the cutoff, so it is compiled once and reused; the
# result is cast to the expression's own schema, so it equals what Ibis returns.
_COMPILED_TABLE = "repurchase_orders"

# Opening a DuckDB database costs 10-20 ms, more than running the query on a few orders
# (online scoring). Small inputs therefore run on one database kept for the process,
# through a connection per thread (DuckDB connections are not shared across threads),
# with one DuckDB thread: a few hundred rows are one vector, so a second thread only adds
# scheduling (about 5 ms a query on 2 cores). Large inputs get a database of their own, as
# before, so their memory is released when they are done.
SMALL_INPUT_ROWS = 10_000
_small = threading.local()
_small_lock = threading.Lock()
_small_database = None


def _small_connection():
    """This thread's connection to the shared single-threaded DuckDB for small inputs."""
    global _small_database
    con = getattr(_small, "con", None)
    if con is None:
        import duckdb

        with _small_lock:
            if _small_database is None:
                _small_database = duckdb.connect(config={"threads": 1})
            con = _small.con = _small_database.cursor()
    return con


def _mix_resolved(columns: Sequence[str], channel_values, category_values) -> bool:
    return ("channel" not in columns or channel_values is not None) and (
        "category" not in columns or category_values is not None
    )


@functools.lru_cache(maxsize=32)
def _compiled_features(
    schema: pa.Schema, cutoff: dt.date, core_only: bool, channel_values: tuple | None, category_values: tuple | None
) -> tuple[str, pa.Schema]:
    table = _as_table(ibis.table(ibis.Schema.from_pyarrow(schema), name=_COMPILED_TABLE))
    expr = feature_expr(
        table,
        cutoff,
        core_only=core_only,
        channel_values=None if channel_values is None else list(channel_values),
        category_values=None if category_values is None else list(category_values),
    )
    return ibis.to_sql(expr, dialect="duckdb"), expr.schema().to_pyarrow()


def _run_compiled(arrow: pa.Table, cutoff: dt.date, core_only: bool, channel_values, category_values) -> pd.DataFrame:
    import duckdb

    sql, schema = _compiled_features(
        arrow.schema,
        cutoff,
        core_only,
        None if channel_values is None else tuple(channel_values),
        None if category_values is None else tuple(category_values),
    )
    small = arrow.num_rows <= SMALL_INPUT_ROWS
    con = _small_connection() if small else duckdb.connect()
    try:
        con.register(_COMPILED_TABLE, arrow)
        result = con.execute(sql).to_arrow_table()
    finally:
        if small:
            con.unregister(_COMPILED_TABLE)
        else:
            con.close()
    result = result.select(schema.names).cast(schema)
    result = result.take(pc.sort_indices(result, [("customer_id", "ascending")]))
    return result.to_pandas(split_blocks=True, self_destruct=True)


def build_labels(orders: object, cutoff: object, horizon_days: int, *, con: object | None = None) -> pd.DataFrame:
    """Labels over ``(cutoff, cutoff + horizon_days]`` for the customers present at the cutoff."""
    own_backend = isinstance(orders, ir.Table)
    expr = label_expr(_as_table(orders), cutoff, horizon_days)
    return _execute(expr, con, own_backend=own_backend)


def training_cutoffs(
    last_label_date: object,
    horizon_days: int,
    n_origins: int = 6,
    step_days: int = 30,
) -> list[dt.date]:
    """``n_origins`` cutoffs ``step_days`` apart, oldest first, whose labels are fully observed.

    The latest is ``last_label_date - horizon_days`` so that ``cutoff + H <= last_label_date``
    holds for every origin.
    """
    last = as_day(last_label_date, "last_label_date")
    if n_origins < 1 or step_days < 1:
        raise CutoffError("training_cutoffs: n_origins and step_days must be at least 1")
    latest = last - dt.timedelta(days=horizon_days)
    return [latest - dt.timedelta(days=step_days * k) for k in reversed(range(n_origins))]


def build_training_frame(
    orders: object,
    cutoffs: Iterable[object],
    horizon_days: int,
    *,
    con: object | None = None,
    channel_values: Sequence[str] | None = None,
    category_values: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Features and labels stacked over several cutoffs, with a ``cutoff`` column.

    Each origin goes through :func:`split_at`: features see only its past half, labels
    only its future half. The channel / category share columns are fixed once so every
    origin has the same columns: the values given, else the most frequent values on or
    before the latest cutoff.
    """
    own_backend = isinstance(orders, ir.Table)
    table = _as_table(orders)
    days = sorted({as_day(c) for c in cutoffs})
    if not days:
        raise CutoffError("build_training_frame: no cutoffs given")
    if channel_values is None or category_values is None:
        found = _top_values(until(table, days[-1]), ["channel", "category"])
        channel_values = found["channel"] if channel_values is None else channel_values
        category_values = found["category"] if category_values is None else category_values
    if con is None and not own_backend:
        con = ibis.duckdb.connect()

    frames = []
    for day in days:
        past, future = split_at(table, day, horizon_days)
        features = feature_expr(past, day, channel_values=channel_values, category_values=category_values)
        labels = _labels_from_future(features.select("customer_id"), future, day, horizon_days)
        frame = features.inner_join(labels, "customer_id")
        result = _execute(frame, con, own_backend=con is None)
        result.insert(1, "cutoff", pd.Timestamp(day).as_unit("ns"))
        frames.append(result)
    return pd.concat(frames, ignore_index=True)
