"""The order-log rules as Ibis expressions: one definition for DuckDB and Spark.

:mod:`features.orders` documents the rules (contract, lines and orders, returns, messy
exports); this module writes the ones that run in an engine, on a typed source (Parquet
columns that are already strings, numbers and timestamps), so that a log of millions of
lines is checked, cleaned and merged where it lies, without a pandas frame:

* :func:`contract_lines`: the contract columns (ids as trimmed text, missing quantity 1,
  missing category and channel ``"unknown"``, rows without an order id given ids of their
  own) and one boolean column per check of the contract;
* :func:`check_tallies`: per check, how many rows break it and the first of them, in one pass;
* :func:`duplicate_positions`: rows equal to an earlier row in every column of the source;
* :func:`merge_lines`: lines to orders, with the flags the summary counts.

Ordered aggregates (``argmax`` in Ibis, ``FIRST(... ORDER BY ...)`` in DuckDB) sort each
group; the category of an order's largest line and the channel of its first line are
taken with ``max_by``/``min_by`` instead, which both engines have as hash aggregates.
"""

from __future__ import annotations

from typing import Mapping

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir

from features.orders import EARLIEST_ORDER, LARGEST_VALUE, LATEST_ORDER, NET_ZERO, SYNTHETIC_ORDER_PREFIX

POSITION = "__repurchase_pos"  # 0-based row of the source (a name no export uses)

# (check, column, what, fix) in the order the loader tries them: the first broken one is named.
CHECKS: tuple[tuple[str, str, str, str], ...] = (
    ("blank_customer", "customer_id", "is empty", "every order needs a customer"),
    ("empty_ts", "order_ts", "is empty", "every order needs a date"),
    ("ts_out_of_range", "order_ts", "is out of range", "order dates must lie in the years 1900 to 2200"),
    ("empty_amount", "amount", "is empty", "every order needs a value"),
    ("infinite_amount", "amount", "is infinite", ""),
    ("large_amount", "amount", "is too large", f"values beyond {LARGEST_VALUE:g} are not orders"),
    ("infinite_quantity", "quantity", "is infinite", ""),
    ("large_quantity", "quantity", "is too large", f"values beyond {LARGEST_VALUE:g} are not orders"),
)


@ibis.udf.agg.builtin
def max_by(arg: str, key: float) -> str:  # DuckDB arg_max, Spark max_by
    """The value of ``arg`` on the row with the largest ``key``."""


@ibis.udf.agg.builtin(name="min_by")
def _min_by_ts(arg: str, key: dt.timestamp) -> str:
    """The value of ``arg`` on the row with the smallest ``key``."""


@ibis.udf.scalar.builtin(name="chr")
def _character(code: int) -> str:  # DuckDB and Spark alike; a NUL cannot be written inside a SQL literal
    """The character with this code point."""


def typed_source(kinds: Mapping[str, object], resolved: Mapping[str, str]) -> bool:
    """Whether the engine can check these columns itself: ids as text or integers, ``order_ts``
    a time zone-free timestamp or a date, numbers as integers or floats.

    Other sources (text dates and numbers, float ids, zoned timestamps, decimals) go through
    the loader's own parsers, whose rules the engine does not repeat.
    """
    for name, column in resolved.items():
        kind = kinds[column]
        if name == "order_ts":
            ok = kind.is_date() or (kind.is_timestamp() and kind.timezone is None)
        elif name in ("amount", "quantity"):
            ok = kind.is_integer() or kind.is_floating()
        else:
            ok = kind.is_string() or kind.is_integer()
        if not ok:
            return False
    return True


def _missing(column: ir.Value) -> ir.BooleanValue:
    return column.isnull() | column.isnan() if column.type().is_floating() else column.isnull()


def _too_large(column: ir.Value) -> ir.BooleanValue:
    return (column.abs() > LARGEST_VALUE).fill_null(False)


def contract_lines(raw: ir.Table, resolved: Mapping[str, str], trimmed: Mapping[str, str] | None = None) -> ir.Table:
    """The contract columns of a typed source (:func:`typed_source`), and a boolean column per check.

    ``raw`` must carry :data:`POSITION`; it is kept, and names rows without an order id.
    The check columns are named as in :data:`CHECKS`. ``trimmed`` names, per contract
    column, a column of ``raw`` that holds its text already trimmed (DuckDB trims a set of
    characters ten times slower than Arrow does), used as it is.
    """
    trimmed = trimmed or {}

    def _text(name: str) -> ir.StringValue:
        if name in trimmed:
            return raw[trimmed[name]]
        column = raw[resolved[name]]
        return (column if column.type().is_string() else column.cast("string")).strip()

    customer = _text("customer_id")
    ts = raw[resolved["order_ts"]]
    if ts.type().is_date():
        ts = ts.cast("timestamp")
    amount = raw[resolved["amount"]].cast("float64")
    columns: dict[str, ir.Value] = {POSITION: raw[POSITION], "customer_id": customer, "order_ts": ts, "amount": amount}
    checks: dict[str, ir.Value] = {
        "blank_customer": customer.isnull() | (customer == ""),
        "empty_ts": ts.isnull(),
        "ts_out_of_range": ((ts < ibis.literal(EARLIEST_ORDER.to_pydatetime())) | (ts >= ibis.literal(LATEST_ORDER.to_pydatetime()))).fill_null(False),
        "empty_amount": _missing(amount),
        "infinite_amount": amount.isinf().fill_null(False),
        "large_amount": _too_large(amount),
    }
    if "order_id" in resolved:
        order_id = _text("order_id")
        prefix = _character(ord(SYNTHETIC_ORDER_PREFIX[0])) + SYNTHETIC_ORDER_PREFIX[1:]
        synthetic = prefix + raw[POSITION].cast("string")
        columns["order_id"] = ibis.ifelse(order_id.isnull() | (order_id == ""), synthetic, order_id)
    if "quantity" in resolved:
        quantity = raw[resolved["quantity"]].cast("float64")
        checks["infinite_quantity"] = quantity.isinf().fill_null(False)
        checks["large_quantity"] = _too_large(quantity)
        columns["quantity"] = ibis.ifelse(_missing(quantity), 1.0, quantity)
    if "product_id" in resolved:
        columns["product_id"] = _text("product_id")
    for name in ("category", "channel"):
        if name in resolved:
            columns[name] = _text(name).fill_null("unknown")
    return raw.select(**columns, **checks)


def check_tallies(lines: ir.Table) -> ir.Table:
    """One row: ``rows``, ``first_ts`` and ``last_ts``, and per check ``<check>`` (rows breaking it) and
    ``<check>_first`` (the first such row); ``negative`` counts lines with a negative amount."""
    values: dict[str, ir.Value] = {
        "rows": lines.count(),
        "negative": (lines.amount < 0).fill_null(False).cast("int64").sum(),
        "first_ts": lines.order_ts.min(),
        "last_ts": lines.order_ts.max(),
    }
    for check, *_ in CHECKS:
        if check in lines.columns:
            values[check] = lines[check].cast("int64").sum()
            values[f"{check}_first"] = lines[POSITION].min(where=lines[check])
    return lines.aggregate(**values)


def first_broken(tallies: Mapping[str, object]) -> tuple[str, str, str, str, int] | None:
    """The first check (in :data:`CHECKS` order) some row breaks: ``(check, column, what, fix, rows)``."""
    for check, column, what, fix in CHECKS:
        if tallies.get(check):
            return check, column, what, fix, int(tallies[check])
    return None


def duplicate_positions(raw: ir.Table, ts: str, amount: str) -> ir.Table:
    """:data:`POSITION` of rows equal to an earlier row in every column of the source.

    Repeated rows share their time and amount, so only rows that share those with another
    row are compared in full: a cheap hash aggregate on two fixed-width columns first.
    """
    shared = raw.group_by([ts, amount]).aggregate(copies=ibis._.count()).filter(ibis._.copies > 1).drop("copies")
    candidates = raw.semi_join(shared, [ts, amount])
    everything = [c for c in raw.columns if not c.startswith(POSITION)]
    ranked = candidates.mutate(copy=ibis.row_number().over(group_by=everything, order_by=candidates[POSITION]))
    return ranked.filter(ranked.copy > 0).select(POSITION)


def merge_lines(lines: ir.Table, *, last_ts: bool = False) -> ir.Table:
    """Lines to orders by ``(customer_id, order_id)`` (rules in :mod:`features.orders`).

    One row per order: ``customer_id``, ``order_id``, ``order_ts`` (its earliest line),
    ``amount`` (net), ``quantity`` (summed), ``category`` (of its largest line), ``channel``
    (of its first line), where the lines have them; ``refunded`` (a return took it to zero
    or less: not an order) and ``purchased`` (it had a positive line); with ``last_ts``, its
    latest line's time too (a refunded order's lines still count in the log's span).
    """
    values: dict[str, ir.Value] = {"order_ts": lines.order_ts.min(), "amount": lines.amount.sum()}
    if "quantity" in lines.columns:
        values["quantity"] = lines.quantity.sum()
    if "category" in lines.columns:
        values["category"] = max_by(lines.category, lines.amount)
    if "channel" in lines.columns:
        values["channel"] = _min_by_ts(lines.channel, lines.order_ts)
    values["refunded"] = (lines.amount.min() < 0) & (lines.amount.sum() <= NET_ZERO * lines.amount.abs().sum())
    values["purchased"] = lines.amount.max() > 0
    if last_ts:
        values["last_ts"] = lines.order_ts.max()
    return lines.group_by(["customer_id", "order_id"]).aggregate(**values)


def per_customer_counts(orders: ir.Table) -> ir.Table:
    """Orders per customer: ``customer_id``, ``n``."""
    return orders.group_by("customer_id").aggregate(n=ibis._.count())


def heavy_customer_counts(orders: ir.Table, candidates: ir.Table, day_share: float) -> ir.Table:
    """Of the ``candidates`` (``customer_id``, ``n``: customers with many orders), those who
    ordered on more than ``day_share`` of the days from their first order to their last,
    most orders first."""
    theirs = orders.semi_join(candidates, "customer_id")
    day = theirs.order_ts.date()
    per = theirs.group_by("customer_id").aggregate(n=ibis._.count(), days=day.nunique(), first=day.min(),
                                                   last=day.max())
    span = per.last.delta(per.first, unit="day") + 1
    busy = per.filter(per.days.cast("float64") > day_share * span.cast("float64"))
    return busy.select("customer_id", "n").order_by([ibis.desc("n"), "customer_id"])

