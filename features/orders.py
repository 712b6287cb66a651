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

Contract
--------
Required columns: ``customer_id``, ``order_ts`` (a date or timestamp), ``amount`` (the
value of the order or line). Optional: ``order_id``, ``quantity``, ``product_id``,
``category``, ``channel``. Other names are mapped with ``--map
customer_id=cust,order_ts=date``; headers are matched ignoring case and surrounding
spaces. Anything that breaks the contract raises :class:`OrderLogError` with one line
naming the source, the column, the row (CSV: the line number in the file, header = line
1; Parquet and DuckDB: the 1-based row) and the fix.

Rules
-----
* **Lines and orders.** Rows sharing ``(customer_id, order_id)`` are lines of one order:
  its time is the earliest line's, its amount and quantity the sums, its channel the
  first line's and its category that of its largest line. Without ``order_id`` each row
  is one order.
* **Same-day orders** stay separate orders (they count in order counts and spend), but
  are one purchase *day* in the BTYD statistics, exactly as ``lifetimes`` counts them.
* **Returns.** A negative ``amount`` is a return. With ``order_id`` it is netted into
  its order; an order whose net amount is zero or less was fully refunded and is
  dropped (it is not a purchase). Without ``order_id`` a return cannot be matched to
  what it returns, so it is dropped and counted in :attr:`OrderLog.n_returns_dropped`.
  Zero amounts (free samples, fully discounted orders) are kept as orders.
* **Time zones.** Timestamps with a zone keep their local wall-clock time: the
  customer's calendar day is what counts.
* Missing ``quantity`` is 1; missing ``category`` and ``channel`` are ``"unknown"``.
"""

from __future__ import annotations

import difflib
import gzip
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from features.datasets import BUILTIN_SOURCES, load_cdnow
from features.errors import CutoffError, InputError, OrderLogError

REQUIRED_COLUMNS = ("customer_id", "order_ts", "amount")
OPTIONAL_COLUMNS = ("order_id", "quantity", "product_id", "category", "channel")
CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
STRING_COLUMNS = ("customer_id", "order_id", "product_id", "category", "channel")

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
}


@dataclass
class OrderLog:
    """A validated order log: its lines, and the orders they make up.

    Attributes
    ----------
    lines : pandas.DataFrame
        One row per valid line, contract columns only, canonical dtypes.
    source : str
        Where it came from, for messages.
    n_returns_dropped : int
        Return rows that could not be matched to an order and were dropped.
    """

    lines: pd.DataFrame
    source: str
    n_returns_dropped: int = 0
    has_order_id: bool = field(default=False)

    @cached_property
    def orders(self) -> pd.DataFrame:
        """One row per order (lines merged, returns netted), sorted by customer and time."""
        return merge_order_lines(self.lines, has_order_id=self.has_order_id)

    @property
    def first_order_date(self) -> pd.Timestamp:
        return self.lines["order_ts"].min().normalize()

    @property
    def last_order_date(self) -> pd.Timestamp:
        return self.lines["order_ts"].max().normalize()

    def summary(self) -> dict:
        """Counts and span, for a short printout."""
        orders = self.orders
        return {
            "source": self.source,
            "lines": len(self.lines),
            "orders": len(orders),
            "customers": int(orders["customer_id"].nunique()),
            "first_order": self.first_order_date.date().isoformat(),
            "last_order": self.last_order_date.date().isoformat(),
            "revenue": float(orders["amount"].sum()),
            "returns_dropped": self.n_returns_dropped,
            "columns": [c for c in OPTIONAL_COLUMNS if c in self.lines.columns],
        }


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


def load_order_log(source: str | os.PathLike, column_map: Mapping[str, str] | str | None = None) -> OrderLog:
    """Load and validate an order log from any supported source (see module docstring)."""
    if isinstance(column_map, str) or column_map is None:
        column_map = parse_column_map(column_map)
    source = str(source)
    if source in BUILTIN_SOURCES:
        if column_map:
            raise InputError(f"--map: the built-in log '{source}' needs no mapping")
        lines = load_cdnow(source)
        return _finish(lines, source, has_order_id=False)
    raw, origin, row_base, row_word = _read_source(source)
    lines = validate_order_lines(raw, origin, column_map, row_base=row_base, row_word=row_word)
    return _finish(lines, origin, has_order_id="order_id" in lines.columns)


def load_orders(source: str | os.PathLike, column_map: Mapping[str, str] | str | None = None) -> pd.DataFrame:
    """Shortcut: the merged orders of :func:`load_order_log`."""
    return load_order_log(source, column_map).orders


def _finish(lines: pd.DataFrame, origin: str, *, has_order_id: bool) -> OrderLog:
    n_dropped = 0
    if not has_order_id:
        returns = lines["amount"] < 0
        n_dropped = int(returns.sum())
        if n_dropped:
            lines = lines.loc[~returns].reset_index(drop=True)
    if lines.empty:
        raise OrderLogError(f"{origin}: no orders left after dropping {n_dropped} returns (negative amounts)")
    return OrderLog(lines=lines, source=origin, n_returns_dropped=n_dropped, has_order_id=has_order_id)


# --------------------------------------------------------------------------- reading


def _read_source(source: str) -> tuple[pd.DataFrame, str, int, str]:
    """Read a source into a raw frame; returns (frame, origin, first row number, row word)."""
    table = None
    path_text = source
    match = re.match(r"^(.*\.(?:duckdb|ddb|db)):([A-Za-z_][\w.]*)$", source)
    if match:
        path_text, table = match.group(1), match.group(2)
    path = Path(path_text)
    origin = path.name or path_text
    if not path.exists():
        hint = f" (built-in logs: {', '.join(BUILTIN_SOURCES)})" if os.sep not in path_text else ""
        raise OrderLogError(f"{path_text}: no such file or folder{hint}")
    suffixes = [s.lower() for s in path.suffixes]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".gz" and len(suffixes) >= 2:
        suffix = suffixes[-2]
    if path.is_dir():
        return _read_parquet(path, origin), origin, 1, "row"
    if path.stat().st_size == 0:
        raise OrderLogError(f"{origin}: the file is empty (0 bytes)")
    if suffix in DUCKDB_SUFFIXES:
        if table is None:
            raise OrderLogError(f"{origin}: name the table too, as {path_text}:TABLE")
        return _read_duckdb(path, table, origin), f"{origin}:{table}", 1, "row"
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, origin), origin, 1, "row"
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, origin), origin, 2, "line"
    raise OrderLogError(
        f"{origin}: unsupported file type '{suffix or 'none'}'; use .csv, .parquet, or a DuckDB table as FILE.duckdb:TABLE"
    )


def _sniff_binary(head: bytes) -> str | None:
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    if b"\x00" in head[:4096]:
        return "binary, not text"
    return None


def _read_csv(path: Path, origin: str) -> pd.DataFrame:
    compressed = path.suffix.lower() == ".gz"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(65536)
    except (OSError, EOFError) as exc:
        raise OrderLogError(f"{origin}: cannot be read as {'gzip' if compressed else 'a file'} ({exc})") from None
    what = _sniff_binary(head)
    if what is not None:
        hint = {"a Parquet file": "rename it to .parquet", "gzip-compressed": "name it .csv.gz"}.get(what, "export it as CSV")
        raise OrderLogError(f"{origin}: is {what}, not CSV text; {hint}")
    if not head.strip():
        raise OrderLogError(f"{origin}: the file has no header and no rows")
    first_line = head.splitlines()[0].decode("utf-8", errors="replace").lstrip("\ufeff")
    sep = max(DELIMITERS, key=first_line.count)
    if first_line.count(sep) == 0:
        sep = ","
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
    except UnicodeDecodeError as exc:
        raise OrderLogError(f"{origin}: {_locate_bad_utf8(path, compressed, exc)}; save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise OrderLogError(f"{origin}: the file has no header and no rows") from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if found:
            expected, line, saw = found.groups()
            raise OrderLogError(
                f"{origin}: line {line} has {saw} fields but the header has {expected}; "
                f"quote values that contain '{sep}'"
            ) from None
        raise OrderLogError(f"{origin}: not readable as CSV ({str(exc).strip().splitlines()[-1]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    _check_row_delimiters(frame, origin, sep)
    return frame


def _check_row_delimiters(frame: pd.DataFrame, origin: str, sep: str) -> None:
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
            f"{origin}: line {position + 2} is separated by {shown} but the header by "
            f"{'tab' if sep == chr(9) else repr(sep)}; use one delimiter throughout"
        )


def _locate_bad_utf8(path: Path, compressed: bool, exc: UnicodeDecodeError) -> str:
    opener = gzip.open if compressed else open
    with opener(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            try:
                raw_line.decode("utf-8")
            except UnicodeDecodeError as bad:
                byte = raw_line[bad.start]
                return f"line {number} is not UTF-8 text (byte 0x{byte:02x} at character {bad.start + 1})"
    return f"is not UTF-8 text ({exc.reason})"


def _read_parquet(path: Path, origin: str) -> pd.DataFrame:
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
        raise OrderLogError(f"{origin}: cannot be read as Parquet ({str(exc).splitlines()[0]})") from None
    frame = table.to_pandas()
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _read_duckdb(path: Path, table: str, origin: str) -> pd.DataFrame:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise OrderLogError(f"{origin}: is not a DuckDB database ({str(exc).splitlines()[0]})") from None
    try:
        tables = [row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()]
        if table not in tables:
            raise OrderLogError(
                f"{origin}: has no table '{table}' (tables: {', '.join(sorted(tables)) or 'none'})"
            )
        frame = con.execute(f'select * from "{table}"').df()
    finally:
        con.close()
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


# --------------------------------------------------------------------------- validation


def _resolve_columns(frame: pd.DataFrame, origin: str, column_map: Mapping[str, str]) -> dict[str, str]:
    """Map the frame's columns onto contract names: explicit --map first, then case-insensitive names."""
    present = list(frame.columns)
    resolved: dict[str, str] = {}
    for yours, contract in column_map.items():
        if yours not in present:
            close = difflib.get_close_matches(yours, present, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (columns: {', '.join(present)})"
            raise OrderLogError(f"{origin}: --map {contract}={yours}: there is no column '{yours}'{hint}")
        resolved[contract] = yours
    by_lower = {c.lower(): c for c in present}
    for contract in CONTRACT_COLUMNS:
        if contract not in resolved and contract in by_lower and by_lower[contract] not in resolved.values():
            resolved[contract] = by_lower[contract]
    missing = [c for c in REQUIRED_COLUMNS if c not in resolved]
    if missing:
        name = missing[0]
        unused = [c for c in present if c not in resolved.values()]
        close = difflib.get_close_matches(name, unused, n=1, cutoff=0.5)
        hint = f"; if it is '{close[0]}', add --map {name}={close[0]}" if close else f"; map yours with --map {name}=YOUR_COLUMN"
        shown = ", ".join(present) if len(present) <= 12 else ", ".join(present[:12]) + ", ..."
        raise OrderLogError(f"{origin}: missing required column '{name}' (columns: {shown}){hint}")
    return resolved


def _where(mask: np.ndarray, row_base: int) -> tuple[int, int]:
    """First offending row number and how many others there are."""
    positions = np.flatnonzero(mask)
    return int(positions[0]) + row_base, len(positions) - 1


def _fail(origin: str, column: str, mask, row_word: str, row_base: int, what: str, fix: str = "") -> None:
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return
    row, others = _where(mask, row_base)
    more = f" (and {others} more)" if others else ""
    raise OrderLogError(f"{origin}: column '{column}' {row_word} {row}{more}: {what}{'; ' + fix if fix else ''}")


def _fail_unparsed(origin, column, source: pd.Series, parsed: pd.Series, row_word, row_base, what: str, fix: str = "") -> None:
    """Name the first value that was given but could not be parsed (empty values are checked apart)."""
    bad = (parsed.isna() & source.notna()).to_numpy()
    if bad.any():
        row, _ = _where(bad, row_base)
        _fail(origin, column, bad, row_word, row_base, f"'{source.iloc[row - row_base]}' {what}", fix)


def _as_string(values: pd.Series) -> pd.Series:
    """Ids as strings: integers stay integers ("17", not "17.0")."""
    if pd.api.types.is_float_dtype(values):
        whole = values.dropna()
        if (whole == np.floor(whole)).all():
            values = values.astype("Int64")
    return values.astype("str").where(values.notna())


def _parse_timestamps(values: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype("str").str.strip().where(values.notna())
        sample = text.dropna()
        if len(sample) and sample.str.fullmatch(r"\d{8}").all():
            parsed = pd.to_datetime(text, format="%Y%m%d", errors="coerce")
        else:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
            failed = parsed.isna() & text.notna()
            if failed.any():
                parsed = parsed.where(~failed, pd.to_datetime(text.where(failed), format="mixed", errors="coerce"))
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


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

    Raises
    ------
    OrderLogError
        On the first broken rule, naming column and row.
    """
    resolved = _resolve_columns(raw, origin, column_map or {})
    if raw.empty:
        raise OrderLogError(f"{origin}: has a header but no rows")
    out: dict[str, pd.Series] = {}

    ids = _as_string(raw[resolved["customer_id"]])
    blank = ids.isna() | (ids.str.strip() == "")
    _fail(origin, "customer_id", blank, row_word, row_base, "is empty", "every order needs a customer")
    out["customer_id"] = ids.str.strip().astype("str")

    source_ts = raw[resolved["order_ts"]]
    ts = _parse_timestamps(source_ts)
    _fail(origin, "order_ts", source_ts.isna(), row_word, row_base, "is empty", "every order needs a date")
    _fail_unparsed(origin, "order_ts", source_ts, ts, row_word, row_base, "is not a date", "use YYYY-MM-DD or ISO 8601")
    out["order_ts"] = ts

    source_amount = raw[resolved["amount"]]
    amount = _parse_numbers(source_amount)
    _fail(origin, "amount", source_amount.isna(), row_word, row_base, "is empty", "every order needs a value")
    _fail_unparsed(origin, "amount", source_amount, amount, row_word, row_base, "is not a number",
                   "write plain numbers like 12.50, no currency signs")
    _fail(origin, "amount", ~np.isfinite(amount.to_numpy()), row_word, row_base, "is infinite")
    out["amount"] = amount

    if "order_id" in resolved:
        order_ids = _as_string(raw[resolved["order_id"]])
        missing = order_ids.isna() | (order_ids.str.strip() == "")
        # Rows without an id are orders of their own: give them ids no real order can have.
        synthetic = pd.Series("\x00row" + pd.RangeIndex(len(raw)).astype("str"), index=raw.index)
        out["order_id"] = order_ids.str.strip().where(~missing, synthetic).astype("str")
    if "quantity" in resolved:
        source_qty = raw[resolved["quantity"]]
        qty = _parse_numbers(source_qty)
        _fail_unparsed(origin, "quantity", source_qty, qty, row_word, row_base, "is not a number")
        _fail(origin, "quantity", ~np.isfinite(qty.fillna(1.0).to_numpy()), row_word, row_base, "is infinite")
        out["quantity"] = qty.fillna(1.0)
    for name in ("product_id", "category", "channel"):
        if name in resolved:
            values = _as_string(raw[resolved[name]]).str.strip()
            fill = None if name == "product_id" else "unknown"
            out[name] = values.fillna(fill).astype("str") if fill else values.astype("str")
    lines = pd.DataFrame(out)
    return lines[[c for c in CONTRACT_COLUMNS if c in lines.columns]].reset_index(drop=True)


# --------------------------------------------------------------------------- lines -> orders


def merge_order_lines(lines: pd.DataFrame, *, has_order_id: bool | None = None) -> pd.DataFrame:
    """Merge order lines into orders and net returns (rules in the module docstring).

    Returns one row per order: ``customer_id``, ``order_ts``, ``amount`` and, where the
    lines have them, ``order_id``, ``quantity``, ``category``, ``channel``; sorted by
    customer and time.
    """
    if has_order_id is None:
        has_order_id = "order_id" in lines.columns
    if not has_order_id:
        keep = [c for c in ("customer_id", "order_ts", "amount", "quantity", "category", "channel") if c in lines]
        orders = lines[keep]
    else:
        import duckdb

        extra = []
        if "quantity" in lines:
            extra.append("sum(quantity) as quantity")
        if "category" in lines:
            extra.append("arg_max(category, amount) as category")
        if "channel" in lines:
            extra.append("arg_min(channel, order_ts) as channel")
        sql = f"""
            select customer_id, order_id, min(order_ts) as order_ts, sum(amount) as amount
                   {''.join(', ' + e for e in extra)}
            from lines
            group by customer_id, order_id
            having sum(amount) > 0 or (sum(amount) = 0 and min(amount) >= 0)
        """
        con = duckdb.connect()
        try:
            con.register("lines", lines)
            orders = con.execute(sql).df()
        finally:
            con.close()
        orders = orders[["customer_id", "order_ts", "amount", "order_id", *[c for c in ("quantity", "category", "channel") if c in orders]]]
    orders = orders.sort_values(["customer_id", "order_ts"], kind="stable").reset_index(drop=True)
    orders["customer_id"] = orders["customer_id"].astype("str")
    orders["order_ts"] = orders["order_ts"].astype("datetime64[ns]")
    orders["amount"] = orders["amount"].astype("float64")
    for name in ("order_id", "category", "channel"):
        if name in orders:
            orders[name] = orders[name].astype("str")
    return orders


# --------------------------------------------------------------------------- dates


def parse_date(text: str | pd.Timestamp, flag: str = "date") -> pd.Timestamp:
    """A command-line date (YYYY-MM-DD) as a midnight Timestamp, or a one-line InputError."""
    if isinstance(text, pd.Timestamp):
        return text.normalize()
    try:
        value = pd.Timestamp(str(text).strip())
    except (ValueError, TypeError):
        value = pd.NaT
    if pd.isna(value):
        raise InputError(f"{flag}: '{text}' is not a date; use YYYY-MM-DD, e.g. 1997-09-30")
    return value.tz_localize(None).normalize() if value.tzinfo else value.normalize()


def check_cutoff(
    log: OrderLog,
    cutoff: pd.Timestamp,
    *,
    horizon_days: int | None = None,
    flag: str = "--cutoff",
    stale_after_days: int | None = None,
) -> str | None:
    """Any date on or after the first order is an as-of date; a backtest's also needs its future.

    A date after the last order is normal (the daily run on an export that ends yesterday):
    the history simply ends earlier. With ``horizon_days`` (a backtest), ``cutoff +
    horizon_days`` must lie on or before the last order. With ``stale_after_days``, a date
    more than that many days after the last order gives a warning line (a stale export?).

    Raises :class:`CutoffError` naming the valid range; returns the warning line, or None.
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
        return (f"{flag} {day(cutoff)} is {quiet_days} days after the last order in {log.source} ({day(last)}), "
                f"more than the {stale_after_days}-day horizon: is the export stale?")
    return None
