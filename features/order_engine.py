"""An order log checked, cleaned and merged in DuckDB, from file to orders, without pandas.

:func:`features.orders.load_order_log` hands a typed Parquet source (see
:func:`features.order_rules.typed_source`) to :func:`load_typed`. The rules are those of
:mod:`features.orders`, written as Ibis expressions in :mod:`features.order_rules`; the
messages are the loader's, word for word, naming the first broken row the engine found.
The lines and orders stay in the engine: :meth:`EngineOrderLog.orders_table` is what the
feature pipeline runs on, and pandas frames (:attr:`~EngineOrderLog.orders`,
:attr:`~EngineOrderLog.lines`) are made only when a caller asks for them (training and
scoring on one machine, the API, tests).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from typing import Mapping

import numpy as np
import pandas as pd

from features.common.errors import InputError, OrderLogError
from features.orders import (
    _CREDIT_SQL,
    CONTRACT_COLUMNS,
    HEAVY_CUSTOMER_DAY_SHARE,
    HEAVY_CUSTOMER_ORDERS,
    OPTIONAL_COLUMNS,
    OUTLIER_ORDER_MULTIPLE,
    Cleaning,
    OrderLog,
    _fail_at,
    _resolve_columns,
    _Rows,
    _shown,
    arrow_result,
    duckdb_connection,
    parse_product_list,
    with_order_dtypes,
)

LINES, ORDERS, RAW = "repurchase_lines", "repurchase_orders", "repurchase_raw"


TEXT_COLUMNS = ("customer_id", "order_id", "product_id", "category", "channel")


def _is_text(kind) -> bool:
    """Arrow text of any layout (dictionary-encoded too)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


class _Names:
    """What :func:`features.orders._resolve_columns` reads of a frame: its column names."""

    def __init__(self, names):
        self.columns = list(names)


def load_typed(table, origin: str, column_map: Mapping[str, str], excluded: tuple[str, ...]) -> "EngineOrderLog | None":
    """Check, clean and merge a typed Arrow table in DuckDB; None when it is not typed.

    Raises :class:`OrderLogError` (or :class:`InputError` for ``--exclude-products`` on a
    log without ``product_id``) with the loader's messages.
    """
    import ibis
    import pyarrow as pa
    import pyarrow.compute as pc

    from features import order_rules as rules

    names = list(table.column_names)
    if len(set(names)) != len(names) or rules.POSITION in names or not all(names):
        return None  # twin or blank headers: the loader's own checks name them
    resolved = _resolve_columns(_Names(names), origin, column_map)
    schema = ibis.Schema.from_pyarrow(table.schema)
    if not rules.typed_source({c: schema[c] for c in resolved.values()}, resolved):
        return None
    if table.num_rows == 0:
        raise OrderLogError(f"{origin}: has a header but no rows")
    if excluded and "product_id" not in resolved:
        raise InputError(f"--exclude-products: {origin} has no 'product_id' column to match "
                         "(map yours with --map product_id=YOUR_COLUMN)")

    con = duckdb_connection()
    tables: dict = {}  # the Arrow tables the engine reads, kept alive while it may
    try:
        backend = ibis.duckdb.from_connection(con)
        source = table.append_column(rules.POSITION, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        trimmed = {}
        for name in TEXT_COLUMNS:
            if name in resolved and _is_text(table.schema.field(resolved[name]).type):
                trimmed[name] = f"{rules.POSITION}_{name}"
                column = table.column(resolved[name])
                if pa.types.is_dictionary(column.type):
                    column = column.cast(column.type.value_type)
                source = source.append_column(trimmed[name], pc.utf8_trim_whitespace(column))
        _register(con, tables, RAW, source)
        raw = backend.table(RAW)
        checked = rules.contract_lines(raw, resolved, trimmed)
        tallies = backend.to_pyarrow(rules.check_tallies(checked)).to_pylist()[0]
        broken = rules.first_broken(tallies)
        if broken is not None:
            check, column, what, fix, n = broken
            first = int(tallies[f"{check}_first"])
            if check in ("ts_out_of_range", "large_amount", "large_quantity"):
                value = table.column(resolved[column]).slice(first, 1).to_pandas().iloc[0]
                what = f"{_shown(value)} {what}"
            _fail_at(origin, column, first, n, _Rows(), what, fix)
        lines = checked.select(*[c for c in (rules.POSITION, *CONTRACT_COLUMNS) if c in checked.columns])
        has_order_id = "order_id" in resolved
        cleaning = Cleaning(ignored_columns=tuple(c for c in names if c not in resolved.values()))
        if has_order_id:
            repeated = backend.to_pyarrow(rules.duplicate_positions(raw, resolved["order_ts"], resolved["amount"]))
            if repeated.num_rows:
                cleaning = replace(cleaning, duplicate_rows=repeated.num_rows)
                _register(con, tables, "repurchase_repeated", repeated)
                lines = lines.anti_join(backend.table("repurchase_repeated"), rules.POSITION)
        # Lines stay a view over the file's table unless a rule below changes them: the merge
        # reads them once, and materialising 3 million lines would cost more than it saves.
        sql = backend.compile(lines)
        n_dropped = 0
        negative = bool(tallies["negative"])
        if excluded:
            sql, counts = _exclude_products(con, sql, excluded)
            cleaning = replace(cleaning, **counts)
            if counts["excluded_lines"] == tallies["rows"] - cleaning.duplicate_rows:
                raise OrderLogError(f"{origin}: no lines left after excluding products {', '.join(excluded)}")
        if negative and not has_order_id:
            n_dropped = con.execute(f"select count(*) from ({sql}) where amount < 0").fetchone()[0]
            sql = f"select * from ({sql}) where amount >= 0"
        con.execute(f"create temp view {LINES} as {sql}")
        if negative and has_order_id:
            counts = _net_credit_invoices(con, tables, "product_id" in resolved, "quantity" in resolved)
            cleaning = replace(cleaning, **counts)
        span = (tallies["first_ts"], tallies["last_ts"], tallies["rows"] - cleaning.duplicate_rows)
        if excluded or negative:  # the rules above dropped lines: their span is that of what is left
            span = con.execute(f"select min(order_ts), max(order_ts), count(*) from {LINES}").fetchone()
        if not span[2]:
            what = f"{n_dropped} returns (negative amounts)" if not has_order_id else "cancellations with nothing to cancel"
            raise OrderLogError(f"{origin}: no orders left after dropping {what}")
        merged = _merge(con, backend, tables, has_order_id)
    except BaseException:
        con.close()
        raise
    return EngineOrderLog(con, backend, tables, origin, has_order_id=has_order_id, n_returns_dropped=int(n_dropped),
                          cleaning=cleaning, merged=merged, span=span)


def _register(con, tables: dict, name: str, table) -> None:
    if name in tables:
        con.unregister(name)
    tables[name] = table
    con.register(name, table)


def _exclude_products(con, sql: str, excluded: tuple[str, ...]) -> tuple[str, dict]:
    """The lines without those of non-product ids (matched ignoring case and surrounding spaces), and the counts."""
    products = parse_product_list(excluded)
    wanted = "(" + ", ".join("'" + p.strip().upper().replace("'", "''") + "'" for p in products) + ")"
    key = "upper(trim(product_id))"
    found = con.execute(f"select {key} as key, count(*), sum(amount) from ({sql}) where {key} in {wanted} group by key"
                        ).fetchall()
    keys = {row[0] for row in found}
    counts = {
        "excluded_products": tuple(products),
        "products_not_found": tuple(p for p in products if p.strip().upper() not in keys),
        "excluded_lines": int(sum(row[1] for row in found)),
        "excluded_amount": float(sum(row[2] for row in found)),
    }
    return f"select * from ({sql}) where product_id is null or {key} not in {wanted}", counts


def _net_credit_invoices(con, tables: dict, has_product: bool, has_quantity: bool) -> dict:
    """:func:`features.orders.net_credit_invoices` where the lines lie: matched, moved and dropped by SQL."""
    from features.order_rules import POSITION

    product = "product_id" if has_product else "null::varchar as product_id"
    con.execute(f"create temp view lines as select {POSITION} as pos, customer_id, order_id, order_ts, amount, "
                f"{product} from {LINES}")
    _register(con, tables, "repurchase_credits", arrow_result(con, _CREDIT_SQL))
    con.execute("drop view lines")
    netted = "c.purchase is not null and (c.allocated > 0 or c.credit = 0)"
    row = con.execute(f"""
        select count(distinct (customer_id, credit_order)), count(*) filter (where {netted}),
               count(*) filter (where not ({netted})),
               coalesce(sum(case when {netted} then credit - allocated else credit end), 0.0)
        from repurchase_credits c
    """).fetchone()
    moved = {"order_id": f"case when {netted} then c.purchase else l.order_id end",
             "amount": f"case when {netted} then -c.allocated else l.amount end"}
    if has_quantity:
        moved["quantity"] = (f"case when {netted} then l.quantity * (case when c.credit > 0 "
                             "then c.allocated / c.credit else 1.0 end) else l.quantity end")
    names = [row[0] for row in con.execute(f"describe {LINES}").fetchall()]
    columns = ", ".join(f"{moved[c]} as {c}" if c in moved else f"l.{c}" for c in names)
    netted_lines = arrow_result(con, f"""
        select {columns} from {LINES} l left join repurchase_credits c on l.{POSITION} = c.pos
        where c.pos is null or ({netted}) order by l.{POSITION}
    """)
    con.execute(f"drop view {LINES}")
    _register(con, tables, LINES, netted_lines)
    con.unregister("repurchase_credits")
    del tables["repurchase_credits"]
    return {"credit_invoices": int(row[0]), "credit_lines_netted": int(row[1]), "credit_lines_dropped": int(row[2]),
            "credit_amount_dropped": float(row[3])}


def _merge(con, backend, tables: dict, has_order_id: bool) -> dict:
    """Lines to orders (refunded ones dropped), values above the outlier cap capped: the table
    :data:`ORDERS`, and the counts for the summary."""
    import pyarrow.compute as pc

    from features import order_rules as rules

    lines = backend.table(LINES)
    keep = [c for c in ("customer_id", "order_ts", "amount", "order_id", "quantity", "category", "channel")
            if c in lines.columns]
    n_reversed = 0
    if has_order_id:
        merged = arrow_result(con, backend.compile(rules.merge_lines(lines)))
        refunded = merged.column("refunded")
        n_reversed = pc.sum(pc.and_(refunded, merged.column("purchased"))).as_py() or 0
        orders = merged.select(keep)
        if pc.any(refunded).as_py():
            orders = orders.filter(pc.invert(refunded))
    else:
        orders = arrow_result(con, f"select {', '.join(keep)} from {LINES}")
    amounts = orders.column("amount")
    positive = amounts.filter(pc.greater(amounts, 0.0)).to_numpy()
    # numpy's median, so that the cap is the one the pandas path computes, to the last bit
    cap = float(OUTLIER_ORDER_MULTIPLE * np.median(positive)) if positive.size else float("inf")
    over = pc.greater(amounts, cap)
    n_over = pc.sum(over).as_py() or 0
    capped = 0.0
    if n_over:
        capped = float(pc.sum(pc.subtract(amounts.filter(over), cap)).as_py())
        orders = orders.set_column(orders.column_names.index("amount"), "amount", pc.min_element_wise(amounts, cap))
    _register(con, tables, ORDERS, orders)
    return {"orders_reversed": int(n_reversed), "outlier_orders": int(n_over), "outlier_cap": cap,
            "outlier_amount_capped": capped}


class EngineOrderLog(OrderLog):
    """An :class:`~features.orders.OrderLog` whose lines and orders live in DuckDB.

    Everything an :class:`OrderLog` offers works; :meth:`orders_table` is the orders as an
    Ibis table on the engine (what :func:`features.pipeline.build_features` runs on), and
    the pandas frames are made on first use.
    """

    def __init__(self, con, backend, tables: dict, source: str, *, has_order_id: bool, n_returns_dropped: int,
                 cleaning: Cleaning, merged: dict, span: tuple):
        self._con, self._backend, self._tables = con, backend, tables
        self.source, self.has_order_id = source, has_order_id
        self.n_returns_dropped, self.cleaning = n_returns_dropped, cleaning
        self._merge_counts = merged
        first, last, self._n_lines = span
        self._first, self._last = pd.Timestamp(first).normalize(), pd.Timestamp(last).normalize()

    def __repr__(self) -> str:
        return f"EngineOrderLog(source={self.source!r})"

    def _frame(self, sql: str) -> pd.DataFrame:
        return arrow_result(self._con, sql).to_pandas()

    @cached_property
    def lines(self) -> pd.DataFrame:  # type: ignore[override]
        from features.order_rules import POSITION

        frame = self._frame(f"select * exclude ({POSITION}) from {LINES} order by {POSITION}")
        frame["order_ts"] = frame["order_ts"].astype("datetime64[ns]")
        for name in TEXT_COLUMNS:
            if name in frame:
                frame[name] = frame[name].astype("str")
        return frame[[c for c in CONTRACT_COLUMNS if c in frame.columns]]

    @cached_property
    def _merged(self) -> tuple[pd.DataFrame, dict]:
        tie = ", order_id" if self.has_order_id else ""
        orders = with_order_dtypes(self._frame(f"select * from {ORDERS} order by customer_id, order_ts{tie}"))
        return orders, self._merge_counts

    def orders_table(self):
        """The orders as an Ibis table on the engine that holds them."""
        return self._backend.table(ORDERS)

    def orders_after(self, day) -> int:
        from features.timecut import after

        return int(after(self.orders_table(), day).count().to_pyarrow().as_py())

    @property
    def first_order_date(self) -> pd.Timestamp:
        return self._first

    @property
    def last_order_date(self) -> pd.Timestamp:
        return self._last

    def summary(self) -> dict:
        from features.order_rules import heavy_customer_counts, per_customer_counts

        import pyarrow.compute as pc

        orders = self._tables[ORDERS]
        n_orders, revenue = orders.num_rows, pc.sum(orders.column("amount")).as_py() or 0.0
        per_customer = self._backend.to_pyarrow(per_customer_counts(self.orders_table()))
        many = per_customer.filter(pc.greater_equal(per_customer.column("n"), HEAVY_CUSTOMER_ORDERS))
        heavy = []
        if many.num_rows:
            self._con.register("repurchase_many", many)
            heavy = self._backend.to_pyarrow(heavy_customer_counts(
                self.orders_table(), self._backend.table("repurchase_many"), HEAVY_CUSTOMER_DAY_SHARE)).to_pylist()
            self._con.unregister("repurchase_many")
        return self._summary(lines=self._n_lines, orders=n_orders, customers=per_customer.num_rows, revenue=revenue,
                             columns=self._columns, merged=self._merge_counts,
                             heavy={str(row["customer_id"]): int(row["n"]) for row in heavy})

    @cached_property
    def _columns(self) -> list[str]:
        return [row[0] for row in self._con.execute(f"describe {LINES}").fetchall()]

    def close(self) -> None:
        """Let the engine go (the pandas frames made so far stay usable)."""
        self._con.close()


__all__ = ["EngineOrderLog", "load_typed"]
