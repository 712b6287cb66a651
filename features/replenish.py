"""Point-in-time features per (customer, category): how each customer replenishes what they buy.

The unit is a *pair*: one customer and one category (or one product when the log has
``product_id`` but no ``category``). A pair's purchases are the days on which the customer
bought at least one line of the category, with the units bought that day summed
(``quantity``, 1 when the log has none). Everything "as of" a cutoff uses only lines with
``order_ts <= cutoff`` (day resolution, cut by :mod:`features.timecut`); labels use only the
days ``cutoff + 1 .. cutoff + H``.

Per pair (:func:`pair_expr`):

- ``n_purchases`` (purchase days), ``units_total``, ``last_units`` (units bought on the
  last purchase day), ``days_since_last``, ``tenure_days`` (days since the first);
- the pair's own gaps between consecutive purchase days: ``n_gaps``, ``gap_mean``,
  ``last_gap``; and the same gaps *per unit bought at the start of the gap*, on a log
  scale (``log_rate_sum``, ``log_rate_sq_sum``, ``log_rate_last``): two cartridges last
  twice as long as one, so a gap of 120 days after buying two is a 60-day cycle.

Per category (:func:`category_expr`), from every gap of every pair before the cutoff:
``category_gaps``, ``category_pairs`` and the raw gap quantiles ``category_gap_p10``,
``category_gap_p50``, ``category_gap_p90`` (the category's population cycle; its median
is the "category median gap" baseline).

:func:`build_pair_features` runs both on DuckDB and joins them; the shrinkage of a
pair's own cycle toward its category's is done in :mod:`training.replenish`. The
expressions use only portable Ibis operations and give the same numbers on PySpark
(tested in ``tests/test_spark.py``); ``repurchase replenish`` itself runs on DuckDB.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa

from features.common.errors import InputError
from features.timecut import as_day, between, until

PAIR_KEYS = ("customer_id", "category")
LINE_COLUMNS = ("customer_id", "order_ts", "quantity", "category", "product_id")


class NoCategoriesError(InputError):
    """The order log says nothing about what was bought: no category or product column."""


def pair_key_column(lines: pd.DataFrame) -> str:
    """``category`` when the log has real categories, else ``product_id``; a clear error when neither."""
    if "category" in lines.columns and (lines["category"].astype("str") != "unknown").any():
        return "category"
    if "product_id" in lines.columns and lines["product_id"].notna().any():
        return "product_id"
    raise NoCategoriesError(
        "orders: no 'category' or 'product_id' column with values; product-level replenishment needs "
        "one of them (map yours with --map category=YOUR_COLUMN)"
    )


def pair_lines(lines: pd.DataFrame) -> pa.Table:
    """The narrow Arrow table the pair expressions read: customer_id, order_ts, units, category."""
    key = pair_key_column(lines)
    units = lines["quantity"].astype(float) if "quantity" in lines.columns else pd.Series(1.0, index=lines.index)
    # A purchase of the category is a line that bought something: returns and cancellation
    # lines (negative amount or units) are not purchase days of it.
    keep = lines[key].notna() & (units > 0) & (lines["amount"] >= 0)
    frame = pd.DataFrame(
        {
            "customer_id": lines["customer_id"].astype("str"),
            "order_ts": lines["order_ts"],
            "units": units,
            "category": lines[key].astype("str"),
        }
    )[keep.to_numpy()]
    return pa.Table.from_pandas(frame, preserve_index=False)


def _past_days(lines: ir.Table, cutoff: dt.date) -> ir.Table:
    """Purchase days before the cutoff, one row per (customer, category, day) with units summed."""
    past = until(lines, cutoff)
    age = ibis.date(cutoff).delta(past.order_ts.date(), unit="day").cast("int32")
    days = past.select(customer_id=past.customer_id, category=past.category, age=age, units=past.units)
    days = days.group_by(["customer_id", "category", "age"]).agg(units=ibis._.units.sum())
    # Newest first within a pair: the next row is the purchase before, which started the gap.
    window = ibis.window(group_by=["customer_id", "category"], order_by="age")
    days = days.mutate(
        gap=(days.age.lead().over(window) - days.age).cast("float64"),
        gap_units=days.units.lead().over(window),
        newest=ibis.row_number().over(window) == 0,
    )
    rate = days.gap / ibis.greatest(days.gap_units, ibis.literal(1e-9))
    return days.mutate(log_rate=ibis.ifelse(days.gap_units > 0, rate.ln(), ibis.null("float64")))


def pair_expr(lines: ir.Table, cutoff: object) -> ir.Table:
    """One row per (customer, category) bought on or before ``cutoff``; see the module docstring."""
    return _pair_aggregates(_past_days(lines, as_day(cutoff)))


def category_expr(lines: ir.Table, cutoff: object) -> ir.Table:
    """One row per category: its gap count, pair count and raw gap quantiles before ``cutoff``."""
    return _category_aggregates(_past_days(lines, as_day(cutoff)))


def _pair_aggregates(days: ir.Table) -> ir.Table:
    return days.group_by(["customer_id", "category"]).agg(
        n_purchases=days.count(),
        units_total=days.units.sum(),
        last_units=days.units.max(where=days.newest),
        days_since_last=days.age.min(),
        tenure_days=days.age.max(),
        n_gaps=days.gap.count(),
        gap_mean=days.gap.mean(),
        last_gap=days.gap.max(where=days.newest),
        log_rate_n=days.log_rate.count(),
        log_rate_sum=days.log_rate.sum(),
        log_rate_sq_sum=(days.log_rate * days.log_rate).sum(),
        log_rate_last=days.log_rate.max(where=days.newest),
    )


def _category_aggregates(days: ir.Table) -> ir.Table:
    return days.group_by("category").agg(
        category_pairs=days.customer_id.nunique(where=days.newest),
        category_gaps=days.gap.count(),
        category_gap_p10=days.gap.quantile(0.1),
        category_gap_p50=days.gap.quantile(0.5),
        category_gap_p90=days.gap.quantile(0.9),
    )


def label_pairs_expr(lines: ir.Table, cutoff: object, horizon_days: int) -> ir.Table:
    """Days from ``cutoff`` to each pair's first purchase in ``(cutoff, cutoff + H]`` (pairs that bought only)."""
    day = as_day(cutoff)
    future = between(lines, day, horizon_days)
    after = future.order_ts.date().delta(ibis.date(day), unit="day").cast("int32")
    return future.mutate(after=after).group_by(["customer_id", "category"]).agg(label_days=ibis._.after.min())


def _run(con, expr: ir.Table) -> pd.DataFrame:
    result = con.to_pyarrow(expr)
    return result.to_pandas(split_blocks=True, self_destruct=True)


def build_pair_features(
    lines: pd.DataFrame | pa.Table, cutoff: object, *, horizon_days: int | None = None
) -> pd.DataFrame:
    """Pair features (and category columns) as of ``cutoff``, sorted by customer and category.

    With ``horizon_days`` the frame also has ``label_days`` (days to the next purchase of
    the category, 1..H, NaN when none within the horizon), computed from the future lines only.
    """
    table = lines if isinstance(lines, pa.Table) else pair_lines(lines)
    con = ibis.duckdb.connect()
    try:
        source = con.create_table("pair_lines", table, temp=True)
        # The log-sized part (purchase days and their window) is computed once for both aggregates.
        days = con.create_table("pair_days", _past_days(source, as_day(cutoff)), temp=True)
        pairs = _run(con, _pair_aggregates(days))
        categories = _run(con, _category_aggregates(days))
        if horizon_days is not None:
            labels = _run(con, label_pairs_expr(source, cutoff, horizon_days))
    finally:
        con.disconnect()
    frame = pairs.merge(categories, on="category", how="left")
    if horizon_days is not None:
        frame = frame.merge(labels, on=list(PAIR_KEYS), how="left")
        frame["label_days"] = frame["label_days"].astype(float)
    frame = frame.sort_values(list(PAIR_KEYS), kind="mergesort").reset_index(drop=True)
    for column in frame.columns:
        if column not in PAIR_KEYS:
            frame[column] = frame[column].astype(float)
    return frame


def build_pair_labels(lines: pd.DataFrame | pa.Table, cutoff: object, horizon_days: int) -> pd.DataFrame:
    """``label_days`` per (customer, category) that bought within ``(cutoff, cutoff + H]`` (future lines only)."""
    table = lines if isinstance(lines, pa.Table) else pair_lines(lines)
    con = ibis.duckdb.connect()
    try:
        labels = _run(con, label_pairs_expr(ibis.memtable(table), cutoff, horizon_days))
    finally:
        con.disconnect()
    return labels.astype({"label_days": float})
