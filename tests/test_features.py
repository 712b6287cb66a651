"""Point-in-time features and labels: lifetimes parity, hand-computed values, leakage, invariants."""

from __future__ import annotations

import datetime as dt
import math
import statistics

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lifetimes.utils import summary_data_from_transaction_data

from features.common.errors import CutoffError, OrderLogError
from features.datasets import load_cdnow
from features.pipeline import (
    CORE_FEATURES,
    FEATURES,
    LABELS,
    WINDOWS,
    build_features,
    build_labels,
    build_training_frame,
    describe_features,
    feature_expr,
    label_expr,
    mix_values,
    split_at,
    training_cutoffs,
)

CUTOFF = dt.date(2024, 3, 31)


def orders_frame(rows, **optional) -> pd.DataFrame:
    """Orders from (customer_id, order_ts, amount) tuples, plus optional columns by name."""
    frame = pd.DataFrame(rows, columns=["customer_id", "order_ts", "amount"])
    frame["order_ts"] = pd.to_datetime(frame["order_ts"], format="ISO8601").astype("datetime64[ns]")
    frame["amount"] = frame["amount"].astype("float64")
    for name, values in optional.items():
        frame[name] = values
    return frame


# A: two orders on its first day, then two more days; B: one order late on the cutoff day;
# C: two days, then one order on the horizon's last day and one just after it;
# D: only after the cutoff (not a customer yet at the cutoff).
TINY = [
    ("A", "2024-01-01 10:00", 10.0),
    ("A", "2024-01-01 15:00", 20.0),
    ("A", "2024-01-11 09:00", 5.0),
    ("A", "2024-03-01 12:00", 15.0),
    ("A", "2024-04-05 08:00", 50.0),
    ("B", "2024-03-31 23:30", 7.0),
    ("C", "2023-12-31 18:00", 100.0),
    ("C", "2024-02-15 11:00", 40.0),
    ("C", "2024-06-29 23:59", 60.0),
    ("C", "2024-06-30 00:00", 80.0),
    ("D", "2024-04-02 10:00", 9.0),
]
TINY_CHANNEL = ["community", "community", "storefront", "community", "app", "storefront", "storefront", "community", "app", "app", "app"]
TINY_CATEGORY = ["x", "y", "x", "x", "x", "z", "x", "x", "w", "w", "w"]


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    return orders_frame(TINY, channel=TINY_CHANNEL, category=TINY_CATEGORY, quantity=[1.0, 2, 1, 1, 1, 3, 1, 1, 1, 1, 1])


@pytest.fixture(scope="module")
def tiny_features(tiny) -> pd.DataFrame:
    return build_features(tiny, CUTOFF).set_index("customer_id")


# --------------------------------------------------------------------------- lifetimes parity


@pytest.mark.parametrize("name", ["cdnow", "cdnow-sample"])
def test_btyd_summary_equals_lifetimes_on_cdnow(name):
    lines = load_cdnow(name)
    expected = summary_data_from_transaction_data(
        lines, "customer_id", "order_ts", monetary_value_col="amount", observation_period_end="1997-09-30", freq="D"
    ).sort_index()
    ours = build_features(lines, "1997-09-30", core_only=True).set_index("customer_id")
    assert ours.index.tolist() == expected.index.tolist()
    for column in ["frequency", "recency", "T", "monetary_value"]:
        np.testing.assert_allclose(ours[column], expected[column], rtol=1e-9, atol=1e-9, err_msg=column)
    assert (ours["frequency"] > 0).sum() > 1000 if name == "cdnow" else True


# --------------------------------------------------------------------------- hand-computed values


def test_population_is_customers_with_an_order_on_or_before_the_cutoff(tiny_features):
    assert tiny_features.index.tolist() == ["A", "B", "C"]


def test_hand_computed_btyd_counts_purchase_days(tiny_features):
    a, b, c = (tiny_features.loc[k] for k in "ABC")
    # A bought on Jan 1 (twice), Jan 11 and Mar 1 2024; the cutoff Mar 31 is 90 days after Jan 1
    assert (a.frequency, a.recency, a["T"], a.monetary_value) == (2, 60, 90, 10.0)
    assert (b.frequency, b.recency, b["T"], b.monetary_value) == (0, 0, 0, 0.0)
    assert (c.frequency, c.recency, c["T"], c.monetary_value) == (1, 46, 91, 40.0)


def test_hand_computed_counts_spend_and_first_order_facts(tiny_features):
    a = tiny_features.loc["A"]
    assert (a.n_orders, a.n_purchase_days, a.total_spend, a.avg_order_value) == (4, 3, 50.0, 12.5)
    assert (a.first_day_spend, a.first_day_orders, a.first_gap) == (30.0, 2, 10)
    assert (a.days_since_last, a.tenure_days, a.orders_per_purchase_day) == (30, 90, pytest.approx(4 / 3))
    assert tiny_features.loc["B", "first_day_spend"] == 7.0
    assert math.isnan(tiny_features.loc["B", "first_gap"])
    assert tiny_features.loc["C", "first_gap"] == 46


def test_hand_computed_trailing_windows_end_on_the_cutoff_day(tiny_features):
    a, b = tiny_features.loc["A"], tiny_features.loc["B"]
    # A's Mar 1 order is 30 days back: outside the 30-day window (Mar 2 .. Mar 31), inside 60
    assert [a[f"orders_{w}d"] for w in WINDOWS] == [0, 0, 1, 2, 4, 4]
    assert [a[f"spend_{w}d"] for w in WINDOWS] == [0, 0, 15, 20, 50, 50]
    assert [b[f"orders_{w}d"] for w in WINDOWS] == [1] * 6
    assert (a.orders_prev_90d, a.spend_prev_90d) == (2, 30.0)
    assert a.orders_trend == 0.0 and a.spend_trend == pytest.approx(-0.2)
    assert tiny_features.loc["C", "spend_share_365d"] == 1.0


def test_hand_computed_gaps_are_between_purchase_days(tiny_features):
    a, b, c = (tiny_features.loc[k] for k in "ABC")
    assert (a.gap_mean, a.gap_min, a.gap_max, a.gap_last) == (30, 10, 50, 50)
    assert a.gap_std == pytest.approx(math.sqrt(800))
    assert a.overdue_ratio == 1.0
    assert all(math.isnan(b[k]) for k in ["gap_mean", "gap_std", "gap_min", "gap_max", "gap_last", "overdue_ratio"])
    assert (c.gap_mean, c.gap_min, c.gap_last) == (46, 46, 46)
    assert math.isnan(c.gap_std)
    assert c.overdue_ratio == pytest.approx(45 / 46)


def test_hand_computed_rfm_ranks_and_calendar(tiny_features):
    f = tiny_features
    # days since last: B 0, A 30, C 45; quintile cut points 12, 24, 33, 39 (linear
    # interpolation): A is below two of them, B below all four, C below none -> 3, 5, 1.
    # orders B 1, C 2, A 4 -> cuts 1.4, 1.8, 2.4, 3.2; spend B 7, A 50, C 140 -> 24.2, 41.4, 68, 104
    assert f["rfm_rank_r"].tolist() == [3, 5, 1]
    assert f["rfm_rank_f"].tolist() == [5, 1, 3]
    assert f["rfm_rank_m"].tolist() == [3, 1, 5]
    assert f["rfm_rank_sum"].tolist() == [11, 7, 9]
    assert f["rfm_rank_cell"].tolist() == [353, 511, 135]
    # 2024-03-31 is a Sunday; next 06-18 is 79 days on, the last 11-11 was 141 days before
    assert set(f["days_to_next_sales_day"]) == {79.0}
    assert set(f["days_since_sales_day"]) == {141.0}
    assert set(f["cutoff_month"]) == {3} and set(f["cutoff_weekday"]) == {6}


def test_hand_computed_mix_and_quantity(tiny_features):
    a = tiny_features.loc["A"]
    # before the cutoff: community 4 orders, storefront 3; x 5, y 1, z 1 (app and w come later)
    assert [c for c in tiny_features.columns if c.startswith("share_")] == [
        "share_channel_community",
        "share_channel_storefront",
        "share_category_x",
        "share_category_y",
        "share_category_z",
    ]
    assert (a.share_channel_community, a.share_channel_storefront) == (0.75, 0.25)
    assert (a.share_category_x, a.share_category_y, a.n_categories, a.top_category_share) == (0.75, 0.25, 2, 0.75)
    assert (a.total_quantity, a.avg_quantity) == (5.0, 1.25)
    assert tiny_features.loc["B", "share_category_z"] == 1.0


def test_frame_layout_dtypes_and_registry(tiny, tiny_features):
    frame = build_features(tiny, CUTOFF)
    assert frame.columns[0] == "customer_id"
    assert frame["customer_id"].tolist() == sorted(frame["customer_id"])
    features = frame.columns[1:]
    assert all(frame[c].dtype in (np.dtype("int64"), np.dtype("float64")) for c in features)
    described = describe_features(features)
    assert list(described) == list(features) and all(described.values())
    static = [c for c in features if not c.startswith("share_")]
    assert static == [c for c in FEATURES if c in static]
    assert set(CORE_FEATURES) <= set(features)
    assert len(set(frame.columns)) == frame.shape[1]


def test_optional_columns_appear_only_when_the_log_has_them(tiny):
    plain = build_features(tiny[["customer_id", "order_ts", "amount"]], CUTOFF)
    assert not any(c.startswith("share_") for c in plain.columns)
    assert {"n_categories", "top_category_share", "total_quantity", "avg_quantity"}.isdisjoint(plain.columns)
    full = build_features(tiny, CUTOFF)
    shared = [c for c in plain.columns]
    pd.testing.assert_frame_equal(plain, full[shared])


def test_core_only_is_the_same_numbers(tiny):
    core = build_features(tiny, CUTOFF, core_only=True)
    full = build_features(tiny, CUTOFF)
    assert core.columns.tolist() == ["customer_id", *CORE_FEATURES]
    pd.testing.assert_frame_equal(core, full[core.columns].astype({c: "float64" for c in CORE_FEATURES}))


def test_inputs_pandas_arrow_ibis_and_a_connection_agree(tiny):
    expected = build_features(tiny, CUTOFF)
    pd.testing.assert_frame_equal(build_features(pa.Table.from_pandas(tiny), CUTOFF), expected)
    pd.testing.assert_frame_equal(build_features(ibis.memtable(tiny), CUTOFF), expected)
    con = ibis.duckdb.connect()
    table = con.create_table("orders", tiny)
    pd.testing.assert_frame_equal(build_features(table, "2024-03-31", con=con), expected)
    pd.testing.assert_frame_equal(build_features(tiny, pd.Timestamp("2024-03-31 17:00")), expected)


def test_feature_expr_is_a_lazy_ibis_table(tiny):
    expr = feature_expr(ibis.memtable(tiny), CUTOFF, channel_values=["community"], category_values=[])
    assert isinstance(expr, ibis.Table)
    assert "share_channel_community" in expr.columns and "share_category_x" not in expr.columns


def test_mix_values_are_most_frequent_first_and_only_from_the_past(tiny):
    assert mix_values(tiny, CUTOFF, "channel") == ["community", "storefront"]
    assert mix_values(tiny, "2024-12-31", "channel") == ["app", "community", "storefront"]
    assert mix_values(tiny, CUTOFF, "category", top=1) == ["x"]
    assert mix_values(tiny[["customer_id", "order_ts", "amount"]], CUTOFF, "channel") == []


def test_empty_past_gives_an_empty_frame_with_the_columns(tiny):
    frame = build_features(tiny, "2020-01-01")
    assert len(frame) == 0 and frame.columns[0] == "customer_id" and "frequency" in frame.columns


def test_bad_inputs_are_input_errors(tiny):
    with pytest.raises(OrderLogError, match="missing column.*'amount'"):
        build_features(tiny.drop(columns="amount"), CUTOFF)
    with pytest.raises(CutoffError, match="not a date"):
        build_features(tiny, "yesterday-ish")
    with pytest.raises(CutoffError, match="horizon_days"):
        split_at(tiny, CUTOFF, 0)


# --------------------------------------------------------------------------- labels


def test_hand_computed_labels(tiny):
    labels = build_labels(tiny, CUTOFF, 90).set_index("customer_id")
    assert labels.columns.tolist() == list(LABELS)
    assert labels.index.tolist() == ["A", "B", "C"]
    # the horizon runs Apr 1 .. Jun 29; C's 23:59 order on Jun 29 counts, its Jun 30 one does not
    assert labels.loc["A"].tolist() == [1, 1, 50.0, 5.0, 0]  # D (first order after the cutoff) is not here
    assert labels.loc["B"].tolist() == [0, 0, 0.0, 90.0, 1]
    assert labels.loc["C"].tolist() == [1, 1, 60.0, 90.0, 0]
    assert labels.dtypes.astype(str).tolist() == ["int64", "int64", "float64", "float64", "int64"]


def test_split_at_cuts_by_day(tiny):
    past, future = split_at(tiny, CUTOFF, 90)
    past, future = past.to_pandas(), future.to_pandas()
    assert past["order_ts"].max() == pd.Timestamp("2024-03-31 23:30")
    assert future["order_ts"].min() == pd.Timestamp("2024-04-02 10:00")
    assert future["order_ts"].max() == pd.Timestamp("2024-06-29 23:59")
    assert len(past) + len(future) == len(tiny) - 1


# --------------------------------------------------------------------------- leakage


def test_orders_after_the_cutoff_change_no_feature(tiny):
    before = build_features(tiny, CUTOFF)
    later = orders_frame(
        [
            ("A", "2024-04-01 00:00", 999.0),  # the first instant after the cutoff day
            ("B", "2024-04-01 00:00", 1.0),
            ("E", "2024-04-03 12:00", 5.0),  # a brand-new customer
            ("C", "2030-01-01 00:00", 1e6),
        ],
        channel=["new"] * 4,
        category=["new"] * 4,
        quantity=[9.0] * 4,
    )
    after = build_features(pd.concat([tiny, later], ignore_index=True), CUTOFF)
    pd.testing.assert_frame_equal(before, after)


def test_labels_read_only_the_horizon(tiny):
    before = build_labels(tiny, CUTOFF, 90)
    changed = tiny.copy()
    in_past = changed["order_ts"] < pd.Timestamp("2024-04-01")
    changed.loc[in_past, "amount"] *= 3  # past amounts: features change, labels must not
    beyond = orders_frame([("A", "2024-06-30 00:00", 5.0), ("B", "2025-01-01", 5.0)])
    after = build_labels(pd.concat([changed, beyond], ignore_index=True), CUTOFF, 90)
    pd.testing.assert_frame_equal(before, after)


def test_label_expr_population_is_the_past(tiny):
    labels = label_expr(ibis.memtable(tiny), CUTOFF, 30).to_pandas()
    assert sorted(labels["customer_id"]) == ["A", "B", "C"]


# --------------------------------------------------------------------------- stacked origins


def test_training_cutoffs_have_fully_observed_labels():
    cutoffs = training_cutoffs("2024-06-29", 90, n_origins=4, step_days=30)
    assert cutoffs == [dt.date(2024, 1, 1), dt.date(2024, 1, 31), dt.date(2024, 3, 1), dt.date(2024, 3, 31)]
    assert all(c + dt.timedelta(days=90) <= dt.date(2024, 6, 29) for c in cutoffs)
    assert cutoffs == sorted(cutoffs)


def test_training_frame_stacks_features_and_labels_per_origin(tiny):
    last_label_date = dt.date(2024, 6, 29)
    cutoffs = training_cutoffs(last_label_date, 60, n_origins=2, step_days=45)
    frame = build_training_frame(tiny, cutoffs, 60)
    assert frame.columns[:2].tolist() == ["customer_id", "cutoff"]
    assert set(LABELS) <= set(frame.columns)
    assert sorted(frame["cutoff"].dt.date.unique()) == cutoffs
    assert all(c + dt.timedelta(days=60) <= last_label_date for c in frame["cutoff"].dt.date)
    # every block is exactly what the single-cutoff functions give (mix columns fixed across blocks)
    channels, categories = mix_values(tiny, cutoffs[-1], "channel"), mix_values(tiny, cutoffs[-1], "category")
    for cutoff in cutoffs:
        block = frame[frame["cutoff"].dt.date == cutoff].drop(columns="cutoff").reset_index(drop=True)
        features = build_features(tiny, cutoff, channel_values=channels, category_values=categories)
        expected = features.merge(build_labels(tiny, cutoff, 60), on="customer_id")
        pd.testing.assert_frame_equal(block, expected)


# --------------------------------------------------------------------------- properties


def reference_core(orders: pd.DataFrame, cutoff: dt.date) -> pd.DataFrame:
    """The core features the slow, obvious way: one customer at a time in plain Python."""
    rows = []
    past = orders[orders["order_ts"].dt.date <= cutoff]
    for customer, own in sorted(past.groupby("customer_id"), key=lambda kv: kv[0]):
        day_spend = own.groupby(own["order_ts"].dt.date)["amount"].sum().sort_index()
        days = list(day_spend.index)
        gaps = [(b - a).days for a, b in zip(days, days[1:])]
        ages = [(cutoff - d).days for d in own["order_ts"].dt.date]
        row = {
            "customer_id": customer,
            "frequency": len(days) - 1.0,
            "recency": float((days[-1] - days[0]).days),
            "T": float((cutoff - days[0]).days),
            "monetary_value": float(statistics.fmean(day_spend.iloc[1:])) if gaps else 0.0,
        }
        for w in WINDOWS:
            row[f"orders_{w}d"] = float(sum(a < w for a in ages))
        for w in WINDOWS:
            row[f"spend_{w}d"] = float(sum(x for a, x in zip(ages, own["amount"]) if a < w))
        row["gap_mean"] = statistics.fmean(gaps) if gaps else np.nan
        row["gap_std"] = statistics.stdev(gaps) if len(gaps) > 1 else np.nan
        row["gap_min"] = float(min(gaps)) if gaps else np.nan
        row["gap_last"] = float(gaps[-1]) if gaps else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["customer_id", *CORE_FEATURES])


order_rows = st.lists(
    st.tuples(
        st.sampled_from("abcdefgh"),
        st.integers(0, 500),  # day
        st.integers(0, 86399),  # second of the day
        st.integers(0, 100_000),  # cents
    ),
    min_size=1,
    max_size=120,
)


def rows_to_orders(rows, start: str = "2023-01-01") -> pd.DataFrame:
    begin = pd.Timestamp(start)
    return orders_frame(
        [(c, begin + pd.Timedelta(days=d, seconds=s), cents / 100) for c, d, s, cents in rows],
        channel=[["web", "app"][d % 2] for _, d, _, _ in rows],
    )


def check_properties(rows, later, cutoff_day):
    orders = rows_to_orders(rows)
    cutoff = dt.date(2023, 1, 1) + dt.timedelta(days=cutoff_day)
    features = build_features(orders, cutoff)

    # the same numbers as the obvious per-customer computation
    reference = reference_core(orders, cutoff)
    if reference.empty:
        assert features.empty
        return
    ours = features[["customer_id", *CORE_FEATURES]].astype({c: "float64" for c in CORE_FEATURES})
    pd.testing.assert_frame_equal(ours, reference, check_exact=False, rtol=1e-9, atol=1e-9, check_dtype=False)

    # invariants
    counts = ["frequency", "n_orders", "n_purchase_days", *(f"orders_{w}d" for w in WINDOWS), "orders_prev_90d"]
    assert (features[counts] >= 0).all().all()
    assert (features["recency"] <= features["T"]).all() and (features["recency"] >= 0).all()
    assert features["days_since_last"].between(0, features["T"]).all()
    nested = [f"orders_{w}d" for w in WINDOWS] + ["n_orders"]
    assert (features[nested].diff(axis=1).iloc[:, 1:] >= 0).all().all()
    spend = [f"spend_{w}d" for w in WINDOWS] + ["total_spend"]
    assert (features[spend].diff(axis=1).iloc[:, 1:] >= -1e-9).all().all()
    assert (features["n_purchase_days"] <= features["n_orders"]).all()
    for score in ["rfm_rank_r", "rfm_rank_f", "rfm_rank_m"]:
        assert features[score].between(1, 5).all()
    has_gaps = features["frequency"] > 0
    gaps = features[has_gaps]
    assert (gaps["gap_min"] <= gaps["gap_mean"] + 1e-9).all() and (gaps["gap_mean"] <= gaps["gap_max"] + 1e-9).all()
    assert (gaps["first_gap"] >= gaps["gap_min"]).all() and (gaps["gap_last"] <= gaps["gap_max"]).all()
    assert features.loc[~has_gaps, ["gap_mean", "gap_min", "overdue_ratio"]].isna().all().all()
    assert features["orders_trend"].between(-1, 1).all()

    # no leakage: orders after the cutoff day (new customers among them) change nothing
    future = rows_to_orders(later, start=str(cutoff + dt.timedelta(days=1)))
    future["customer_id"] = future["customer_id"].where(future["amount"] > 500, future["customer_id"] + "-new")
    after = build_features(pd.concat([orders, future], ignore_index=True), cutoff)
    pd.testing.assert_frame_equal(features, after)


# Each example is a whole log of up to eight customers, so a few examples cover many cases;
# the slow variant runs many more.
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=order_rows, later=order_rows, cutoff_day=st.integers(0, 500))
def test_properties_on_random_logs(rows, later, cutoff_day):
    check_properties(rows, later, cutoff_day)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=order_rows, later=order_rows, cutoff_day=st.integers(0, 500))
def test_properties_on_many_random_logs(rows, later, cutoff_day):
    check_properties(rows, later, cutoff_day)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(rows=order_rows, cutoff_day=st.integers(0, 500))
def test_btyd_equals_lifetimes_on_random_logs(rows, cutoff_day):
    orders = rows_to_orders(rows)
    cutoff = dt.date(2023, 1, 1) + dt.timedelta(days=cutoff_day)
    ours = build_features(orders, cutoff, core_only=True).set_index("customer_id")
    past = orders[orders["order_ts"] < pd.Timestamp(cutoff) + pd.Timedelta(days=1)]
    if past.empty:
        assert ours.empty
        return
    expected = summary_data_from_transaction_data(
        past, "customer_id", "order_ts", monetary_value_col="amount", observation_period_end=str(cutoff), freq="D"
    ).sort_index()
    for column in ["frequency", "recency", "T", "monetary_value"]:
        np.testing.assert_allclose(ours[column], expected[column], rtol=1e-9, atol=1e-9)


@pytest.mark.spark
@pytest.mark.slow
def test_the_same_expressions_on_pyspark_give_the_same_frame(tiny, spark):
    con = ibis.pyspark.connect(spark)
    spark.createDataFrame(tiny).createOrReplaceTempView("orders")
    table = con.table("orders")
    got = con.to_pyarrow(feature_expr(table, CUTOFF)).to_pandas().sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(got, build_features(tiny, CUTOFF), check_dtype=False)
    labels = con.to_pyarrow(label_expr(table, CUTOFF, 90)).to_pandas().sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(labels, build_labels(tiny, CUTOFF, 90), check_dtype=False)


def test_compiled_sql_path_equals_the_ibis_expression():
    """build_features reuses compiled SQL when the mix values are fixed; it must give what Ibis gives."""
    from features import pipeline
    from features.orders import merge_order_lines
    from features.synth import generate_order_log

    orders = merge_order_lines(generate_order_log(800, seed=11))
    cutoff = "2025-03-31"
    channels = pipeline.mix_values(orders, cutoff, "channel")
    categories = pipeline.mix_values(orders, cutoff, "category")
    compiled = pipeline.build_features(orders, cutoff, channel_values=channels, category_values=categories)
    expr = pipeline.feature_expr(pipeline._as_table(orders), cutoff, channel_values=channels, category_values=categories)
    reference = pipeline._execute(expr, None, own_backend=False)
    pd.testing.assert_frame_equal(compiled, reference, check_exact=False, rtol=1e-12, atol=1e-9)
    one = orders[orders["customer_id"] == compiled["customer_id"].iloc[3]]
    alone = pipeline.build_features(one, cutoff, channel_values=channels, category_values=categories)
    own = [c for c in alone.columns if not c.startswith("rfm_")]  # RFM ranks within the population given
    pd.testing.assert_frame_equal(alone[own], compiled.iloc[[3]].reset_index(drop=True)[own], check_exact=False, rtol=1e-12)
