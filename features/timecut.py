"""The one place an order log is cut at an as-of day, in every engine the project runs on.

An as-of day (a cutoff) is a *date*: an order at any time on that day belongs to the past,
so the past is ``order_ts < day + 1 day`` (an order at 23:59:59 on the day is in, one at
00:00:00 the next day is out), and the future of a horizon ``H`` is the days
``day + 1 .. day + H``: ``day + 1 day <= order_ts < day + H + 1 days``. Leakage is the
property everything else rests on, so every cut of the log goes through :func:`until`,
:func:`between`, :func:`after`, :func:`on_or_before` or :func:`in_horizon` and nothing
writes the boundary by hand.

:func:`until`, :func:`between` and :func:`after` take pandas DataFrames, pyarrow Tables,
Ibis Tables and PySpark DataFrames and return the same kind; :func:`on_or_before` is the
boolean mask for pandas code that combines it with other conditions, and
:func:`in_horizon` the per-row horizon of pandas code that pairs orders with contacts.
Days are read by :func:`features.orders.parse_date`, the one date parser.
"""

from __future__ import annotations

import datetime as dt
import functools

import pandas as pd
import pyarrow as pa

from features.common.errors import CutoffError
from features.orders import parse_date

__all__ = ["after", "as_day", "between", "day_end", "in_horizon", "on_or_before", "until"]

ORDER_TS = "order_ts"


def as_day(value: object, what: str = "cutoff") -> dt.date:
    """An as-of day given as a date, datetime, Timestamp or ``YYYY-MM-DD`` text, as a date.

    Any year: the range of dates a user may give is checked where they give it (the CLI).
    """
    return parse_date(value, what, any_year=True).date()


def day_end(day: object, plus_days: int = 0) -> pd.Timestamp:
    """The first instant after the day ``day + plus_days``: what ends on or before it is before it."""
    return parse_date(day, "as-of day", any_year=True) + pd.Timedelta(days=plus_days + 1)


def on_or_before(values: pd.Series, day: object) -> pd.Series:
    """Mask of the timestamps ``values`` on or before ``day`` (any time of that day)."""
    return values < day_end(day)


def in_horizon(values: pd.Series, days: pd.Series, horizon_days: int) -> pd.Series:
    """Mask of the timestamps ``values`` on the days ``day + 1 .. day + horizon_days`` of their own row's ``days``.

    The per-row :func:`between` of pandas code that pairs each order with a contact (a
    campaign's window after its date); ``days`` are dates or timestamps (the time is dropped).
    """
    start = pd.to_datetime(days).dt.normalize() + pd.Timedelta(days=1)
    return (values >= start) & (values < start + pd.Timedelta(days=horizon_days))


def until(rows, day: object, *, horizon_days: int = 0, column: str = ORDER_TS):
    """The rows on or before ``day`` (or, with ``horizon_days``, on or before ``day + horizon_days``).

    Parameters
    ----------
    rows
        pandas DataFrame, pyarrow Table, Ibis Table or PySpark DataFrame with ``column``.
    day
        The as-of day; rows at any time of that day are kept.
    horizon_days
        Keep the label horizon after ``day`` as well (a backtest's whole log).
    column
        The timestamp column to cut on.
    """
    return _engine(rows).before(rows, column, day_end(day, horizon_days))


def between(rows, day: object, horizon_days: int, *, column: str = ORDER_TS):
    """The rows on the days ``day + 1 .. day + horizon_days``: the label future of the as-of day."""
    if horizon_days < 1:
        raise CutoffError(f"horizon_days: must be at least 1 day, got {horizon_days}")
    return _engine(rows).within(rows, column, day_end(day), day_end(day, horizon_days))


def after(rows, day: object, *, column: str = ORDER_TS):
    """The rows after ``day`` (from midnight of the next day on): what an as-of run ignores."""
    return _engine(rows).within(rows, column, day_end(day), None)


# --------------------------------------------------------------------------- engines


class _Pandas:
    @staticmethod
    def before(rows: pd.DataFrame, column: str, end: pd.Timestamp) -> pd.DataFrame:
        return rows[(rows[column] < end).to_numpy()]

    @staticmethod
    def within(rows: pd.DataFrame, column: str, start: pd.Timestamp, end: pd.Timestamp | None) -> pd.DataFrame:
        keep = rows[column] >= start
        if end is not None:
            keep &= rows[column] < end
        return rows[keep.to_numpy()]


class _Arrow:
    @staticmethod
    def _scalar(rows: pa.Table, column: str, at: pd.Timestamp) -> pa.Scalar:
        return pa.scalar(at, type=rows.schema.field(column).type)

    @classmethod
    def before(cls, rows: pa.Table, column: str, end: pd.Timestamp) -> pa.Table:
        import pyarrow.compute as pc

        return rows.filter(pc.less(rows[column], cls._scalar(rows, column, end)))

    @classmethod
    def within(cls, rows: pa.Table, column: str, start: pd.Timestamp, end: pd.Timestamp | None) -> pa.Table:
        import pyarrow.compute as pc

        keep = pc.greater_equal(rows[column], cls._scalar(rows, column, start))
        if end is not None:
            keep = pc.and_(keep, pc.less(rows[column], cls._scalar(rows, column, end)))
        return rows.filter(keep)


class _Ibis:
    @staticmethod
    def before(rows, column: str, end: pd.Timestamp):
        import ibis

        return rows.filter(rows[column] < ibis.timestamp(end.to_pydatetime()))

    @staticmethod
    def within(rows, column: str, start: pd.Timestamp, end: pd.Timestamp | None):
        import ibis

        keep = rows[column] >= ibis.timestamp(start.to_pydatetime())
        if end is not None:
            keep &= rows[column] < ibis.timestamp(end.to_pydatetime())
        return rows.filter(keep)


class _Spark:
    # A naive datetime literal is read in the session time zone, as the order_ts values are.
    @staticmethod
    def _literal(at: pd.Timestamp):
        from pyspark.sql import functions as F

        return F.lit(at.to_pydatetime()).cast("timestamp")

    @classmethod
    def before(cls, rows, column: str, end: pd.Timestamp):
        from pyspark.sql import functions as F

        return rows.filter(F.col(column) < cls._literal(end))

    @classmethod
    def within(cls, rows, column: str, start: pd.Timestamp, end: pd.Timestamp | None):
        from pyspark.sql import functions as F

        keep = F.col(column) >= cls._literal(start)
        if end is not None:
            keep &= F.col(column) < cls._literal(end)
        return rows.filter(keep)


@functools.cache
def _engine_of(kind: type):
    if issubclass(kind, pd.DataFrame):
        return _Pandas
    if issubclass(kind, pa.Table):
        return _Arrow
    module = kind.__module__
    # Ibis and PySpark are imported only by code that already uses them.
    if module.startswith("ibis."):
        return _Ibis
    if module.startswith("pyspark."):
        return _Spark
    return None


def _engine(rows):
    engine = _engine_of(type(rows))
    if engine is None:
        raise TypeError(f"cannot cut {type(rows).__name__} by day: expected a pandas, Arrow, Ibis or PySpark table")
    return engine
