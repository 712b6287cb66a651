"""The order log: loading, validation and the rules that turn lines into orders.

Sources
-------
``SRC`` is one of

* a built-in name: ``cdnow`` (23,570 customers) or ``cdnow-sample`` (2,357), read from the
  installed ``lifetimes`` package;
* a CSV file (``.csv``, ``.tsv``, ``.txt``, optionally ``.gz``): UTF-8 text with a header
  row; the delimiter (``,`` ``;`` tab or ``|``) is read off the header;
* a Parquet file (``.parquet``, ``.pq``) or a folder of Parquet files;
* a DuckDB table, written ``FILE.duckdb:TABLE``.

A Parquet source whose columns are typed (ids as text or integers, ``order_ts`` a
timestamp without zone or a date, numbers as numbers) is checked, cleaned and merged by
DuckDB where it lies (:mod:`features.order_engine`, the rules as Ibis expressions in
:mod:`features.order_rules`), with the same rules and messages; its orders reach the
feature pipeline as a table in the engine, and pandas frames are made only when asked
for. Other sources go through the pandas parsers below.

Contract
--------
Required columns: ``customer_id``, ``order_ts`` (a date or timestamp), ``amount`` (the
value of the order or line). Optional: ``order_id``, ``quantity``, ``product_id``,
``category``, ``channel``. Other names are mapped with ``--map
customer_id=cust,order_ts=date``; headers are matched ignoring case and surrounding
spaces, so two headers the log uses may not differ only in those (``customer_id`` and
``Customer_ID``): that is an error naming both, since either could be meant. Anything
that breaks the contract raises :class:`OrderLogError` with one line naming the source,
the column, the row (CSV: the line number in the file, header = line 1, counting blank
lines and line breaks inside quoted values; Parquet and DuckDB: the 1-based row) and the
fix.

Rules
-----
* **Lines and orders.** Rows sharing ``(customer_id, order_id)`` are lines of one order:
  its time is the earliest line's, its amount and quantity the sums, its channel the
  first line's and its category that of its largest line. Without ``order_id`` each row
  is one order.
* **Same-day orders** stay separate orders (they count in order counts and spend), but
  are one purchase *day* in the BTYD statistics, exactly as ``lifetimes`` counts them.
* **Returns.** A negative ``amount`` is a return. With ``order_id`` a negative line in
  an order that also has positive lines (a refund line) is netted into its order; an
  order whose net amount is zero or less was fully refunded and is dropped (it is not a
  purchase, nor a purchase day). "Zero" allows for rounding: a net within 1e-9 of the
  order's summed line values counts as zero. Without ``order_id`` a return cannot be
  matched to what it returns, so it is dropped and counted in
  :attr:`OrderLog.n_returns_dropped`. Zero amounts (free samples, fully discounted
  orders) are kept as orders.
* **Time zones.** Every timestamp keeps the wall-clock time written in it and its
  offset or zone is dropped: ``2024-01-01T23:30+08:00`` is 23:30 on 1 January, not
  15:30 UTC. The customer's (or shop's) calendar day is what counts, so an order at
  23:30 stays on its day. The rule holds row by row, so a log may mix offsets (summer
  and winter time, ``Z`` and ``+01:00``, shops in several zones) and zone-less values.
  DuckDB ``TIMESTAMPTZ`` values carry no zone of their own and are read in UTC.
* **Amounts and quantities** beyond 10^15 (either sign) are errors: no order is worth
  that, and sums of such values overflow.
* **Dates** must lie in the years 1900 to 2200; anything else (``0001-01-01``, a
  ``1677`` typo, ``9999-12-31`` placeholders) is an error naming the row. Words that
  name the moment of reading (``now``, ``today``) are not dates.
* Missing ``quantity`` is 1; missing ``category`` and ``channel`` are ``"unknown"``
  (:data:`OPTIONAL_DEFAULTS`). A model trained on a log with these columns scores a log
  without them with these values.

Messy exports
-------------
Real shop exports carry more than orders. Each rule below is applied when the log is
loaded, is counted in :meth:`OrderLog.summary` (and in the line every command prints
after loading), and none of them stops the job. They run in this order.

* **Extra columns** (``description``, ``country``, ``unit_price``, ...) are ignored and
  named once in the summary ("ignored columns: description, country, unit_price").
* **Exact duplicate rows.** With ``order_id``, a row equal to an earlier row in every
  column of the export (ignored columns too, and the timestamp and ``order_id``
  as written) is dropped and counted: exports and the scripts that join them repeat
  rows. Two genuinely identical lines in one order (the same product at the same price
  and time, written twice rather than as quantity 2) cannot be told from a repeat; they
  are rare (one pair in the 3.5 million lines of a 300,000-customer ``repurchase synth``
  log), and are merged too. Without ``order_id`` every row is an order, and two equal
  rows are two orders (with date-only timestamps, a customer can well buy the same thing
  twice on a day), so nothing is dropped.
* **Non-product lines** (postage, fees, bank charges, manual adjustments) sit among the
  products. ``exclude_products`` (``--exclude-products POST,DOT,M``) removes the lines
  whose ``product_id`` is one of those ids before anything else is counted; ids match
  ignoring case and surrounding spaces (``post`` removes ``POST``), since fee codes are
  typed by hand; ids given that no line has are named in the summary. Without the
  option such lines are ordinary lines: their value counts as spend of their order, and
  an order of fee lines only (a separate bank-charge invoice) is an order and a
  purchase day. The option needs a ``product_id`` column.
* **Cancellation (credit) invoices.** With ``order_id``, an order none of whose lines is
  positive and some negative (``C536379`` in the UCI Online Retail export, a few days
  after the order it cancels) is a cancellation of earlier purchases, not an order. Each
  of its lines is matched to the same customer's most recent purchase (a line with a
  positive amount) of the same ``product_id`` at or before the cancellation's time (of
  any product, when the log or the line has no ``product_id``; ties in time go to the
  larger ``order_id``), and netted into that order, up to the amount bought there: what
  earlier cancellations took from that purchase is subtracted first, quantity is credited
  in proportion. A cancellation with no earlier purchase to match, and the part beyond
  what was bought, are dropped and counted. An order cancelled in full nets to zero and
  is dropped as a refunded order is: it is neither an order nor a purchase day, and its
  cancellation is applied whatever cutoff the log is read at (a log is read as the books
  stand at export; at the daily run an order cancelled tomorrow still counts today).
* **Wholesale outliers.** Order values above :data:`OUTLIER_ORDER_MULTIPLE` (250) times
  the median order value of the log (orders after netting, the whole log) are kept as
  orders but capped at that value: one 1,000x wholesale order otherwise makes its
  customer's mean spend, Gamma-Gamma's expected order value and CLV a hundred times
  the customer's own. Clean logs are untouched: the largest order of CDNOW is 49.5x
  its median, of a 300,000-customer ``repurchase synth`` log 102x. Customers with 100
  or more orders who buy on more than half of the days from their first order to their
  last are named in the summary as possible wholesale accounts, and kept as they are:
  BG/NBD models a high purchase rate, and one such customer moves little (dropping the
  messy synth log's ``wholesale-01`` from 2,000 customers moves BG/NBD's ``r`` by 3%).
  CDNOW's busiest customers (217 orders) buy on a third of their days, none is named.
* **Timestamps with minutes** (``2024-03-01 14:07``) are read like any other timestamp;
  the calendar day is what the features count.
"""

from __future__ import annotations

import datetime as dt
import difflib
import gzip
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from features.common.errors import CutoffError, InputError, OrderLogError
from features.datasets import BUILTIN_SOURCES, load_cdnow

REQUIRED_COLUMNS = ("customer_id", "order_ts", "amount")
OPTIONAL_COLUMNS = ("order_id", "quantity", "product_id", "category", "channel")
CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
STRING_COLUMNS = ("customer_id", "order_id", "product_id", "category", "channel")
OPTIONAL_DEFAULTS = {"quantity": 1.0, "category": "unknown", "channel": "unknown"}

EARLIEST_ORDER = pd.Timestamp("1900-01-01")
LATEST_ORDER = pd.Timestamp("2201-01-01")  # exclusive: the year 2200 is the last allowed
LARGEST_VALUE = 1e15  # amounts and quantities beyond it are not orders, and their sums overflow

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
DUCKDB_SUFFIXES = (".duckdb", ".ddb", ".db")
DELIMITERS = (",", ";", "\t", "|")

_MAGIC = {
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "gzip-compressed",
    b"PK\x03\x04": "a zip archive (an Excel workbook?)",
    b"SQLite format 3": "an SQLite database",
    b"\xd0\xcf\x11\xe0": "an old Excel/Office file",
    b"\xff\xfe": "UTF-16 text",
    b"\xfe\xff": "UTF-16 text",
}


OUTLIER_ORDER_MULTIPLE = 250.0  # orders worth more than this many median orders are capped there
HEAVY_CUSTOMER_ORDERS = 100  # customers with this many orders, buying on more than
HEAVY_CUSTOMER_DAY_SHARE = 0.5  # this share of the days of their span, are named in the summary
NET_ZERO = 1e-9  # a net order value within this share of its summed line values is zero (rounding)
SYNTHETIC_ORDER_PREFIX = "\x00row"  # ids no real order can have, for rows without one


@dataclass(frozen=True)
class Cleaning:
    """What loading removed or changed in a messy export (module docstring, "Messy exports").

    Attributes
    ----------
    ignored_columns : tuple of str
        Columns of the source that are not order-log columns.
    duplicate_rows : int
        Rows equal to an earlier row in every column, dropped.
    excluded_products, products_not_found : tuple of str
        The product ids to exclude as given, and those no line has.
    excluded_lines : int
        Lines of excluded products, removed (after duplicates).
    excluded_amount : float
        Their summed amount.
    credit_invoices : int
        Orders that only cancel (no positive line, some negative).
    credit_lines_netted : int
        Their lines netted into an earlier purchase of the customer.
    credit_lines_dropped : int
        Their lines with nothing to cancel (no earlier purchase, or it was cancelled already), dropped.
    credit_amount_dropped : float
        Value cancelled beyond what was bought (unmatched lines and the excess of matched ones).
    """

    ignored_columns: tuple[str, ...] = ()
    duplicate_rows: int = 0
    excluded_products: tuple[str, ...] = ()
    products_not_found: tuple[str, ...] = ()
    excluded_lines: int = 0
    excluded_amount: float = 0.0
    credit_invoices: int = 0
    credit_lines_netted: int = 0
    credit_lines_dropped: int = 0
    credit_amount_dropped: float = 0.0


@dataclass
class OrderLog:
    """A validated order log: its lines, and the orders they make up.

    Attributes
    ----------
    lines : pandas.DataFrame
        One row per valid line, contract columns only, canonical dtypes; as loaded, after
        the rules for messy exports (duplicates dropped, excluded products removed,
        cancellation lines moved into the orders they cancel).
    source : str
        Where it came from, for messages.
    n_returns_dropped : int
        Return rows that could not be matched to an order and were dropped.
    cleaning : Cleaning or None
        What loading did to a messy export; None for a log built from lines directly, whose
        cancellation invoices are then netted when the orders are merged.
    """

    lines: pd.DataFrame
    source: str
    n_returns_dropped: int = 0
    has_order_id: bool = field(default=False)
    cleaning: Cleaning | None = None

    @cached_property
    def _merged(self) -> tuple[pd.DataFrame, dict]:
        orders, n_reversed = _merge_order_lines(self.lines, self.has_order_id, net_credits=self.cleaning is None)
        orders, capped = cap_outlier_orders(orders)
        return orders, {"orders_reversed": n_reversed, **capped}

    @property
    def orders(self) -> pd.DataFrame:
        """One row per order (lines merged, returns netted, outlier values capped), sorted by customer and time."""
        return self._merged[0]

    @cached_property
    def purchase_lines(self) -> pd.DataFrame:
        """The lines that are purchases, for product-level replenishment.

        Negative lines (returns, netted cancellations) are not purchases, nor are the lines
        of what they took back in full: an order cancelled or refunded in full, or a product
        (category, without ``product_id``) whose lines in an order net to zero. The lines
        themselves when nothing was taken back.
        """
        lines = self.lines
        if not (lines["amount"].to_numpy() < 0).any():
            return lines
        if "order_id" not in lines.columns:
            return lines.loc[lines["amount"].to_numpy() >= 0].reset_index(drop=True)
        import pyarrow as pa

        item = next((c for c in ("product_id", "category") if c in lines.columns), None)
        table = _arrow_table(lines, ("customer_id", "order_id", "amount", *([item] if item else [])))
        table = table.append_column("pos", pa.array(np.arange(len(lines), dtype=np.int64)))
        if item is None:
            table = table.append_column("item", pa.nulls(len(lines), pa.string()))
        elif item != "item":
            table = table.rename_columns([("item" if c == item else c) for c in table.column_names])
        gone = _query(f"""
            with touched as (
                select l.pos, l.customer_id, l.order_id, l.item, l.amount from lines l
                semi join (select distinct customer_id, order_id from lines where amount < 0) t
                    on l.customer_id = t.customer_id and l.order_id = t.order_id
            ),
            nets as (
                select pos, amount,
                       sum(amount) over (partition by customer_id, order_id, item)
                           <= {NET_ZERO} * sum(abs(amount)) over (partition by customer_id, order_id, item) as item_gone,
                       sum(amount) over (partition by customer_id, order_id)
                           <= {NET_ZERO} * sum(abs(amount)) over (partition by customer_id, order_id) as order_gone
                from touched
            )
            select pos from nets where amount < 0 or item_gone or order_gone
        """, lines=table)
        keep = np.ones(len(lines), dtype=bool)
        keep[gone["pos"].to_numpy(dtype=np.int64)] = False
        return lines.loc[keep].reset_index(drop=True)

    def orders_table(self) -> pd.DataFrame:
        """The orders in the form the feature pipeline runs on best: here the frame; an
        engine-held log (:class:`features.order_engine.EngineOrderLog`) gives its Ibis table."""
        return self.orders

    def orders_after(self, day) -> int:
        """How many orders lie after the as-of ``day`` (they are ignored)."""
        from features.timecut import after

        return len(after(self.orders, day))

    @property
    def first_order_date(self) -> pd.Timestamp:
        return self.lines["order_ts"].min().normalize()

    @property
    def last_order_date(self) -> pd.Timestamp:
        return self.lines["order_ts"].max().normalize()

    def summary(self) -> dict:
        """Counts and span, and what the rules for messy exports did, for a short printout."""
        orders, merged = self._merged
        per_customer = orders["customer_id"].value_counts()
        heavy = heavy_customers(orders, per_customer)
        return self._summary(lines=len(self.lines), orders=len(orders), customers=int(len(per_customer)),
                             revenue=float(orders["amount"].sum()), columns=self.lines.columns, merged=merged,
                             heavy={str(k): int(v) for k, v in heavy.items()})

    def _summary(self, *, lines: int, orders: int, customers: int, revenue: float, columns, merged: Mapping,
                 heavy: dict[str, int]) -> dict:
        """The summary's dict from the counts each engine computes its own way (see :meth:`summary`)."""
        cleaning = self.cleaning or Cleaning()
        return {
            "source": self.source,
            "lines": int(lines),
            "orders": int(orders),
            "customers": int(customers),
            "first_order": self.first_order_date.date().isoformat(),
            "last_order": self.last_order_date.date().isoformat(),
            "revenue": float(revenue),
            "returns_dropped": self.n_returns_dropped,
            "columns": [c for c in OPTIONAL_COLUMNS if c in columns],
            "ignored_columns": list(cleaning.ignored_columns),
            "duplicate_rows_dropped": cleaning.duplicate_rows,
            "excluded_products": list(cleaning.excluded_products),
            "products_not_found": list(cleaning.products_not_found),
            "excluded_lines": cleaning.excluded_lines,
            "excluded_amount": cleaning.excluded_amount,
            "credit_invoices": cleaning.credit_invoices,
            "credit_lines_netted": cleaning.credit_lines_netted,
            "credit_lines_dropped": cleaning.credit_lines_dropped,
            "credit_amount_dropped": cleaning.credit_amount_dropped,
            "orders_reversed": merged["orders_reversed"],
            "outlier_orders": merged["outlier_orders"],
            "outlier_cap": merged["outlier_cap"],
            "outlier_amount_capped": merged["outlier_amount_capped"],
            "heavy_customers": heavy,
        }

    def describe(self, lang=None) -> str:
        """The summary as one line: span and size, then each rule that changed something (``lang``: see
        :func:`describe_summary`)."""
        return describe_summary(self.summary(), lang)


class _PlainEnglish:
    """The words and numbers of :func:`describe_summary` when no language is given: English as written.

    The layer below ``training`` cannot import ``training.i18n``; callers pass its ``Language`` to
    be read in another language, and this says the same as its English one.
    """

    def gettext(self, message: str) -> str:
        return message

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return singular if n == 1 else plural

    def count(self, value) -> str:
        return f"{value:,.0f}"

    def decimal(self, value, decimals: int = 3) -> str:
        return f"{value:,.{decimals}f}"

    def date(self, value: dt.date) -> str:
        return value.isoformat()


def describe_summary(s: Mapping, lang=None) -> str:
    """An order-log summary (:meth:`OrderLog.summary`) as one line: span and size, then each
    rule for messy exports that changed something, e.g. "ignored columns: description".

    ``lang`` says it: an object with ``gettext``, ``ngettext``, ``count``, ``decimal`` and ``date``
    (a ``training.i18n.Language``); plain English when None.
    """
    lang = lang or _PlainEnglish()
    _ = lang.gettext
    comma = _(", ")

    def ngettext(singular: str, plural: str, n: int) -> str:  # so named, pybabel extracts the calls' messages
        return lang.ngettext(singular, plural, n).format(n=lang.count(n))

    def shown(values) -> str:
        return comma.join(_shown(v, quote=False) for v in values)

    parts = [_("order log {source}: {customers}, {orders}, {first} to {last}, revenue {revenue}").format(
        source=s["source"], customers=ngettext("{n} customer", "{n} customers", s["customers"]),
        orders=ngettext("{n} order", "{n} orders", s["orders"]), first=lang.date(dt.date.fromisoformat(s["first_order"])),
        last=lang.date(dt.date.fromisoformat(s["last_order"])), revenue=lang.decimal(s["revenue"], 2))]
    if s["duplicate_rows_dropped"]:
        parts.append(_("dropped {rows}").format(
            rows=ngettext("{n} duplicate row", "{n} duplicate rows", s["duplicate_rows_dropped"])))
    if s["excluded_products"]:
        found = [p for p in s["excluded_products"] if p not in s["products_not_found"]]
        text = _("excluded {lines} of {products}").format(lines=ngettext("{n} line", "{n} lines", s["excluded_lines"]),
                                                          products=shown(found) or _("no product"))
        if s["excluded_lines"]:
            text += _(" (amount {amount})").format(amount=lang.decimal(s["excluded_amount"], 2))
        if s["products_not_found"]:
            text += _(", no line has product {products}").format(products=shown(s["products_not_found"]))
        parts.append(text)
    if s["returns_dropped"]:
        parts.append(_("dropped {returns} without order_id").format(
            returns=ngettext("{n} return", "{n} returns", s["returns_dropped"])))
    if s["credit_invoices"]:
        text = _("{invoices}: {lines} netted into earlier orders").format(
            invoices=ngettext("{n} cancellation invoice", "{n} cancellation invoices", s["credit_invoices"]),
            lines=ngettext("{n} line", "{n} lines", s["credit_lines_netted"]))
        if s["credit_lines_dropped"] or s["credit_amount_dropped"] > 0:
            text += _(", {lines} with nothing to cancel dropped (amount beyond what was bought {amount})").format(
                lines=ngettext("{n} line", "{n} lines", s["credit_lines_dropped"]),
                amount=lang.decimal(s["credit_amount_dropped"], 2))
        parts.append(text)
    if s["orders_reversed"]:
        parts.append(_("{orders} cancelled or refunded in full dropped").format(
            orders=ngettext("{n} order", "{n} orders", s["orders_reversed"])))
    if s["outlier_orders"]:
        parts.append(_("{orders} above {multiple}x the median order value capped at {cap}").format(
            orders=ngettext("{n} order", "{n} orders", s["outlier_orders"]), multiple=f"{OUTLIER_ORDER_MULTIPLE:g}",
            cap=lang.decimal(s["outlier_cap"], 2)))
    if s.get("heavy_customers"):
        heavy = list(s["heavy_customers"].items())
        named = comma.join(_("{customer} ({n} orders)").format(customer=_shown(who, quote=False), n=lang.count(n))
                           for who, n in heavy[:3])
        more = _(" and {n} more").format(n=lang.count(len(heavy) - 3)) if len(heavy) > 3 else ""
        parts.append(_("possible wholesale customers (kept): {customers}{more}").format(customers=named, more=more))
    if s["ignored_columns"]:
        parts.append(_("ignored columns: {columns}").format(
            columns=comma.join(_shown(c, quote=False) if c else _("(no name)") for c in s["ignored_columns"])))
    return _("; ").join(parts)


def parse_column_map(text: str | None) -> dict[str, str]:
    """Parse ``--map customer_id=cust,order_ts=date`` into ``{"cust": "customer_id", ...}``.

    Returns a mapping from the user's column names to contract names.
    """
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        contract, sep, yours = item.partition("=")
        contract, yours = contract.strip(), yours.strip()
        if not sep or not contract or not yours:
            raise InputError(f"--map: '{item}' must look like contract_name=your_column (e.g. order_ts=date)")
        if contract not in CONTRACT_COLUMNS:
            raise InputError(
                f"--map: '{contract}' is not an order-log column; map onto one of {', '.join(CONTRACT_COLUMNS)}"
            )
        if yours in mapping:
            raise InputError(f"--map: column '{yours}' is mapped twice")
        mapping[yours] = contract
    return mapping


def parse_product_list(products: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--exclude-products POST,DOT,M`` as ``("POST", "DOT", "M")``; empty for None or no ids.

    Ids are separated by commas and stripped of surrounding spaces (``BANK CHARGES`` keeps
    its inner space); an id cannot contain a comma. Text without an id is an error.
    """
    if products is None or (not isinstance(products, str) and not len(products)):
        return ()
    items = products.split(",") if isinstance(products, str) else [str(p) for p in products]
    ids = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not ids:
        raise InputError("--exclude-products: give product ids separated by commas, e.g. POST,DOT,M")
    return ids


def load_order_log(
    source: str | os.PathLike,
    column_map: Mapping[str, str] | str | None = None,
    *,
    exclude_products: str | Sequence[str] | None = None,
) -> OrderLog:
    """Load and validate an order log from any supported source (see module docstring).

    Parameters
    ----------
    source : str or path
        A built-in name, a CSV or Parquet path, or ``FILE.duckdb:TABLE``.
    column_map : mapping or str, optional
        Your column names onto contract names (``--map``).
    exclude_products : str or sequence of str, optional
        Product ids whose lines are removed (``--exclude-products POST,DOT,M``); needs a
        ``product_id`` column.
    """
    if isinstance(column_map, str) or column_map is None:
        column_map = parse_column_map(column_map)
    excluded = parse_product_list(exclude_products)
    source = str(source)
    if source in BUILTIN_SOURCES:
        if column_map:
            raise InputError(f"--map: the built-in log '{source}' needs no mapping")
        lines = load_cdnow(source)
        return _finish(lines, source, has_order_id=False, cleaning=Cleaning(), exclude_products=excluded)
    raw, origin, rows = _read_source(source, arrow=True)
    if not isinstance(raw, pd.DataFrame):  # Parquet, as Arrow: checked and merged by the engine when typed
        log = _load_in_engine(raw, origin, column_map, excluded)
        if log is not None:
            return log
        raw = _arrow_to_frame(raw)
    lines = validate_order_lines(raw, origin, column_map, rows=rows)
    resolved = _resolve_columns(raw, origin, column_map)
    cleaning = Cleaning(ignored_columns=tuple(str(c) for c in raw.columns if str(c) not in resolved.values()))
    has_order_id = "order_id" in lines.columns
    if has_order_id:
        repeated = _duplicate_rows(raw, lines)
        if repeated.any():
            lines = lines.loc[~repeated].reset_index(drop=True)
            cleaning = replace(cleaning, duplicate_rows=int(repeated.sum()))
    del raw
    return _finish(lines, origin, has_order_id=has_order_id, cleaning=cleaning, exclude_products=excluded)


def _load_in_engine(table, origin: str, column_map: Mapping[str, str], excluded: tuple[str, ...]) -> "OrderLog | None":
    """:func:`features.order_engine.load_typed` (None when the source needs the loader's own parsers)."""
    from features.order_engine import load_typed

    return load_typed(table, origin, column_map, excluded)


def _arrow_to_frame(table) -> pd.DataFrame:
    frame = table.to_pandas()
    frame.columns = list(table.column_names)
    return frame


def _duplicate_rows(raw: pd.DataFrame, lines: pd.DataFrame) -> np.ndarray:
    """Rows of ``raw`` equal to an earlier row in every column, as read.

    Only rows that share their time and amount (read from ``lines``, the validated rows in
    the same order) with another row are compared in full: that is cheap, and repeated
    rows always share them.
    """
    stamp = lines["order_ts"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    value = lines["amount"].to_numpy(dtype=np.float64).view(np.int64)
    shared = pd.Series(stamp * np.int64(1_000_003) ^ value).duplicated(keep=False).to_numpy()
    repeated = np.zeros(len(raw), dtype=bool)
    if shared.any():
        candidates = raw.loc[shared]
        try:
            repeated[shared] = candidates.duplicated(keep="first").to_numpy(dtype=bool)
        except TypeError:  # unhashable cells (lists, maps in Parquet): compare their text
            repeated[shared] = candidates.astype("str").duplicated(keep="first").to_numpy(dtype=bool)
    return repeated


def _finish(lines: pd.DataFrame, origin: str, *, has_order_id: bool, cleaning: Cleaning,
            exclude_products: tuple[str, ...] = ()) -> OrderLog:
    if exclude_products:
        lines, counts = exclude_product_lines(lines, exclude_products, origin)
        cleaning = replace(cleaning, **counts)
        if lines.empty:
            raise OrderLogError(f"{origin}: no lines left after excluding products {', '.join(exclude_products)}")
    n_dropped = 0
    if not has_order_id:
        returns = lines["amount"] < 0
        n_dropped = int(returns.sum())
        if n_dropped:
            lines = lines.loc[~returns].reset_index(drop=True)
    else:
        lines, counts = net_credit_invoices(lines)
        cleaning = replace(cleaning, **counts)
    if lines.empty:
        what = f"{n_dropped} returns (negative amounts)" if not has_order_id else "cancellations with nothing to cancel"
        raise OrderLogError(f"{origin}: no orders left after dropping {what}")
    return OrderLog(lines=lines, source=origin, n_returns_dropped=n_dropped, has_order_id=has_order_id, cleaning=cleaning)


def exclude_product_lines(lines: pd.DataFrame, products: Sequence[str], origin: str = "orders") -> tuple[pd.DataFrame, dict]:
    """Remove the lines of non-product ids (postage, fees), matched ignoring case and surrounding spaces.

    Returns the remaining lines and the counts for :class:`Cleaning`.
    """
    products = parse_product_list(products)
    if "product_id" not in lines.columns:
        raise InputError(f"--exclude-products: {origin} has no 'product_id' column to match "
                         "(map yours with --map product_id=YOUR_COLUMN)")
    wanted = {p.strip().upper() for p in products}
    present = pd.Series(lines["product_id"].dropna().unique(), dtype="str")
    keys = present.str.strip().str.upper()
    matched = present[keys.isin(wanted).to_numpy()]
    out = lines["product_id"].isin(matched).to_numpy()
    found = set(keys[keys.isin(wanted).to_numpy()])
    counts = {
        "excluded_products": tuple(products),
        "products_not_found": tuple(p for p in products if p.strip().upper() not in found),
        "excluded_lines": int(out.sum()),
        "excluded_amount": float(lines["amount"].to_numpy()[out].sum()),
    }
    if out.any():
        lines = lines.loc[~out].reset_index(drop=True)
    return lines, counts


# --------------------------------------------------------------------------- reading


class _Rows:
    """How messages name a row of the raw frame: "line 17" of a CSV file, "row 3" of a table.

    ``line_of`` (CSV) gives the file line a row starts on; it is called only when a
    message needs it, since it reads the file again.
    """

    def __init__(self, word: str = "row", base: int = 1, line_of: Callable[[int], int | None] | None = None):
        self.word, self.base, self._line_of = word, base, line_of

    def name(self, position: int) -> str:
        number = self._line_of(position) if self._line_of is not None else None
        return f"{self.word} {position + self.base if number is None else number}"


def _read_source(source: str, *, arrow: bool = False) -> tuple[pd.DataFrame, str, _Rows]:
    """Read a source into a raw frame; returns (frame, origin, how its rows are named).

    With ``arrow``, Parquet comes back as a pyarrow Table (columns named as in the frame),
    for the engine to check where it lies.
    """
    table = None
    path_text = source
    match = re.match(r"^(.*\.(?:duckdb|ddb|db)):([A-Za-z_][\w.]*)$", source)
    if match:
        path_text, table = match.group(1), match.group(2)
    path = Path(path_text)
    origin = path.name or path_text
    if not path.exists():
        hint = f" (built-in logs: {', '.join(BUILTIN_SOURCES)})" if os.sep not in path_text else ""
        raise OrderLogError(f"{_shown(path_text, quote=False)}: no such file or folder{hint}")
    origin = _shown(origin, quote=False)
    suffixes = [s.lower() for s in path.suffixes]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".gz" and len(suffixes) >= 2:
        suffix = suffixes[-2]
    try:
        if path.is_dir():
            _check_parquet_folder(path, origin)
            return _read_parquet(path, origin, arrow=arrow), origin, _Rows()
        if not path.is_file():
            raise OrderLogError(f"{origin}: is not a regular file (a device or a pipe?); give a file, a folder of Parquet files or a built-in name")
        if path.stat().st_size == 0:
            raise OrderLogError(f"{origin}: the file is empty (0 bytes)")
        if suffix in DUCKDB_SUFFIXES:
            if table is None:
                raise OrderLogError(f"{origin}: name the table too, as {path_text}:TABLE")
            return _read_duckdb(path, table, origin), f"{origin}:{table}", _Rows()
        if suffix in PARQUET_SUFFIXES:
            return _read_parquet(path, origin, arrow=arrow), origin, _Rows()
        if suffix in CSV_SUFFIXES:
            frame, rows = _read_csv(path, origin)
            return frame, origin, rows
    except OSError as exc:  # permissions, a file that vanished or cannot be read
        raise OrderLogError(f"{origin}: cannot be read ({exc.strerror or exc})") from None
    raise OrderLogError(
        f"{origin}: unsupported file type '{suffix or 'none'}'; use .csv, .parquet, or a DuckDB table as FILE.duckdb:TABLE"
    )


def _check_parquet_folder(path: Path, origin: str) -> None:
    """A folder is read as a Parquet data set; say so when it holds something else."""
    files = [f for f in path.rglob("*") if f.is_file() and not f.name.startswith((".", "_"))]
    if not files:
        raise OrderLogError(f"{origin}: is an empty folder; --orders takes a file, a folder of Parquet files, "
                            "FILE.duckdb:TABLE or a built-in name")
    if not any(f.suffix.lower() in PARQUET_SUFFIXES for f in files):
        raise OrderLogError(f"{origin}: is a folder without Parquet files (it holds e.g. "
                            f"{_shown(files[0].name)}); give the file itself, or a folder of .parquet files")


def _sniff_binary(head: bytes) -> str | None:
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    if b"\x00" in head[:4096]:
        return "binary, not text"
    return None


def _unreadable(origin: str, exc: BaseException, compressed: bool) -> OrderLogError:
    """The one-line error for a file that breaks off or cannot be decompressed."""
    if compressed and isinstance(exc, EOFError):
        return OrderLogError(f"{origin}: the gzip file is cut short (it ends before its end marker: a partial "
                             "download or copy?); download or export it again")
    if compressed and isinstance(exc, (zlib.error, gzip.BadGzipFile)) and "Not a gzipped file" not in str(exc):
        return OrderLogError(f"{origin}: the gzip data is corrupt ({_shown(exc, quote=False, limit=120)}); download or export it again")
    if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
        return OrderLogError(f"{origin}: cannot be read ({exc.strerror or exc})")
    return OrderLogError(f"{origin}: cannot be read as {'gzip' if compressed else 'a file'} ({_shown(exc, quote=False, limit=120)})")


def _clean_header(name) -> str:
    return str(name).strip().lstrip("\ufeff").strip()


def _read_csv(path: Path, origin: str) -> tuple[pd.DataFrame, _Rows]:
    compressed = path.suffix.lower() == ".gz"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(65536)
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(origin, exc, compressed) from None
    what = _sniff_binary(head)
    if what == "UTF-16 text":
        raise OrderLogError(f"{origin}: is UTF-16 text; save the file as UTF-8")
    if what is not None:
        hint = {"a Parquet file": "rename it to .parquet", "gzip-compressed": "name it .csv.gz"}.get(what, "export it as CSV")
        raise OrderLogError(f"{origin}: is {what}, not CSV text; {hint}")
    if not head.strip():
        raise OrderLogError(f"{origin}: the file has no header and no rows")
    first_line = next(line for line in head.splitlines() if line.strip())
    first_line = first_line.decode("utf-8", errors="replace").lstrip("\ufeff")
    sep = max(DELIMITERS, key=first_line.count)
    if first_line.count(sep) == 0:
        sep = ","
    options = dict(sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True,
                   index_col=False)  # never take the first column as an index when rows are one field longer
    rows = _Rows("line", 2, _CsvLines(path, compressed, sep))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(path, na_values=[""], **options)
        header = pd.read_csv(path, header=None, nrows=1, **options)
    except UnicodeDecodeError as exc:
        raise OrderLogError(f"{origin}: {_locate_bad_utf8(path, compressed, exc)}; save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise OrderLogError(f"{origin}: the file has no header and no rows") from None
    except pd.errors.ParserError as exc:
        raise _parser_error(origin, exc, sep) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(origin, exc, compressed) from None
    if any(issubclass(w.category, pd.errors.ParserWarning) and "Length of header" in str(w.message) for w in caught):
        raise OrderLogError(f"{origin}: {rows.name(0)} has more fields than the header ({frame.shape[1]}); "
                            f"quote values that contain '{sep}'")
    names = [_clean_header(c) for c in header.iloc[0]] if len(header) else []
    frame.columns = names if len(names) == frame.shape[1] else [_clean_header(c) for c in frame.columns]
    _check_one_column_header(frame, origin)
    _check_row_delimiters(frame, origin, sep, rows)
    return frame, rows


def _parser_error(origin: str, exc: pd.errors.ParserError, sep: str) -> OrderLogError:
    text = str(exc)
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if found:
        expected, line, saw = found.groups()
        return OrderLogError(
            f"{origin}: line {line} has {saw} fields but the header has {expected}; quote values that contain '{sep}'"
        )
    found = re.search(r"EOF inside string starting at row (\d+)", text)
    if found:
        return OrderLogError(f"{origin}: line {int(found.group(1)) + 1} opens a quoted value (\") that is never "
                             "closed; close the quote or remove it")
    return OrderLogError(f"{origin}: not readable as CSV ({_shown(text.strip().splitlines()[-1], quote=False, limit=120)})")


def _check_one_column_header(frame: pd.DataFrame, origin: str) -> None:
    """A header joined by another character ('customer_id:order_ts:amount') reads as one column."""
    if frame.shape[1] != 1:
        return
    name = str(frame.columns[0])
    inside = [c for c in REQUIRED_COLUMNS if c in name.lower()]
    if len(inside) >= 2:
        raise OrderLogError(
            f"{origin}: the header is one column {_shown(name)}; separate the columns with ',' ';' tab or '|'"
        )


class _CsvLines:
    """The file line each data row of a CSV file starts on, as pandas reads the rows.

    Row ``k`` is line ``k + 2`` only when the file has no blank lines and no line breaks
    inside quoted values; this reads the file (as far as needed) to count them.
    """

    def __init__(self, path: Path, compressed: bool, sep: str):
        self.path, self.compressed, self.sep = path, compressed, sep
        self._starts: list[int] | None = None
        self._complete = False

    def __call__(self, position: int) -> int | None:
        if self._starts is None or (position >= len(self._starts) and not self._complete):
            self._scan(position)
        return self._starts[position] if position < len(self._starts) else None

    def _scan(self, position: int) -> None:
        import csv

        self._starts, self._complete = [], False
        opener = gzip.open if self.compressed else open
        try:
            with opener(self.path, "rt", encoding="utf-8-sig", newline="") as handle:
                reader = csv.reader(handle, delimiter=self.sep, skipinitialspace=True)
                header_seen, previous = False, 0
                for record in reader:
                    start, previous = previous + 1, reader.line_num
                    if len(record) <= 1 and not "".join(record).strip():
                        continue  # pandas skips blank lines
                    if not header_seen:
                        header_seen = True
                        continue
                    self._starts.append(start)
                    if len(self._starts) > position:
                        return
                self._complete = True
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error):
            self._complete = True


def _check_row_delimiters(frame: pd.DataFrame, origin: str, sep: str, rows: _Rows) -> None:
    """A header split by one delimiter over rows split by another leaves all but the first column empty."""
    if frame.shape[1] < 2 or frame.empty:
        return
    rest_empty = frame.iloc[:, 1:].isna().all(axis=1)
    if not rest_empty.any():
        return
    position = int(np.flatnonzero(rest_empty.to_numpy())[0])
    value = str(frame.iat[position, 0])
    other = next((d for d in DELIMITERS if d != sep and d in value), None)
    if other is not None:
        shown = "tab" if other == "\t" else f"'{other}'"
        raise OrderLogError(
            f"{origin}: {rows.name(position)} is separated by {shown} but the header by "
            f"{'tab' if sep == chr(9) else repr(sep)}; use one delimiter throughout"
        )


def _locate_bad_utf8(path: Path, compressed: bool, exc: UnicodeDecodeError) -> str:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            for number, raw_line in enumerate(handle, start=1):
                try:
                    raw_line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    byte = raw_line[bad.start]
                    return f"line {number} is not UTF-8 text (byte 0x{byte:02x} at character {bad.start + 1})"
    except (OSError, EOFError, zlib.error):
        pass
    return f"is not UTF-8 text ({exc.reason})"


def _read_parquet(path: Path, origin: str, *, arrow: bool = False) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(4096)
        if not head.startswith(b"PAR1"):
            looks = "text (a CSV? rename it to .csv)" if _sniff_binary(head) is None else _sniff_binary(head)
            raise OrderLogError(f"{origin}: is not a Parquet file; it looks like {looks}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        if "Multiple matches for FieldRef" in str(exc) and path.is_file():
            _check_duplicate_names([_clean_header(n) for n in pq.read_schema(path).names], origin, {})
        raise OrderLogError(f"{origin}: cannot be read as Parquet ({_shown(str(exc).splitlines()[0], quote=False, limit=120)})") from None
    if arrow:
        return table.rename_columns([_clean_header(c) for c in table.column_names])
    frame = table.to_pandas()
    frame.columns = [_clean_header(c) for c in frame.columns]
    return frame


def _read_duckdb(path: Path, table: str, origin: str) -> pd.DataFrame:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise OrderLogError(f"{origin}: is not a DuckDB database ({_shown(str(exc).splitlines()[0], quote=False, limit=120)})") from None
    try:
        tables = [row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()]
        if table not in tables:
            raise OrderLogError(
                f"{origin}: has no table '{table}' (tables: {', '.join(sorted(tables)) or 'none'})"
            )
        try:
            frame = con.execute(f'select * from "{table}"').df()
        except duckdb.Error as exc:
            raise OrderLogError(f"{origin}: table '{table}' cannot be read ({_shown(str(exc).splitlines()[0], quote=False, limit=120)})") from None
    finally:
        con.close()
    frame.columns = [_clean_header(c) for c in frame.columns]
    return frame


# --------------------------------------------------------------------------- validation


def _shown(value, *, quote: bool = True, limit: int = 60) -> str:
    """A value from the data as it may appear in a one-line message: control characters
    (line breaks in quoted CSV values, escape codes) written as escapes, long values cut."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f"'{text}'" if quote else text


def _shown_columns(names: list[str]) -> str:
    shown = [_shown(n, quote=False) if n else "(no name)" for n in names[:12]]
    return ", ".join(shown) + (", ..." if len(names) > 12 else "")


def _check_duplicate_names(present: list[str], origin: str, column_map: Mapping[str, str]) -> None:
    """Refuse headers the log uses that are written twice, exactly or differing only in case or spaces."""
    groups: dict[str, list[str]] = {}
    for name in present:
        groups.setdefault(name.strip().lower(), []).append(name)
    # the names that will be looked up: --map's, and contract names that --map does not replace
    wanted = {yours.strip().lower() for yours in column_map}
    wanted |= {c for c in CONTRACT_COLUMNS if c not in column_map.values()}
    mapped = set(column_map)
    for key, names in groups.items():
        if len(names) < 2 or key not in wanted:
            continue
        exact = [n for n in names if n in mapped]
        if len(exact) == 1 and names.count(exact[0]) == 1:
            continue  # --map names one of them exactly
        first, second = names[0], names[1]
        if first == second:
            raise OrderLogError(f"{origin}: the header has two columns named {_shown(first)}; rename or drop one")
        pick = f", or choose one with --map {key}={_shown(second, quote=False)}" if key in CONTRACT_COLUMNS else ""
        raise OrderLogError(
            f"{origin}: the header has both {_shown(first)} and {_shown(second)}, which differ only in case or spaces; "
            f"rename or drop one{pick}"
        )


def _resolve_columns(frame, origin: str, column_map: Mapping[str, str]) -> dict[str, str]:
    """Map the frame's columns onto contract names: explicit --map first, then case-insensitive names."""
    present = [str(c) for c in frame.columns]
    _check_duplicate_names(present, origin, column_map)
    resolved: dict[str, str] = {}
    for yours, contract in column_map.items():
        if yours not in present:
            close = difflib.get_close_matches(yours, present, n=1)
            hint = f"; did you mean {_shown(close[0])}?" if close else f" (columns: {_shown_columns(present)})"
            raise OrderLogError(f"{origin}: --map {contract}={yours}: there is no column '{yours}'{hint}")
        resolved[contract] = yours
    by_lower = {c.strip().lower(): c for c in present}
    for contract in CONTRACT_COLUMNS:
        if contract not in resolved and contract in by_lower and by_lower[contract] not in resolved.values():
            resolved[contract] = by_lower[contract]
    missing = [c for c in REQUIRED_COLUMNS if c not in resolved]
    if missing:
        name = missing[0]
        unused = [c for c in present if c not in resolved.values() and c]
        close = difflib.get_close_matches(name, unused, n=1, cutoff=0.5)
        hint = (f"; if it is {_shown(close[0])}, add --map {name}={_shown(close[0], quote=False)}" if close
                else f"; map yours with --map {name}=YOUR_COLUMN")
        raise OrderLogError(f"{origin}: missing required column '{name}' (columns: {_shown_columns(present)}){hint}")
    return resolved


def _fail(origin: str, column: str, mask, rows: _Rows, what: str | Callable[[int], str], fix: str = "") -> None:
    """Raise for the first row in ``mask``; ``what`` may depend on that row's position."""
    positions = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(positions):
        _fail_at(origin, column, int(positions[0]), len(positions), rows, what, fix)


def _fail_at(origin: str, column: str, first: int, n: int, rows: _Rows, what: str | Callable[[int], str],
             fix: str = "") -> None:
    """Raise for row ``first``, the first of ``n`` rows that break one rule."""
    more = f" (and {n - 1} more)" if n > 1 else ""
    what = what(first) if callable(what) else what
    raise OrderLogError(f"{origin}: column '{column}' {rows.name(first)}{more}: {what}{'; ' + fix if fix else ''}")


def _fail_unparsed(origin, column, source: pd.Series, parsed: pd.Series, rows: _Rows, what: str, fix: str = "") -> None:
    """Name the first value that was given but could not be parsed (empty values are checked apart)."""
    bad = (parsed.isna() & source.notna()).to_numpy()
    _fail(origin, column, bad, rows, lambda first: f"{_shown(source.iloc[first])} {what}", fix)


def _fail_too_large(origin, column, source: pd.Series, parsed: pd.Series, rows: _Rows) -> None:
    _fail(origin, column, (parsed.abs() > LARGEST_VALUE).to_numpy(dtype=bool, na_value=False), rows,
          lambda first: f"{_shown(source.iloc[first])} is too large", f"values beyond {LARGEST_VALUE:g} are not orders")


def _as_string(values: pd.Series) -> pd.Series:
    """Ids as strings: integers stay integers ("17", not "17.0")."""
    text = values.astype("str").where(values.notna())
    if pd.api.types.is_float_dtype(values):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(numbers) & (np.abs(numbers) < 2**53) & (numbers == np.floor(numbers))
        if whole.any():
            text = text.mask(whole, pd.Series(numbers, index=values.index).where(whole, 0).astype("int64").astype("str"))
    return text


# A time of day and what follows it: an offset, Z, or a zone name (group 1).
_ZONE_SUFFIX = r"(?i)\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?|[A-Za-z][\w/+-]*)?$"


def _wall_clock(parsed: pd.Series) -> pd.Series:
    return parsed.dt.tz_localize(None) if isinstance(parsed.dtype, pd.DatetimeTZDtype) else parsed


def _parse_text_timestamps(text: pd.Series, format: str) -> pd.Series:
    """Parse text as dates, each value keeping the wall-clock time written in it.

    pandas parses one zone at a time, so values are parsed in groups that share an
    offset (summer and winter time, or several zones, are two groups); values that still
    mix zones are parsed one by one.
    """
    try:
        return _wall_clock(pd.to_datetime(text, format=format, errors="coerce"))
    except (ValueError, TypeError):  # offsets that differ, or offsets beside zone-less values
        pass
    zone = text.str.extract(_ZONE_SUFFIX, expand=False).fillna("").str.upper()
    if zone.nunique() > 1:
        parts = [_parse_text_timestamps(text[zone == key], format) for key in zone.unique()]
        return pd.concat(parts).reindex(text.index)

    def one(value):
        try:
            stamp = pd.to_datetime(value, format=format)
        except (ValueError, TypeError, OverflowError):
            return pd.NaT
        return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp

    return pd.Series([one(v) if isinstance(v, str) else pd.NaT for v in text], index=text.index, dtype="datetime64[us]")


def _parse_timestamps(values: pd.Series) -> pd.Series:
    """Dates and timestamps as naive wall-clock times (module docstring), NaT where unparsed.

    The result keeps pandas' resolution for what it read, so that dates outside the
    nanosecond range (year 1677 and before) can still be named; the caller converts.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return _wall_clock(values)
    text = values.astype("str").str.strip().where(values.notna())
    # "now" and "today" parse as the moment of reading: no order date is written without a digit.
    text = text.where(text.str.contains(r"\d", regex=True) == True)  # noqa: E712 (NaN stays out)
    sample = text.dropna()
    if len(sample) and sample.str.fullmatch(r"\d{8}").all():
        return pd.to_datetime(text, format="%Y%m%d", errors="coerce")
    parsed = _parse_text_timestamps(text, "ISO8601")
    failed = parsed.isna() & text.notna()
    if failed.any():
        parsed = parsed.where(~failed, _parse_text_timestamps(text.where(failed), "mixed"))
    return parsed


def _parse_numbers(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    text = values.astype("str").str.strip().where(values.notna())
    return pd.to_numeric(text, errors="coerce").astype("float64")


def validate_order_lines(
    raw: pd.DataFrame,
    origin: str,
    column_map: Mapping[str, str] | None = None,
    *,
    row_base: int = 1,
    row_word: str = "row",
    rows: _Rows | None = None,
) -> pd.DataFrame:
    """Check a raw frame against the order-log contract and return canonical lines.

    Parameters
    ----------
    raw : pandas.DataFrame
        As read from the source, any dtypes.
    origin : str
        Name used in messages (file name or table).
    column_map : mapping, optional
        Your column name -> contract name.
    row_base, row_word : int, str
        How rows are numbered in messages (CSV: line numbers starting at 2).
    rows : optional
        How the reader names rows (it knows the file's lines); overrides the two above.

    Raises
    ------
    OrderLogError
        On the first broken rule, naming column and row.
    """
    rows = rows or _Rows(row_word, row_base)
    resolved = _resolve_columns(raw, origin, column_map or {})
    if raw.empty:
        raise OrderLogError(f"{origin}: has a header but no rows")
    out: dict[str, pd.Series] = {}

    ids = _as_string(raw[resolved["customer_id"]])
    blank = ids.isna() | (ids.str.strip() == "")
    _fail(origin, "customer_id", blank, rows, "is empty", "every order needs a customer")
    out["customer_id"] = ids.str.strip().astype("str")

    source_ts = raw[resolved["order_ts"]]
    ts = _parse_timestamps(source_ts)
    _fail(origin, "order_ts", source_ts.isna(), rows, "is empty", "every order needs a date")
    _fail_unparsed(origin, "order_ts", source_ts, ts, rows, "is not a date", "use YYYY-MM-DD or ISO 8601")
    outside = ((ts < EARLIEST_ORDER) | (ts >= LATEST_ORDER)).to_numpy(dtype=bool, na_value=False)
    _fail(origin, "order_ts", outside, rows, lambda first: f"{_shown(source_ts.iloc[first])} is out of range",
          "order dates must lie in the years 1900 to 2200")
    out["order_ts"] = ts.astype("datetime64[ns]")

    source_amount = raw[resolved["amount"]]
    amount = _parse_numbers(source_amount)
    _fail(origin, "amount", source_amount.isna(), rows, "is empty", "every order needs a value")
    _fail_unparsed(origin, "amount", source_amount, amount, rows, "is not a number",
                   "write plain numbers like 12.50, no currency signs")
    _fail(origin, "amount", ~np.isfinite(amount.to_numpy()), rows, "is infinite")
    _fail_too_large(origin, "amount", source_amount, amount, rows)
    out["amount"] = amount

    if "order_id" in resolved:
        order_ids = _as_string(raw[resolved["order_id"]])
        missing = order_ids.isna() | (order_ids.str.strip() == "")
        # Rows without an id are orders of their own: give them ids no real order can have.
        synthetic = pd.Series(SYNTHETIC_ORDER_PREFIX + pd.RangeIndex(len(raw)).astype("str"), index=raw.index)
        out["order_id"] = order_ids.str.strip().where(~missing, synthetic).astype("str")
    if "quantity" in resolved:
        source_qty = raw[resolved["quantity"]]
        qty = _parse_numbers(source_qty)
        _fail_unparsed(origin, "quantity", source_qty, qty, rows, "is not a number")
        _fail(origin, "quantity", ~np.isfinite(qty.fillna(1.0).to_numpy()), rows, "is infinite")
        _fail_too_large(origin, "quantity", source_qty, qty, rows)
        out["quantity"] = qty.fillna(OPTIONAL_DEFAULTS["quantity"])
    for name in ("product_id", "category", "channel"):
        if name in resolved:
            values = _as_string(raw[resolved[name]]).str.strip()
            fill = OPTIONAL_DEFAULTS.get(name)
            out[name] = values.fillna(fill).astype("str") if fill else values.astype("str")
    lines = pd.DataFrame(out)
    return lines[[c for c in CONTRACT_COLUMNS if c in lines.columns]].reset_index(drop=True)


# --------------------------------------------------------------------------- lines -> orders


def merge_order_lines(lines: pd.DataFrame, *, has_order_id: bool | None = None, net_credits: bool = True) -> pd.DataFrame:
    """Merge order lines into orders and net returns (rules in the module docstring).

    Cancellation invoices are first netted into the orders they cancel
    (:func:`net_credit_invoices`), unless ``net_credits`` is False (lines the loader has
    netted already). Returns one row per order: ``customer_id``, ``order_ts``, ``amount``
    and, where the lines have them, ``order_id``, ``quantity``, ``category``, ``channel``;
    sorted by customer and time.
    """
    if has_order_id is None:
        has_order_id = "order_id" in lines.columns
    return _merge_order_lines(lines, has_order_id, net_credits=net_credits)[0]


def _arrow_table(frame: pd.DataFrame, columns) -> "pa.Table":
    """Columns of a frame as an Arrow table: DuckDB scans Arrow strings without converting them to objects."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame[[c for c in columns if c in frame.columns]], preserve_index=False)


def duckdb_connection():
    """A DuckDB connection for the order-log rules: embedded, in memory, without DuckDB's progress bar."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("set enable_progress_bar = false")  # the CLI shows its own status line
    except duckdb.Error:
        pass  # in a notebook DuckDB refuses to touch the setting without ipywidgets; it is off there anyway
    return con


def arrow_result(con, sql: str) -> "pa.Table":
    """The result of ``sql`` on ``con`` as one Arrow table."""
    result = con.execute(sql).arrow()
    return result.read_all() if hasattr(result, "read_all") else result  # a record batch reader in newer releases


def _query(sql: str, **tables) -> pd.DataFrame:
    """Run DuckDB SQL over Arrow tables and return a pandas frame (strings as ``str``)."""
    con = duckdb_connection()
    try:
        for name, table in tables.items():
            con.register(name, table)
        result = arrow_result(con, sql)
    finally:
        con.close()
    return result.to_pandas()


def _merge_order_lines(lines: pd.DataFrame, has_order_id: bool, *, net_credits: bool) -> tuple[pd.DataFrame, int]:
    """The orders, and how many orders with a purchase were cancelled or refunded in full (and dropped)."""
    n_reversed = 0
    if not has_order_id:
        keep = [c for c in ("customer_id", "order_ts", "amount", "quantity", "category", "channel") if c in lines]
        orders = lines[keep]
    else:
        if net_credits:
            lines = net_credit_invoices(lines)[0]
        extra = []
        if "quantity" in lines:
            extra.append("sum(quantity) as quantity")
        if "category" in lines:
            extra.append("arg_max(category, amount) as category")
        if "channel" in lines:
            extra.append("arg_min(channel, order_ts) as channel")
        sql = f"""
            select customer_id, order_id, min(order_ts) as order_ts, sum(amount) as amount
                   {''.join(', ' + e for e in extra)},
                   min(amount) < 0 and sum(amount) <= {NET_ZERO} * sum(abs(amount)) as refunded,
                   max(amount) > 0 as purchased
            from lines
            group by customer_id, order_id
        """
        merged = _query(sql, lines=_arrow_table(lines, CONTRACT_COLUMNS))
        refunded = merged.pop("refunded").to_numpy(dtype=bool)
        n_reversed = int((refunded & merged.pop("purchased").to_numpy(dtype=bool)).sum())
        orders = merged.loc[~refunded]
        orders = orders[["customer_id", "order_ts", "amount", "order_id", *[c for c in ("quantity", "category", "channel") if c in orders]]]
    # ties in time are ordered by order_id, as the DuckDB engine orders them: the query's row order is not fixed
    tie = ["order_id"] if "order_id" in orders else []
    orders = orders.sort_values(["customer_id", "order_ts", *tie], kind="stable").reset_index(drop=True)
    return with_order_dtypes(orders), n_reversed


def with_order_dtypes(orders: pd.DataFrame) -> pd.DataFrame:
    """Merged orders with the contract's dtypes whichever engine merged them: ids and text as
    ``str``, ``order_ts`` as ``datetime64[ns]``, ``amount`` as ``float64`` (changed in place, returned)."""
    orders["customer_id"] = orders["customer_id"].astype("str")
    orders["order_ts"] = orders["order_ts"].astype("datetime64[ns]")
    orders["amount"] = orders["amount"].astype("float64")
    for name in ("order_id", "category", "channel"):
        if name in orders:
            orders[name] = orders[name].astype("str")
    return orders


_CREDIT_SQL = """
with negative as (
    select distinct customer_id, order_id from lines where amount < 0
),
credit_orders as (
    select n.customer_id, n.order_id from negative n
    anti join (select customer_id, order_id from lines where amount > 0) p
        on n.customer_id = p.customer_id and n.order_id = p.order_id
),
credits as (
    select l.pos, l.customer_id, l.order_id, l.order_ts, l.product_id, -l.amount as credit
    from lines l
    semi join credit_orders c on l.customer_id = c.customer_id and l.order_id = c.order_id
),
purchases as (
    select l.customer_id, false as any_product, l.product_id, l.order_id, min(l.order_ts) as ts, sum(l.amount) as bought
    from lines l
    semi join (select distinct customer_id, product_id from credits where product_id is not null) c
        on l.customer_id = c.customer_id and l.product_id = c.product_id
    where l.amount > 0
    group by l.customer_id, l.product_id, l.order_id
    union all
    select l.customer_id, true, null, l.order_id, min(l.order_ts), sum(l.amount)
    from lines l
    semi join (select distinct customer_id from credits where product_id is null) c on l.customer_id = c.customer_id
    where l.amount > 0
    group by l.customer_id, l.order_id
),
events as (
    select customer_id, any_product, product_id, ts, 0 as kind, order_id as purchase, bought,
           null::bigint as pos, null::double as credit, null::varchar as credit_order
    from purchases
    union all
    select customer_id, product_id is null, product_id, order_ts, 1, null, null, pos, credit, order_id
    from credits
),
matched as (
    select pos, customer_id, any_product, product_id, ts, credit, credit_order,
           last_value(purchase ignore nulls) over w as purchase,
           last_value(bought ignore nulls) over w as bought
    from events
    window w as (partition by customer_id, any_product, product_id
                 order by ts, kind, purchase, credit_order, pos rows between unbounded preceding and current row)
    qualify kind = 1
)
select pos, customer_id, credit_order, purchase, credit,
       case when purchase is null then 0.0 else greatest(0.0, least(credit, bought - coalesce(sum(credit) over (
           partition by customer_id, any_product, product_id, purchase
           order by ts, credit_order, credit, pos rows between unbounded preceding and 1 preceding), 0.0))) end as allocated
from matched
"""


def net_credit_invoices(lines: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Net cancellation invoices into the purchases they cancel (module docstring, "Messy exports").

    A line of an order with no positive line and some negative ones is moved into the
    customer's most recent earlier purchase of its product (of anything, without
    ``product_id``): its ``order_id`` becomes that order's and its amount the part of the
    cancellation that order can take (quantity in proportion). Lines with nothing to
    cancel are dropped. Vectorised: one DuckDB query over the customers who cancelled.

    Returns the lines and the counts for :class:`Cleaning`.
    """
    counts = {"credit_invoices": 0, "credit_lines_netted": 0, "credit_lines_dropped": 0, "credit_amount_dropped": 0.0}
    if "order_id" not in lines.columns or not (lines["amount"].to_numpy() < 0).any():
        return lines, counts
    import pyarrow as pa

    table = _arrow_table(lines, ("customer_id", "order_id", "order_ts", "amount", "product_id"))
    table = table.append_column("pos", pa.array(np.arange(len(lines), dtype=np.int64)))
    if "product_id" not in lines.columns:
        table = table.append_column("product_id", pa.nulls(len(lines), pa.string()))
    credits = _query(_CREDIT_SQL, lines=table)
    if credits.empty:
        return lines, counts
    credits = credits.sort_values("pos", kind="stable")
    pos = credits["pos"].to_numpy(dtype=np.int64)
    matched = credits["purchase"].notna().to_numpy()
    credit = credits["credit"].to_numpy(dtype=float)
    allocated = credits["allocated"].to_numpy(dtype=float)
    netted = matched & ((allocated > 0) | (credit == 0))
    counts = {
        "credit_invoices": int(len(credits.drop_duplicates(["customer_id", "credit_order"]))),
        "credit_lines_netted": int(netted.sum()),
        "credit_lines_dropped": int((~netted).sum()),
        "credit_amount_dropped": float(np.where(netted, credit - allocated, credit).sum()),
    }
    lines = lines.copy()
    into = pos[netted]
    lines.iloc[into, lines.columns.get_loc("order_id")] = credits["purchase"].to_numpy()[netted]
    lines.iloc[into, lines.columns.get_loc("amount")] = -allocated[netted]
    if "quantity" in lines.columns:
        share = np.divide(allocated, credit, out=np.ones_like(credit), where=credit > 0)[netted]
        lines.iloc[into, lines.columns.get_loc("quantity")] = lines["quantity"].to_numpy()[into] * share
    keep = np.ones(len(lines), dtype=bool)
    keep[pos[~netted]] = False
    if not keep.all():
        lines = lines.loc[keep].reset_index(drop=True)
    return lines, counts


def heavy_customers(orders: pd.DataFrame, per_customer: pd.Series | None = None) -> pd.Series:
    """Order counts of possible wholesale accounts, most first: :data:`HEAVY_CUSTOMER_ORDERS` or more
    orders, on more than :data:`HEAVY_CUSTOMER_DAY_SHARE` of the days from their first order to their last."""
    if per_customer is None:
        per_customer = orders["customer_id"].value_counts()
    many = per_customer[per_customer >= HEAVY_CUSTOMER_ORDERS]
    if many.empty:
        return many
    theirs = orders.loc[orders["customer_id"].isin(many.index), ["customer_id", "order_ts"]]
    days = theirs.assign(day=theirs["order_ts"].dt.normalize()).groupby("customer_id")["day"].agg(["nunique", "min", "max"])
    span = (days["max"] - days["min"]).dt.days + 1
    busy = days.index[(days["nunique"] > HEAVY_CUSTOMER_DAY_SHARE * span).to_numpy()]
    return many[many.index.isin(busy)]


def cap_outlier_orders(orders: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Cap order values above :data:`OUTLIER_ORDER_MULTIPLE` times the median positive order value.

    Returns the orders and ``{"outlier_orders", "outlier_cap", "outlier_amount_capped"}``.
    """
    amounts = orders["amount"].to_numpy(dtype=float)
    positive = amounts[amounts > 0]
    cap = float(OUTLIER_ORDER_MULTIPLE * np.median(positive)) if positive.size else float("inf")
    over = amounts > cap
    counts = {"outlier_orders": int(over.sum()), "outlier_cap": cap,
              "outlier_amount_capped": float((amounts[over] - cap).sum())}
    if over.any():
        orders = orders.assign(amount=np.minimum(amounts, cap))
    return orders, counts


# --------------------------------------------------------------------------- dates


def parse_date(text: str | dt.date | pd.Timestamp, flag: str = "date", *, any_year: bool = False) -> pd.Timestamp:
    """A date (``YYYY-MM-DD`` text, date, datetime or Timestamp) as a midnight Timestamp.

    The one date parser: command-line flags, request fields and library cutoffs all come
    through here. Raises :class:`CutoffError` (an :class:`InputError`) in one line naming
    ``flag`` when the value is not a date or (unless ``any_year``, for a caller with a
    check that says more, such as "after today") lies outside the years 1900 to 2200.
    """
    if isinstance(text, pd.Timestamp):
        return text.normalize()
    try:
        value = pd.Timestamp(text if isinstance(text, dt.date) else str(text).strip())
    except (ValueError, TypeError):
        value = pd.NaT
    if pd.isna(value):
        raise CutoffError(f"{flag}: {_shown(text)} is not a date; use YYYY-MM-DD, e.g. 1997-09-30")
    value = value.tz_localize(None).normalize() if value.tzinfo else value.normalize()
    if not any_year and not EARLIEST_ORDER <= value < LATEST_ORDER:
        raise CutoffError(f"{flag}: {_shown(text)} is out of range; use a date in the years 1900 to 2200")
    return value


def check_cutoff(
    log: OrderLog,
    cutoff: pd.Timestamp,
    *,
    horizon_days: int | None = None,
    flag: str = "--cutoff",
    stale_after_days: int | None = None,
    lang=None,
) -> str | None:
    """Any date on or after the first order is an as-of date; a backtest's also needs its future.

    A date after the last order is normal (the daily run on an export that ends yesterday):
    the history simply ends earlier. With ``horizon_days`` (a backtest), ``cutoff +
    horizon_days`` must lie on or before the last order. With ``stale_after_days``, a date
    more than that many days after the last order gives a warning line (a stale export?).

    Raises :class:`CutoffError` naming the valid range; returns the warning line (in ``lang``, as
    :func:`describe_summary` takes it), or None.
    """
    first, last = log.first_order_date, log.last_order_date
    day = lambda ts: ts.date().isoformat()  # noqa: E731
    if cutoff < first:
        raise CutoffError(
            f"{flag} {day(cutoff)} is before the first order in {log.source} ({day(first)}); choose a date from {day(first)} on"
        )
    if horizon_days is not None:
        latest = last - pd.Timedelta(days=horizon_days)
        if cutoff > latest:
            raise CutoffError(
                f"{flag} {day(cutoff)} + {horizon_days} days runs past the last order in {log.source} "
                f"({day(last)}); choose a cutoff on or before {day(latest)}"
            )
    quiet_days = (cutoff.normalize() - last).days
    if stale_after_days is not None and quiet_days > stale_after_days:
        return (lang or _PlainEnglish()).gettext(
            "{flag} {date} is {days} days after the last order in {source} ({last}), more than the {horizon}-day "
            "horizon: is the export stale?").format(flag=flag, date=day(cutoff), days=quiet_days, source=log.source,
                                                     last=day(last), horizon=stale_after_days)
    return None
