"""The synthetic order log: schema, determinism and the patterns models must find in it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.common.errors import InputError
from features.synth import (
    COLUMNS,
    REPLENISHMENT_CYCLE_DAYS,
    SPRING_FESTIVAL,
    SPRING_FESTIVAL_QUIET,
    generate_order_log,
)

N_CUSTOMERS = 2000


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return generate_order_log(N_CUSTOMERS, seed=7)


@pytest.fixture(scope="module")
def orders(log: pd.DataFrame) -> pd.DataFrame:
    return log.drop_duplicates("order_id")


@pytest.fixture(scope="module")
def daily_orders(orders: pd.DataFrame) -> pd.Series:
    days = pd.date_range("2023-01-01", "2025-12-31", freq="D")
    return orders.groupby(orders["order_ts"].dt.normalize()).size().reindex(days, fill_value=0)


def test_same_seed_same_log(log):
    pd.testing.assert_frame_equal(generate_order_log(N_CUSTOMERS, seed=7), log)


def test_different_seeds_differ(log):
    other = generate_order_log(N_CUSTOMERS, seed=8)
    assert len(other) != len(log) or not other["order_ts"].equals(log["order_ts"])
    assert not np.isclose(other["amount"].sum(), log["amount"].sum())


def test_schema(log):
    assert list(log.columns) == COLUMNS
    for column in ["customer_id", "order_id", "product_id", "category", "channel"]:
        assert isinstance(log[column].dtype, pd.StringDtype), column
    assert log["order_ts"].dtype == "datetime64[ns]"
    assert log["amount"].dtype == "float64"
    assert log["quantity"].dtype == "float64"
    assert log.notna().all().all()
    assert log["customer_id"].str.fullmatch(r"c\d{7}").all()
    assert log["order_id"].str.fullmatch(r"o\d{9}").all()
    assert log["product_id"].str.fullmatch(r"[a-z_]+-\d{3}").all()
    assert (log["product_id"].str.rsplit("-", n=1).str[0] == log["category"]).all()
    assert set(log["channel"]) == {"community", "storefront"}


def test_sorted_by_time_then_order_id(log):
    ts = log["order_ts"].to_numpy()
    ids = log["order_id"].to_numpy()
    assert (ts[1:] >= ts[:-1]).all()
    ties = ts[1:] == ts[:-1]
    assert (ids[1:][ties] >= ids[:-1][ties]).all()


def test_dates_inside_the_window_and_times_of_day(log):
    assert log["order_ts"].min() >= pd.Timestamp("2023-01-01")
    assert log["order_ts"].max() < pd.Timestamp("2026-01-01")
    assert (log["order_ts"] != log["order_ts"].dt.normalize()).mean() > 0.95
    hours = log["order_ts"].dt.hour.value_counts(normalize=True).reindex(range(24), fill_value=0.0)
    assert hours.loc[19:22].sum() > hours.loc[2:5].sum() * 5


def test_other_window_is_respected():
    short = generate_order_log(500, seed=1, start="2024-03-01", end="2024-06-30")
    assert len(short) > 0
    assert short["order_ts"].min() >= pd.Timestamp("2024-03-01")
    assert short["order_ts"].max() < pd.Timestamp("2024-07-01")


def test_amounts_positive_in_cents_and_quantities_whole(log):
    assert (log["amount"] > 0).all()
    assert np.allclose(log["amount"] * 100, np.round(log["amount"] * 100), atol=1e-6)
    assert (log["quantity"] >= 1).all()
    assert (log["quantity"] == np.floor(log["quantity"])).all()
    assert log["quantity"].max() <= 3


def test_volume_and_lines_per_order(log, orders):
    assert 7 <= len(orders) / log["customer_id"].nunique() <= 13
    lines = log.groupby("order_id").size()
    assert 0.08 <= (lines > 1).mean() <= 0.18
    assert lines.max() <= 3


def test_lines_of_an_order_share_customer_time_and_channel(log):
    per_order = log.groupby("order_id")[["customer_id", "order_ts", "channel"]].nunique()
    assert (per_order == 1).all().all()
    assert log["order_id"].nunique() == log.groupby(["customer_id", "order_id"]).ngroups


def test_customers_join_over_the_whole_period_most_in_the_first_year(orders):
    first_year = orders.groupby("customer_id")["order_ts"].min().dt.year.value_counts(normalize=True)
    assert first_year[2023] > first_year[2024]
    assert first_year[2023] > first_year[2025]
    assert first_year[2025] > 0.15


def test_purchase_rates_are_heterogeneous(orders):
    counts = orders.groupby("customer_id").size()
    assert (counts == 1).mean() > 0.1
    assert counts.quantile(0.9) >= 4 * counts.median()


def _replenishment_gaps(log: pd.DataFrame) -> pd.DataFrame:
    """Consecutive purchases of a replenishment category by customers with at least 3."""
    lines = log[log["category"].isin(list(REPLENISHMENT_CYCLE_DAYS))]
    lines = lines.sort_values(["customer_id", "category", "order_ts"])
    by = lines.groupby(["customer_id", "category"])
    lines = lines.assign(
        gap_days=by["order_ts"].diff().dt.total_seconds() / 86400,
        units_before=by["quantity"].shift(),
        purchases=by["order_ts"].transform("size"),
    )
    return lines[(lines["purchases"] >= 3) & lines["gap_days"].notna()]


def test_replenishment_gaps_follow_the_category_cycle(log):
    gaps = _replenishment_gaps(log)
    assert set(gaps["category"]) == set(REPLENISHMENT_CYCLE_DAYS)
    for category, cycle in REPLENISHMENT_CYCLE_DAYS.items():
        these = gaps[gaps["category"] == category]
        assert len(these) >= 50, category
        per_unit = (these["gap_days"] / these["units_before"]).median()
        assert abs(per_unit - cycle) <= 0.1 * cycle, (category, per_unit)
        expected = cycle * these["units_before"].mean()
        assert abs(these["gap_days"].median() - expected) <= 0.25 * expected, category


def test_more_units_last_longer(log):
    gaps = _replenishment_gaps(log)
    gaps = gaps.assign(cycles=gaps["gap_days"] / gaps["category"].map(REPLENISHMENT_CYCLE_DAYS))
    by_units = gaps.groupby("units_before")["cycles"].median()
    assert by_units[2] > 1.6 * by_units[1]


def test_replenishment_gaps_are_regular(log):
    gaps = _replenishment_gaps(log)
    gaps = gaps.assign(per_unit=gaps["gap_days"] / gaps["units_before"])
    spread = gaps.groupby(["customer_id", "category"])["per_unit"].agg(lambda g: g.std() / g.mean())
    assert spread.median() < 0.3


def test_eleven_eleven_and_six_eighteen_peaks(daily_orders):
    mean_day = daily_orders.mean()
    for year in (2023, 2024, 2025):
        assert daily_orders[pd.Timestamp(year, 11, 11)] > 5 * mean_day
        assert daily_orders[pd.Timestamp(year, 6, 18)] > 3 * mean_day
    # Orders held back for the festival leave the days before it thinner than usual.
    before = sum(daily_orders[pd.Timestamp(y, 11, 1) : pd.Timestamp(y, 11, 10)].mean() for y in (2024, 2025))
    after = sum(daily_orders[pd.Timestamp(y, 11, 20) : pd.Timestamp(y, 11, 29)].mean() for y in (2024, 2025))
    assert before < 0.85 * after


def test_spring_festival_is_quiet(daily_orders):
    lo, hi = SPRING_FESTIVAL_QUIET
    quiet, usual = [], []
    for year in (2024, 2025):
        new_year = pd.Timestamp(SPRING_FESTIVAL[year])
        quiet.append(daily_orders[new_year + pd.Timedelta(days=lo) : new_year + pd.Timedelta(days=hi - 1)].mean())
        usual.append(daily_orders[new_year - pd.Timedelta(days=35) : new_year + pd.Timedelta(days=lo - 1)].mean())
    assert sum(quiet) < 0.6 * sum(usual)


def test_community_customers_reorder_more_regularly(orders):
    orders = orders.sort_values(["customer_id", "order_ts"])
    gap = orders.groupby("customer_id")["order_ts"].diff().dt.total_seconds() / 86400
    per_customer = (
        orders.assign(gap=gap, community=orders["channel"] == "community")
        .groupby("customer_id")
        .agg(n=("gap", "size"), community=("community", "mean"), cv=("gap", lambda g: g.std() / g.mean()))
    )
    per_customer = per_customer[per_customer["n"] >= 5]
    community_cv = per_customer.loc[per_customer["community"] > 0.5, "cv"].median()
    storefront_cv = per_customer.loc[per_customer["community"] < 0.5, "cv"].median()
    assert community_cv < storefront_cv - 0.1


def test_customers_have_their_own_order_value_level(orders):
    other = orders[~orders["category"].isin(list(REPLENISHMENT_CYCLE_DAYS))]
    halves = other.assign(half=other.groupby("customer_id").cumcount() % 2)
    means = halves.groupby(["customer_id", "half"])["amount"].mean().unstack().dropna().rank()
    assert means[0].corr(means[1]) > 0.3


def test_small_populations_work():
    one = generate_order_log(1, seed=3)
    assert list(one.columns) == COLUMNS
    assert one["customer_id"].nunique() <= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_customers": 0}, "positive integer"),
        ({"n_customers": 10, "start": "2024-01-01", "end": "2023-01-01"}, "before start"),
        ({"n_customers": 10, "start": "2010-01-01", "end": "2011-01-01"}, "Spring Festival"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        generate_order_log(**kwargs)


def test_messy_export_carries_each_kind_of_mess_at_its_rate():
    from features.synth import FEE_PRODUCTS, make_messy

    clean = generate_order_log(2000, seed=5)
    messy = make_messy(clean, seed=5)
    n_orders = clean["order_id"].nunique()
    credit = messy[messy["order_id"].str.startswith("C")]
    assert (credit["amount"] < 0).all() and (credit["quantity"] < 0).all()
    fully = credit.groupby("order_id").size().reindex("C" + clean["order_id"].unique()).dropna()
    assert 0.01 < credit["order_id"].nunique() / n_orders < 0.08
    assert len(fully) > 0
    refunds = messy[(messy["amount"] < 0) & ~messy["order_id"].str.startswith("C")]
    assert 0.005 < refunds["order_id"].nunique() / n_orders < 0.02
    fees = messy[messy["product_id"].isin(list(FEE_PRODUCTS))]
    assert 0.08 < fees["order_id"].nunique() / n_orders < 0.16
    assert messy.duplicated().sum() >= 0.005 * len(clean)
    order_values = messy[messy["amount"] > 0].groupby("order_id")["amount"].sum()
    assert order_values.max() > 500 * order_values.median()
    assert (messy["customer_id"] == "wholesale-01").sum() > 200
    assert {"description", "country", "unit_price"} <= set(messy.columns)
    assert (messy["order_ts"].dt.second == 0).all()
    assert messy["order_ts"].max() < clean["order_ts"].max().normalize() + pd.Timedelta(days=1)


def test_synth_months_makes_a_young_shop(tmp_path):
    from typer.testing import CliRunner

    from serving.cli import app

    out = tmp_path / "young.parquet"
    result = CliRunner().invoke(app, ["synth", "--customers", "300", "--months", "7", "--end", "2025-12-31", "--out", str(out)])
    assert result.exit_code == 0, result.output
    log = pd.read_parquet(out)
    assert log["order_ts"].min() >= pd.Timestamp("2025-06-01")
    assert log["order_ts"].max() < pd.Timestamp("2026-01-01")
    refused = CliRunner().invoke(app, ["synth", "--customers", "3", "--months", "7", "--start", "2024-01-01", "--out", str(out)])
    assert refused.exit_code == 2
