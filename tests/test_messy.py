"""Messy shop exports: each rule of features.orders ("Messy exports") on a tiny log, the CLI
on a messy synthetic export against the rates make_messy documents, and clean logs unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.common.errors import InputError, OrderLogError
from features.orders import (
    OUTLIER_ORDER_MULTIPLE,
    cap_outlier_orders,
    load_order_log,
    merge_order_lines,
    validate_order_lines,
)
from features.pipeline import build_features

runner = CliRunner()
HEADER = "customer_id,order_id,order_ts,amount,quantity,product_id\n"
FEES = "POST,DOT,M,BANK CHARGES"


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def features_of(log, cutoff="2024-03-31") -> pd.DataFrame:
    return build_features(log.orders, cutoff).set_index("customer_id")


# --------------------------------------------------------------------------- cancellations


def test_a_full_credit_invoice_removes_the_order_and_its_purchase_day(tmp_path):
    path = write(tmp_path, "c.csv", HEADER + (
        "A,o1,2024-01-01 10:00,10,1,P1\n"
        "A,o2,2024-02-01 10:00,20,1,P1\n"
        "A,C2,2024-02-05 09:30,-20,-1,P1\n"  # UCI style: its own id, a few days later, all lines negative
    ))
    log = load_order_log(path)
    assert log.orders["order_id"].tolist() == ["o1"]
    assert features_of(log).loc["A", "frequency"] == 0  # one purchase day left, not two
    summary = log.summary()
    assert (summary["credit_invoices"], summary["credit_lines_netted"], summary["orders_reversed"]) == (1, 1, 1)
    assert "1 cancellation invoice: 1 line netted into earlier orders; 1 order cancelled or refunded in full dropped" \
        in log.describe()
    # lines merged directly (the online path) follow the same rule
    lines = validate_order_lines(pd.read_csv(path, dtype=str), "c.csv")
    assert merge_order_lines(lines)["order_id"].tolist() == ["o1"]


def test_a_partial_credit_invoice_reduces_the_order(tmp_path):
    path = write(tmp_path, "p.csv", HEADER + (
        "A,o1,2024-01-01 10:00,10,1,P1\n"
        "A,o1,2024-01-01 10:00,30,2,P2\n"
        "A,C1,2024-01-04 08:00,-15,-1,P2\n"  # one of the two P2 sent back
    ))
    orders = load_order_log(path).orders
    assert len(orders) == 1
    assert orders.loc[0, "amount"] == 25.0 and orders.loc[0, "quantity"] == 2.0
    assert orders.loc[0, "order_ts"] == pd.Timestamp("2024-01-01 10:00")


def test_a_credit_goes_to_the_most_recent_earlier_purchase_of_its_product(tmp_path):
    path = write(tmp_path, "r.csv", HEADER + (
        "A,o1,2024-01-01,10,1,P1\n"
        "A,o2,2024-01-20,30,1,P2\n"
        "A,o3,2024-02-01,10,1,P1\n"
        "A,o4,2024-03-01,10,1,P1\n"  # after the cancellation: not what it cancels
        "A,C1,2024-02-10,-10,-1,P1\n"
    ))
    assert load_order_log(path).orders["order_id"].tolist() == ["o1", "o2", "o4"]
    # without product_id the most recent earlier order of anything is cancelled, up to its value
    no_product = write(tmp_path, "n.csv", "customer_id,order_id,order_ts,amount\n"
                       "A,o1,2024-01-01,10\nA,o2,2024-01-20,30\nA,C1,2024-02-10,-30\n")
    assert load_order_log(no_product).orders["order_id"].tolist() == ["o1"]


def test_a_credit_with_nothing_to_cancel_is_dropped_and_counted(tmp_path):
    path = write(tmp_path, "u.csv", HEADER + (
        "A,C0,2023-12-20,-5,-1,P1\n"  # before any purchase
        "A,o1,2024-01-01,20,2,P1\n"
        "A,C1,2024-01-03,-50,-5,P1\n"  # more than was bought: 20 netted, 30 dropped
        "A,o2,2024-02-01,40,1,P2\n"
        "A,C2,2024-02-02,-7,-1,P9\n"  # a product the customer never bought
    ))
    log = load_order_log(path)
    assert log.orders["order_id"].tolist() == ["o2"]
    summary = log.summary()
    assert summary["credit_invoices"] == 3
    assert (summary["credit_lines_netted"], summary["credit_lines_dropped"]) == (1, 2)
    assert summary["credit_amount_dropped"] == pytest.approx(5 + 30 + 7)
    assert "2 lines with nothing to cancel dropped (amount beyond what was bought 42.00)" in log.describe()


# --------------------------------------------------------------------------- non-product lines


def test_exclude_products_removes_fee_lines_and_counts_them(tmp_path):
    path = write(tmp_path, "f.csv", HEADER + (
        "A,o1,2024-01-01,10,1,P1\n"
        "A,o1,2024-01-01,4.5,1,POST\n"
        "A,o2,2024-02-01,20,1,P1\n"
        "A,o2,2024-02-01,1.5,1,post \n"  # typed by hand: matched ignoring case and spaces
        "B,o3,2024-01-05,15,1,BANK CHARGES\n"  # an invoice of fees only
    ))
    without = load_order_log(path)
    assert without.orders["amount"].tolist() == [14.5, 21.5, 15.0]  # fee lines count as spend

    log = load_order_log(path, exclude_products="post, Bank Charges,DOT")
    assert log.orders["amount"].tolist() == [10.0, 20.0]
    assert "B" not in set(log.orders["customer_id"])  # fees are not a purchase
    summary = log.summary()
    assert (summary["excluded_lines"], summary["excluded_amount"]) == (3, 21.0)
    assert summary["products_not_found"] == ["DOT"]
    assert "excluded 3 lines of post, Bank Charges (amount 21.00), no line has product DOT" in log.describe()


def test_exclude_products_needs_a_product_column_and_ids(tmp_path):
    path = write(tmp_path, "x.csv", "customer_id,order_ts,amount\nA,2024-01-01,1\n")
    with pytest.raises(InputError, match=r"--exclude-products: x.csv has no 'product_id' column"):
        load_order_log(path, exclude_products="POST")
    with pytest.raises(InputError, match="--exclude-products: give product ids separated by commas"):
        load_order_log(path, exclude_products=" , ")
    assert load_order_log(path, exclude_products=[]).summary()["excluded_products"] == []


# --------------------------------------------------------------------------- duplicates, extras, minutes


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path):
    path = write(tmp_path, "d.csv", HEADER.strip() + ",description\n" + (
        "A,o1,2024-01-01 10:00,10,1,P1,mug\n"
        "A,o1,2024-01-01 10:00,10,1,P1,mug\n"  # the export repeats the row
        "A,o1,2024-01-01 10:00,10,1,P1,mug\n"
        "A,o2,2024-02-01 10:00,10,1,P1,mug\n"
        "A,o2,2024-02-01 10:00,10,1,P1,mug (blue)\n"  # differs in a column the loader ignores: kept
    ))
    log = load_order_log(path)
    assert log.orders["amount"].tolist() == [10.0, 20.0]
    assert log.summary()["duplicate_rows_dropped"] == 2
    assert "dropped 2 duplicate rows" in log.describe()
    # without order_id every row is an order: two equal rows are two orders
    plain = write(tmp_path, "p.csv", "customer_id,order_ts,amount\nA,2024-01-01,10\nA,2024-01-01,10\n")
    assert len(load_order_log(plain).orders) == 2


def test_extra_columns_are_ignored_and_named_once(tmp_path):
    path = write(tmp_path, "e.csv", "customer_id,order_id,order_ts,amount,description,country,unit_price\n"
                 "A,o1,2024-01-01,10,MUG,China,10\n")
    log = load_order_log(path)
    assert list(log.lines.columns) == ["customer_id", "order_ts", "amount", "order_id"]
    assert log.summary()["ignored_columns"] == ["description", "country", "unit_price"]
    assert log.describe().count("ignored columns: description, country, unit_price") == 1
    assert "ignored" not in load_order_log("cdnow-sample").describe()


def test_timestamps_with_minutes(tmp_path):
    path = write(tmp_path, "m.csv", "customer_id,order_id,order_ts,amount\n"
                 "A,o1,2024-03-01 14:07,10\nA,o2,2024-03-01 23:59,5\nA,o3,2024-03-02 00:01,7\n")
    orders = load_order_log(path).orders
    assert orders["order_ts"].tolist() == [pd.Timestamp("2024-03-01 14:07"), pd.Timestamp("2024-03-01 23:59"),
                                           pd.Timestamp("2024-03-02 00:01")]
    features = build_features(orders, "2024-03-02").set_index("customer_id")
    assert features.loc["A", "frequency"] == 1  # two orders on 1 March are one purchase day


# --------------------------------------------------------------------------- outliers


def test_an_order_far_above_the_median_is_capped_for_spend(tmp_path):
    rows = "".join(f"C{k},o{k},2024-01-{1 + k % 28:02d},{10 + k % 5},1,P1\n" for k in range(40))
    rows += "W,w1,2024-01-10,50,1,P1\nW,w2,2024-02-10,10000000,1,P1\n"  # one wholesale order, 10^6 x the median
    log = load_order_log(write(tmp_path, "o.csv", HEADER + rows))
    cap = OUTLIER_ORDER_MULTIPLE * 12.0
    wholesale = log.orders[log.orders["customer_id"] == "W"]
    assert wholesale["amount"].tolist() == [50.0, cap]  # still an order (counts), its value capped
    summary = log.summary()
    assert (summary["outlier_orders"], summary["outlier_cap"]) == (1, cap)
    assert features_of(log).loc["W", "frequency"] == 1
    assert f"1 order above 250x the median order value capped at {cap:,.2f}" in log.describe()
    # values at or below the cap are left as they are
    orders = log.orders.assign(amount=log.orders["amount"].clip(upper=cap))
    assert cap_outlier_orders(orders)[0] is orders


# --------------------------------------------------------------------------- replenishment


def test_cancelled_lines_are_not_replenishment_purchases(tmp_path):
    path = write(tmp_path, "rp.csv", HEADER + (
        "A,o1,2024-01-01,10,1,P1\n"
        "A,o2,2024-02-01,10,1,P1\n"
        "A,o2,2024-02-01,30,1,P2\n"
        "A,C2,2024-02-03,-10,-1,P1\n"  # P1 of o2 cancelled, P2 kept
    ))
    purchases = load_order_log(path).purchase_lines
    assert purchases[["order_id", "product_id"]].values.tolist() == [["o1", "P1"], ["o2", "P2"]]


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def messy_export(tmp_path_factory):
    from features.synth import generate_order_log, make_messy

    clean = generate_order_log(2000, seed=4)
    messy = make_messy(clean, seed=4)
    path = tmp_path_factory.mktemp("messy") / "export.parquet"
    messy.to_parquet(path, index=False)
    return clean, messy, path


def test_cli_features_on_a_messy_export_counts_each_rule_at_its_rate(messy_export, tmp_path):
    clean, messy, path = messy_export
    out = tmp_path / "f.parquet"
    result = runner.invoke(app(), ["features", "--orders", str(path), "--cutoff", "2025-09-30", "--out", str(out),
                                   "--exclude-products", FEES])
    assert result.exit_code == 0, result.output
    log = load_order_log(path, exclude_products=FEES)
    summary = log.summary()
    assert log.describe() in result.output  # the loading line names every count, once
    n_lines, n_orders = len(clean), clean["order_id"].nunique()
    # make_messy's documented rates: 1% of lines twice; 3% of orders cancelled in full and 2% lose
    # one line (all of a one-line order) by credit invoices 1-14 days later (those after the
    # export's end are cut); about 12% of orders with a fee line; one 1,000x order; one wholesale
    # customer; three extra columns
    one_line = (clean.groupby("order_id").size() == 1).mean()
    assert 0.006 < summary["duplicate_rows_dropped"] / n_lines < 0.014
    assert 0.04 < summary["credit_invoices"] / n_orders < 0.06
    assert abs(summary["orders_reversed"] / n_orders - (0.03 + 0.02 * one_line)) < 0.008
    assert summary["credit_lines_dropped"] <= 0.01 * summary["credit_lines_netted"]
    assert 0.10 < summary["excluded_lines"] / n_orders < 0.14 and summary["products_not_found"] == []
    assert summary["outlier_orders"] == 1
    assert list(summary["heavy_customers"]) == ["wholesale-01"]
    assert summary["ignored_columns"] == ["description", "country", "unit_price"]
    assert not (log.lines["product_id"].isin(FEES.split(","))).any()
    assert (log.orders["amount"] > 0).all()
    features = pd.read_parquet(out)
    assert features["monetary_value"].max() < OUTLIER_ORDER_MULTIPLE * log.orders["amount"].median()


def test_the_engine_loads_a_typed_export_as_the_pandas_loader_does(messy_export, tmp_path):
    """A typed Parquet export is checked and merged by DuckDB (features.order_engine); the
    same export as CSV text goes through the pandas parsers: the same orders, lines and summary."""
    from features.order_engine import EngineOrderLog

    _, messy, path = messy_export
    as_text = tmp_path / "export.csv"
    messy.to_csv(as_text, index=False)
    engine, text = load_order_log(path, exclude_products=FEES), load_order_log(as_text, exclude_products=FEES)
    assert isinstance(engine, EngineOrderLog) and not isinstance(text, EngineOrderLog)
    ours, theirs = engine.summary(), text.summary()
    for key in ("revenue", "excluded_amount", "credit_amount_dropped", "outlier_amount_capped", "outlier_cap"):
        assert ours.pop(key) == pytest.approx(theirs.pop(key), rel=1e-12)
    assert ours == {**theirs, "source": "export.parquet"}
    pd.testing.assert_frame_equal(engine.orders, text.orders, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(engine.lines, text.lines, check_exact=False, rtol=1e-12)
    day = pd.Timestamp("2025-09-30")
    pd.testing.assert_frame_equal(build_features(engine.orders_table(), day), build_features(text.orders, day),
                                  check_exact=False, rtol=1e-12)


def test_the_engine_names_the_first_bad_row_as_the_pandas_loader_does(tmp_path):
    frame = pd.DataFrame({"customer_id": ["a", "b", " ", "c"], "order_id": ["1", None, "3", "4"],
                          "order_ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "1850-01-01"]),
                          "amount": [1.0, 2e16, 3.0, np.inf]})
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path, index=False)
    with pytest.raises(OrderLogError, match=r"^bad.parquet: column 'customer_id' row 3: is empty; every order needs a customer$"):
        load_order_log(path)
    frame["customer_id"] = "a"
    frame.to_parquet(path, index=False)
    with pytest.raises(OrderLogError, match=r"^bad.parquet: column 'order_ts' row 4: '1850-01-01 00:00:00' is out of range"):
        load_order_log(path)
    frame["order_ts"] = pd.Timestamp("2024-01-01")
    frame.to_parquet(path, index=False)
    with pytest.raises(OrderLogError, match=r"^bad.parquet: column 'amount' row 4: is infinite$"):
        load_order_log(path)
    frame["amount"] = [1.0, 2e16, 3.0, 4e16]
    frame.to_parquet(path, index=False)
    with pytest.raises(OrderLogError, match=r"^bad.parquet: column 'amount' row 2 \(and 1 more\): '2e\+16' is too large"):
        load_order_log(path)


def test_the_commands_that_read_orders_take_exclude_products():
    for command in ("features", "train", "backtest", "score", "replenish", "quickstart"):
        result = runner.invoke(app(), [command, "--help"], terminal_width=200)
        assert "--exclude-products" in result.output, command


# --------------------------------------------------------------------------- clean logs


def test_clean_cdnow_features_are_unchanged_by_the_rules():
    """CDNOW needs none of the rules: its features are those of its lines taken as orders."""
    from features.datasets import load_cdnow

    log = load_order_log("cdnow")
    summary = log.summary()
    assert summary["outlier_orders"] == 0 and summary["orders_reversed"] == 0 and summary["returns_dropped"] == 0
    assert log.describe() == ("order log cdnow: 23,570 customers, 69,659 orders, 1997-01-01 to 1998-06-30, "
                              f"revenue {summary['revenue']:,.2f}")
    as_lines = load_cdnow("cdnow")[["customer_id", "order_ts", "amount", "quantity"]]
    as_lines = as_lines.sort_values(["customer_id", "order_ts"], kind="stable", ignore_index=True)
    pd.testing.assert_frame_equal(log.orders, as_lines)
    pd.testing.assert_frame_equal(build_features(log.orders, "1997-09-30"), build_features(as_lines, "1997-09-30"),
                                  check_exact=False, rtol=1e-12)


def test_a_clean_synthetic_log_is_left_as_it_is(tmp_path):
    from features.synth import generate_order_log

    lines = generate_order_log(800, seed=11)
    lines.to_parquet(tmp_path / "clean.parquet", index=False)
    log = load_order_log(tmp_path / "clean.parquet")
    summary = log.summary()
    counted = ("duplicate_rows_dropped", "credit_invoices", "orders_reversed", "outlier_orders", "excluded_lines")
    assert all(summary[k] == 0 for k in counted) and summary["ignored_columns"] == []
    assert log.purchase_lines is log.lines
    pd.testing.assert_frame_equal(log.orders.drop(columns="order_id"),
                                  merge_order_lines(lines).drop(columns="order_id"))


def app():
    from serving.cli import app

    return app


# --------------------------------------------------------------------------- Spark


@pytest.mark.spark
def test_spark_reads_a_messy_export_into_the_same_orders_parity(spark, messy_export):
    from features.spark import read_orders

    _, _, path = messy_export
    local = load_order_log(path, exclude_products=FEES)
    log = read_orders(spark, str(path), exclude_products=FEES)
    try:
        got = log.orders.toPandas()
    finally:
        log.orders.unpersist()
    key = ["customer_id", "order_ts", "amount"]
    expected = local.orders[list(got.columns)].sort_values(key, ignore_index=True)
    got = got.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, check_dtype=False)
    assert (log.first_order_date, log.last_order_date) == (local.first_order_date, local.last_order_date)
    # the same counts, but for the wholesale note that costs Spark another pass
    assert log.description == local.describe().replace("; possible wholesale customers (kept): wholesale-01 "
                                                       f"({local.summary()['heavy_customers']['wholesale-01']} orders)", "")
