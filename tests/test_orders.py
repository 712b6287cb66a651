"""The order-log contract: sources, mapping, line merging, returns, and every bad input."""

from __future__ import annotations

import gzip

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.common.errors import CutoffError, InputError, OrderLogError
from features.orders import (
    check_cutoff,
    load_order_log,
    merge_order_lines,
    parse_column_map,
    parse_date,
)

GOOD = "customer_id,order_ts,amount\nA,2024-01-01,10\nA,2024-02-01,5.5\nB,2024-01-15,7\n"


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_builtin_cdnow_logs_have_the_published_sizes():
    master = load_order_log("cdnow")
    sample = load_order_log("cdnow-sample")
    assert master.orders["customer_id"].nunique() == 23570
    assert sample.orders["customer_id"].nunique() == 2357
    assert len(master.lines) == 69659
    assert master.first_order_date == pd.Timestamp("1997-01-01")
    assert master.last_order_date == pd.Timestamp("1998-06-30")
    assert set(sample.orders["customer_id"]) <= set(master.orders["customer_id"])


def test_csv_parquet_and_duckdb_sources_load_the_same_orders(tmp_path):
    csv = write(tmp_path, "orders.csv", GOOD)
    from_csv = load_order_log(csv).orders
    from_csv.to_parquet(tmp_path / "orders.parquet")
    from_parquet = load_order_log(tmp_path / "orders.parquet").orders
    con = duckdb.connect(str(tmp_path / "shop.duckdb"))
    con.execute("create table orders as select * from read_csv_auto(?)", [str(csv)])
    con.close()
    from_duckdb = load_order_log(f"{tmp_path / 'shop.duckdb'}:orders").orders
    for other in (from_parquet, from_duckdb):
        pd.testing.assert_frame_equal(from_csv, other[from_csv.columns])
    assert from_csv["amount"].tolist() == [10.0, 5.5, 7.0]


def test_semicolon_tab_and_gzip_csv_are_read(tmp_path):
    semi = write(tmp_path, "semi.csv", GOOD.replace(",", ";"))
    tab = write(tmp_path, "tab.tsv", GOOD.replace(",", "\t"))
    zipped = tmp_path / "orders.csv.gz"
    zipped.write_bytes(gzip.compress(GOOD.encode()))
    for path in (semi, tab, zipped):
        assert len(load_order_log(path).orders) == 3


def test_column_map_and_case_insensitive_headers(tmp_path):
    path = write(tmp_path, "shop.csv", "Cust,Date,Customer_Note,AMOUNT\nA,2024-01-01,x,3\n")
    log = load_order_log(path, "customer_id=Cust,order_ts=Date")
    assert log.orders.loc[0, "customer_id"] == "A"
    assert log.orders.loc[0, "amount"] == 3.0


def test_parse_column_map_rejects_bad_items():
    assert parse_column_map("customer_id=cust, order_ts=date") == {"cust": "customer_id", "date": "order_ts"}
    with pytest.raises(InputError, match="must look like contract_name=your_column"):
        parse_column_map("customer_id")
    with pytest.raises(InputError, match="'price' is not an order-log column"):
        parse_column_map("price=value")


def test_lines_merge_into_orders_and_returns_net_out(tmp_path):
    path = write(
        tmp_path,
        "lines.csv",
        "customer_id,order_id,order_ts,amount,quantity,category,channel\n"
        "A,o1,2024-01-01 10:00,10,1,books,community\n"
        "A,o1,2024-01-01 10:05,30,2,music,community\n"
        "A,o1,2024-01-09,-10,-1,books,community\n"  # partial return of o1
        "A,o2,2024-02-01,20,1,books,storefront\n"
        "B,o3,2024-01-03,15,1,music,storefront\n"
        "B,o3,2024-01-20,-15,-1,music,storefront\n"  # o3 fully refunded
        "B,o4,2024-03-01,0,1,samples,community\n",  # a free sample is still an order
    )
    orders = load_order_log(path).orders
    assert orders["order_id"].tolist() == ["o1", "o2", "o4"]
    first = orders.iloc[0]
    assert first["amount"] == 30.0 and first["quantity"] == 2.0
    assert first["order_ts"] == pd.Timestamp("2024-01-01 10:00")
    assert first["category"] == "music" and first["channel"] == "community"


def test_returns_without_order_id_are_dropped_and_counted(tmp_path):
    path = write(tmp_path, "r.csv", GOOD + "A,2024-02-10,-5.5\n")
    log = load_order_log(path)
    assert log.n_returns_dropped == 1
    assert len(log.orders) == 3 and (log.orders["amount"] >= 0).all()


def test_typed_parquet_without_order_id_loads_as_its_csv_does(tmp_path):
    """The engine path (typed Parquet: integer ids, a date column) and the pandas path (CSV)."""
    import datetime as dt

    from features.order_engine import EngineOrderLog

    frame = pd.DataFrame({"customer_id": [17, 17, 18, 18], "amount": [10.0, -2.0, 7.0, 3.0],
                          "order_ts": [dt.date(2024, 1, 1), dt.date(2024, 1, 9), dt.date(2024, 1, 2), dt.date(2024, 1, 5)],
                          "channel": ["web ", None, "app", "app"]})
    frame.to_parquet(tmp_path / "r.parquet", index=False)
    frame.to_csv(tmp_path / "r.csv", index=False)
    engine, text = load_order_log(tmp_path / "r.parquet"), load_order_log(tmp_path / "r.csv")
    assert isinstance(engine, EngineOrderLog)
    assert engine.n_returns_dropped == text.n_returns_dropped == 1
    assert engine.describe() == text.describe().replace("r.csv", "r.parquet")
    pd.testing.assert_frame_equal(engine.orders, text.orders)
    assert engine.orders["channel"].tolist() == ["web", "app", "app"]


def test_same_day_orders_stay_separate_orders(tmp_path):
    path = write(tmp_path, "d.csv", "customer_id,order_ts,amount\nA,2024-01-01 09:00,1\nA,2024-01-01 18:00,2\n")
    assert len(load_order_log(path).orders) == 2


def test_timezones_keep_local_wall_clock_and_numeric_ids_stay_integral(tmp_path):
    path = write(tmp_path, "tz.csv", "customer_id,order_ts,amount\n17,2024-01-01T23:30:00+08:00,1\n")
    orders = load_order_log(path).orders
    assert orders.loc[0, "order_ts"] == pd.Timestamp("2024-01-01 23:30")
    frame = pd.DataFrame({"customer_id": [17.0, 18.0], "order_ts": pd.to_datetime(["2024-01-01", "2024-01-02"]), "amount": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "ids.parquet")
    assert load_order_log(tmp_path / "ids.parquet").orders["customer_id"].tolist() == ["17", "18"]


BAD_INPUTS = [
    ("missing.csv", "customer_id,amount\nA,1\n", r"missing.csv: missing required column 'order_ts' \(columns: customer_id, amount\)"),
    ("misnamed.csv", "cust_id,order_ts,amount\nA,2024-01-01,1\n", r"missing required column 'customer_id'.*--map customer_id=cust_id"),
    ("dates.csv", GOOD + "C,yesterday,3\n", r"dates.csv: column 'order_ts' line 5: 'yesterday' is not a date"),
    ("amounts.csv", GOOD + "C,2024-01-02,abc\n", r"amounts.csv: column 'amount' line 5: 'abc' is not a number"),
    ("currency.csv", GOOD + "C,2024-01-02,$12.00\n", r"column 'amount' line 5: '\$12.00' is not a number; write plain numbers"),
    ("infinite.csv", GOOD + "C,2024-01-02,inf\n", r"column 'amount' line 5: is infinite"),
    ("nullid.csv", GOOD + ",2024-01-02,3\n,2024-01-03,3\n", r"column 'customer_id' line 5 \(and 1 more\): is empty"),
    ("nulldate.csv", GOOD + "C,,3\n", r"column 'order_ts' line 5: is empty"),
    ("nullamount.csv", GOOD + "C,2024-01-02,\n", r"column 'amount' line 5: is empty"),
    ("zero.csv", b"", r"zero.csv: the file is empty \(0 bytes\)"),
    ("blank.csv", "\n\n", r"blank.csv: the file has no header and no rows"),
    ("header.csv", "customer_id,order_ts,amount\n", r"header.csv: has a header but no rows"),
    ("delim.csv", "customer_id,order_ts,amount\nA;2024-01-01;1\n", r"delim.csv: line 2 is separated by ';' but the header by ','"),
    ("fields.csv", GOOD + "C,2024-01-02,3,extra\n", r"fields.csv: line 5 has 4 fields but the header has 3"),
    ("latin1.csv", "customer_id,order_ts,amount\nJos\xe9,2024-01-01,1\n".encode("latin-1"), r"latin1.csv: line 2 is not UTF-8 text \(byte 0xe9 at character 4\); save the file as UTF-8"),
    ("binary.csv", b"\x00\x01\x02garbage", r"binary.csv: is binary, not text, not CSV text"),
    ("workbook.csv", b"PK\x03\x04rest-of-zip", r"workbook.csv: is a zip archive \(an Excel workbook\?\), not CSV text"),
    ("text.parquet", GOOD, r"text.parquet: is not a Parquet file; it looks like text \(a CSV\? rename it to .csv\)"),
    ("orders.xlsx", b"PK\x03\x04", r"orders.xlsx: unsupported file type '.xlsx'"),
    ("allreturns.csv", "customer_id,order_ts,amount\nA,2024-01-01,-3\n", r"allreturns.csv: no orders left after dropping 1 returns"),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_get_one_clear_line(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(OrderLogError, match=message) as caught:
        load_order_log(path)
    assert "\n" not in str(caught.value)


def test_parquet_written_as_csv_is_named(tmp_path):
    path = tmp_path / "orders.csv"
    pd.DataFrame({"customer_id": ["A"], "order_ts": ["2024-01-01"], "amount": [1.0]}).to_parquet(path)
    with pytest.raises(OrderLogError, match=r"orders.csv: is a Parquet file, not CSV text; rename it to .parquet"):
        load_order_log(path)


def test_parquet_with_wrong_types_is_named(tmp_path):
    path = tmp_path / "typed.parquet"
    pd.DataFrame({"customer_id": ["A", "B"], "order_ts": ["2024-01-01", "soon"], "amount": [1.0, 2.0]}).to_parquet(path)
    with pytest.raises(OrderLogError, match=r"typed.parquet: column 'order_ts' row 2: 'soon' is not a date"):
        load_order_log(path)
    path = tmp_path / "nan.parquet"
    pd.DataFrame({"customer_id": ["A"], "order_ts": pd.to_datetime(["2024-01-01"]), "amount": [np.nan]}).to_parquet(path)
    with pytest.raises(OrderLogError, match=r"nan.parquet: column 'amount' row 1: is empty"):
        load_order_log(path)


def test_missing_file_duckdb_table_and_map_column_are_named(tmp_path):
    with pytest.raises(OrderLogError, match=r"nothere.csv: no such file or folder \(built-in logs: cdnow, cdnow-sample\)"):
        load_order_log("nothere.csv")
    db = tmp_path / "shop.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create table sales(a int)")
    con.close()
    with pytest.raises(OrderLogError, match=r"shop.duckdb: has no table 'orders' \(tables: sales\)"):
        load_order_log(f"{db}:orders")
    with pytest.raises(OrderLogError, match=r"shop.duckdb: name the table too"):
        load_order_log(db)
    path = write(tmp_path, "o.csv", GOOD)
    with pytest.raises(OrderLogError, match=r"--map order_ts=date: there is no column 'date'"):
        load_order_log(path, "order_ts=date")


def test_dates_and_cutoffs():
    assert parse_date("1997-09-30", "--cutoff") == pd.Timestamp("1997-09-30")
    with pytest.raises(InputError, match=r"--cutoff: '1997-13-01' is not a date; use YYYY-MM-DD"):
        parse_date("1997-13-01", "--cutoff")
    log = load_order_log("cdnow-sample")
    check_cutoff(log, pd.Timestamp("1997-09-30"), horizon_days=90)
    with pytest.raises(CutoffError, match=r"--cutoff 1996-01-01 is before the first order in cdnow-sample \(1997-01-01\)"):
        check_cutoff(log, pd.Timestamp("1996-01-01"))
    # A date after the last order is an as-of date like any other (it used to be refused);
    # more than the horizon after it, it comes with one warning line.
    assert check_cutoff(log, pd.Timestamp("1998-07-01"), stale_after_days=90) is None
    assert check_cutoff(log, pd.Timestamp("1999-01-01"), stale_after_days=90) == (
        "--cutoff 1999-01-01 is 185 days after the last order in cdnow-sample (1998-06-30), "
        "more than the 90-day horizon: is the export stale?"
    )
    with pytest.raises(CutoffError, match=r"1998-05-01 \+ 90 days runs past the last order .* on or before 1998-04-01"):
        check_cutoff(log, pd.Timestamp("1998-05-01"), horizon_days=90)


def test_merge_without_order_id_keeps_each_row():
    lines = pd.DataFrame(
        {
            "customer_id": pd.Series(["B", "A"], dtype="str"),
            "order_ts": pd.to_datetime(["2024-01-02", "2024-01-01"]),
            "amount": [2.0, 1.0],
        }
    )
    orders = merge_order_lines(lines)
    assert orders["customer_id"].tolist() == ["A", "B"]
