"""The time cut tries to leak: through every engine, an order one second after the as-of day
must stay out and one at 23:59:59 on the day must count."""

from __future__ import annotations

import datetime as dt

import ibis
import pandas as pd
import pyarrow as pa
import pytest

from features.common.errors import CutoffError, InputError
from features.timecut import after, as_day, between, day_end, in_horizon, on_or_before, until

DAY = "2024-03-10"
HORIZON = 3

# (customer, timestamp): which side of the 2024-03-10 cut, 3-day horizon, each one lands on
ORDERS = pd.DataFrame(
    {
        "customer_id": ["day_start", "day_last_second", "next_midnight", "next_second", "horizon_last_second",
                        "horizon_over"],
        "order_ts": pd.to_datetime(["2024-03-10 00:00:00", "2024-03-10 23:59:59", "2024-03-11 00:00:00",
                                    "2024-03-11 00:00:01", "2024-03-13 23:59:59", "2024-03-14 00:00:00"]),
        "amount": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    }
)
PAST = {"day_start", "day_last_second"}
FUTURE = {"next_midnight", "next_second", "horizon_last_second"}
AFTER = FUTURE | {"horizon_over"}


def _ids(rows) -> set[str]:
    if isinstance(rows, pd.DataFrame):
        return set(rows["customer_id"])
    if isinstance(rows, pa.Table):
        return set(rows.column("customer_id").to_pylist())
    if hasattr(rows, "execute"):
        return set(rows.execute()["customer_id"])
    return {row["customer_id"] for row in rows.collect()}


ENGINES = {
    "pandas": lambda frame: frame,
    "arrow": lambda frame: pa.Table.from_pandas(frame, preserve_index=False),
    "ibis": lambda frame: ibis.memtable(frame),
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("day", [DAY, dt.date(2024, 3, 10), dt.datetime(2024, 3, 10, 12, 30), pd.Timestamp("2024-03-10 18:00")])
def test_no_engine_leaks_the_next_day(engine, day):
    rows = ENGINES[engine](ORDERS)
    assert _ids(until(rows, day)) == PAST
    assert _ids(between(rows, day, HORIZON)) == FUTURE
    assert _ids(after(rows, day)) == AFTER
    assert _ids(until(rows, day, horizon_days=HORIZON)) == PAST | FUTURE


def test_pandas_mask_and_day_end():
    mask = on_or_before(ORDERS["order_ts"], DAY)
    assert set(ORDERS.loc[mask, "customer_id"]) == PAST
    assert day_end(DAY) == pd.Timestamp("2024-03-11")
    assert day_end(DAY, HORIZON) == pd.Timestamp("2024-03-14")


def test_each_row_cut_at_its_own_day():
    contacts = pd.Series(pd.to_datetime(["2024-03-10", "2024-03-10 15:00", "2024-03-07", "2024-03-07"], format="ISO8601"))
    stamps = pd.Series(pd.to_datetime(["2024-03-10 23:59:59", "2024-03-11 00:00:00", "2024-03-10 23:59:59",
                                       "2024-03-11 00:00:00"], format="ISO8601"))
    # day itself out, first second of the next day in, last second of day + H in, first second after out
    assert in_horizon(stamps, contacts, HORIZON).tolist() == [False, True, True, False]


def test_arrow_keeps_its_timestamp_unit():
    table = pa.table({"customer_id": ["in", "out"],
                      "order_ts": pa.array([dt.datetime(2024, 3, 10, 23, 59, 59, 999999), dt.datetime(2024, 3, 11)],
                                           type=pa.timestamp("us"))})
    assert _ids(until(table, DAY)) == {"in"}


def test_bad_days_and_horizons_are_one_line_errors():
    with pytest.raises(CutoffError, match=r"cutoff: 'yesterday' is not a date; use YYYY-MM-DD"):
        as_day("yesterday")
    with pytest.raises(InputError, match="horizon_days: must be at least 1 day, got 0"):
        between(ORDERS, DAY, 0)
    with pytest.raises(TypeError, match="cannot cut list by day"):
        until([1, 2], DAY)


@pytest.mark.spark
def test_spark_does_not_leak_the_next_day(spark):
    rows = spark.createDataFrame(ORDERS)
    assert _ids(until(rows, DAY)) == PAST
    assert _ids(between(rows, DAY, HORIZON)) == FUTURE
    assert _ids(after(rows, DAY)) == AFTER
