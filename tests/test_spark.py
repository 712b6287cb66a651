"""Spark engine: the same features and scores as the DuckDB path, read from Spark sources.

The tests that start Spark share one local session and are marked ``spark`` (deselect
with ``-m "not spark"``); the checks of the one-line errors for a missing PySpark or Java
need no JVM and run in the fast suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.common.errors import InputError, OrderLogError
from features.orders import load_order_log
from features.pipeline import build_features

runner = CliRunner()
SYNTH_CUTOFF = "2025-06-30"


@pytest.fixture(scope="session")
def synth_lines_path(tmp_path_factory):
    """A synthetic log of order lines as Parquet, with the rules' edge cases added.

    A return line netted into its order, an order refunded in full (dropped), a line
    without an order id (an order of its own); nanosecond timestamps, as pandas writes them.
    """
    from features.synth import generate_order_log

    lines = generate_order_log(2000, seed=3)
    first = lines.iloc[0]
    refunded = lines.iloc[[5]].assign(order_id="refunded", amount=20.0)
    edge = pd.concat(
        [
            lines.iloc[[0]].assign(amount=-first["amount"] / 2),  # a partial return of the first order
            refunded,
            refunded.assign(amount=-20.0),
            lines.iloc[[9]].assign(order_id=None, amount=12.5),
        ],
        ignore_index=True,
    )
    path = tmp_path_factory.mktemp("synth") / "lines.parquet"
    pd.concat([lines, edge], ignore_index=True).to_parquet(path, index=False)
    return path


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("customer_id", ignore_index=True)


def _assert_same_features(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert got["customer_id"].tolist() == expected["customer_id"].tolist()
    for name in expected.columns[1:]:
        assert got[name].dtype == expected[name].dtype, name
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- features


@pytest.mark.spark
def test_spark_features_equal_duckdb_features_on_cdnow(spark):
    from features.spark import feature_frame, read_orders

    log = read_orders(spark, "cdnow")
    got = _sorted(feature_frame(log.orders, "1997-09-30").toPandas())
    expected = build_features(load_order_log("cdnow").orders, "1997-09-30")
    assert len(expected) == 23_570
    _assert_same_features(got, expected)


@pytest.fixture(scope="module")
def synth_on_spark(spark, synth_lines_path):
    """The synthetic log read by Spark, its features on Spark (cached) and as pandas."""
    from features.spark import feature_frame, read_orders

    log = read_orders(spark, str(synth_lines_path))
    features = feature_frame(log.orders, SYNTH_CUTOFF).cache()
    yield log, features, _sorted(features.toPandas())
    features.unpersist()
    log.orders.unpersist()


@pytest.mark.spark
def test_spark_reads_merges_and_featurises_a_parquet_log_like_the_loader(synth_on_spark, synth_lines_path):
    """Parquet read by Spark (lines merged, returns netted, ns timestamps) equals the DuckDB path."""
    log, _, got = synth_on_spark
    local = load_order_log(synth_lines_path)
    assert (log.first_order_date, log.last_order_date) == (local.first_order_date, local.last_order_date)
    assert log.orders.count() == len(local.orders)
    expected = build_features(local.orders, SYNTH_CUTOFF)
    assert any(c.startswith("share_category_") for c in expected.columns)
    assert any(c.startswith("share_channel_") for c in expected.columns)
    _assert_same_features(got, expected)


@pytest.mark.spark
def test_a_spark_table_with_mapped_columns_is_an_order_source(spark):
    from features.spark import feature_frame, read_orders

    orders = load_order_log("cdnow-sample").orders.head(3000)
    renamed = orders.rename(columns={"customer_id": "cust", "order_ts": "day", "amount": "value"})
    spark.createDataFrame(renamed).createOrReplaceTempView("cdnow_sample_orders")
    log = read_orders(spark, "spark:cdnow_sample_orders", "customer_id=cust,order_ts=day,amount=value")
    got = _sorted(feature_frame(log.orders, "1997-09-30").toPandas())
    _assert_same_features(got, build_features(orders, "1997-09-30"))


@pytest.mark.spark
def test_bad_spark_sources_are_one_line_order_log_errors(spark, tmp_path):
    from features.spark import read_orders

    bad_date = tmp_path / "bad_date.parquet"
    pd.DataFrame({"customer_id": ["a", "b", "c"], "order_ts": ["2024-01-02", "yesterday", "2024-01-05"],
                  "amount": [1.0, 2.0, 3.0]}).to_parquet(bad_date)
    with pytest.raises(OrderLogError, match=r"bad_date.parquet: column 'order_ts': 1 value\(s\) e\.g\. 'yesterday' is not a date"):
        read_orders(spark, str(bad_date))
    bad_amount = tmp_path / "bad_amount.parquet"
    pd.DataFrame({"customer_id": ["a", "b"], "order_ts": ["2024-01-02", "2024-01-03"], "amount": ["1.5", "$2"]}).to_parquet(bad_amount)
    with pytest.raises(OrderLogError, match=r"column 'amount': 1 value\(s\) e\.g\. '\$2' is not a number"):
        read_orders(spark, str(bad_amount))
    no_amount = tmp_path / "no_amount.parquet"
    pd.DataFrame({"customer_id": ["a"], "order_ts": ["2024-01-02"], "value": [1.0]}).to_parquet(no_amount)
    with pytest.raises(OrderLogError, match=r"no_amount.parquet: missing required column 'amount'.*--map amount="):
        read_orders(spark, str(no_amount))
    with pytest.raises(OrderLogError, match=r"spark:no_such_db\.orders: no such table"):
        read_orders(spark, "spark:no_such_db.orders")
    with pytest.raises(OrderLogError, match=r"nowhere\.parquet: no such file"):
        read_orders(spark, str(tmp_path / "nowhere.parquet"))


@pytest.mark.spark
def test_a_failed_spark_write_leaves_the_old_output_and_no_debris(spark, tmp_path):
    from pyspark.sql import functions as F

    from features.spark import write_spark_parquet

    target = tmp_path / "out.parquet"
    write_spark_parquet(spark.range(3), target)
    failing = spark.range(3).select(F.when(F.col("id") == 2, F.raise_error(F.lit("boom"))).otherwise(F.col("id")).alias("id"))
    with pytest.raises(Exception, match="boom"):
        write_spark_parquet(failing, target)
    assert sorted(pd.read_parquet(target)["id"]) == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


# --------------------------------------------------------------------------- BG/NBD


@pytest.mark.spark
def test_bgnbd_on_spark_sufficient_statistics_equals_the_fit_on_customers(synth_on_spark, synth_lines_path):
    from features.spark import btyd_statistics
    from training.btyd import BTYDModel

    _, features, _ = synth_on_spark
    stats = btyd_statistics(features)
    local = build_features(load_order_log(synth_lines_path).orders, SYNTH_CUTOFF, core_only=True)
    assert stats["weights"].sum() == len(local)
    assert len(stats) < len(local)  # identical rows were collapsed
    on_spark = BTYDModel().fit(stats["frequency"], stats["recency"], stats["T"], weights=stats["weights"])
    on_customers = BTYDModel().fit(local["frequency"], local["recency"], local["T"])
    for name, value in on_customers.params_.items():
        assert on_spark.params_[name] == pytest.approx(value, rel=1e-9), name
    assert on_spark.log_likelihood_ == pytest.approx(on_customers.log_likelihood_, rel=1e-9)


# --------------------------------------------------------------------------- CLI and scoring


@pytest.mark.spark
def test_cli_features_on_spark_writes_the_duckdb_features(spark, tmp_path):
    from serving.cli import app

    out = tmp_path / "features.parquet"
    result = runner.invoke(app, ["features", "--orders", "cdnow-sample", "--cutoff", "1997-09-30", "--engine", "spark",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2,357 customers" in result.output
    got = _sorted(pd.read_parquet(out))
    _assert_same_features(got, build_features(load_order_log("cdnow-sample").orders, "1997-09-30"))


@pytest.mark.spark
def test_cli_bad_input_on_spark_exits_2_and_writes_nothing(spark, tmp_path):
    from serving.cli import app

    bad = tmp_path / "orders.parquet"
    pd.DataFrame({"customer_id": ["a", None], "order_ts": pd.to_datetime(["2024-01-01", "2024-01-02"]),
                  "amount": [1.0, 2.0]}).to_parquet(bad)
    out = tmp_path / "features.parquet"
    result = runner.invoke(app, ["features", "--orders", str(bad), "--cutoff", "2024-01-02", "--engine", "spark",
                                 "--out", str(out)])
    assert result.exit_code == 2
    assert "column 'customer_id': 1 value(s) is empty" in result.output
    assert not out.exists()
    result = runner.invoke(app, ["features", "--orders", "cdnow-sample", "--cutoff", "1990-01-01", "--engine", "spark",
                                 "--out", str(out)])
    assert result.exit_code == 2 and "before the first order" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.parquet"]


def _register_champion(model, synth_orders) -> None:
    """Log ``model`` with an example of its features and register it as champion in the test's ``mlflow_store``."""
    from training.registry import log_run

    report = {"cutoff": "2025-06-30", "horizon_days": 60, "n_customers": 100, "base_rate": 0.3,
              "model": {"auc": 0.8, "brier": 0.1}}
    example = model.features(synth_orders, "2025-06-30").head(5)
    log_run(model, report, params={"job": "test"}, example_features=example, register=True)


@pytest.mark.spark
def test_cli_score_on_spark_gives_the_local_scores_partitioned_by_stage(spark, mlflow_store, fitted_model, synth_orders,
                                                                       tmp_path):
    from features.orders import OrderLog
    from serving.batch import score_log
    from serving.cli import app
    from training.tiers import load_tiers

    _register_champion(fitted_model, synth_orders)
    orders_path = tmp_path / "orders.parquet"
    synth_orders.to_parquet(orders_path, index=False)
    as_of = "2025-09-30"

    # Tiers other than the shipped ones reach the pyfunc on Spark as its tiers param.
    tiers_path = tmp_path / "tiers.yaml"
    tiers_path.write_text("tiers: [{name: basic, min: 0}, {name: plus, min: 500}, {name: elite, min: 2500}]\n")

    out = tmp_path / "scores.parquet"
    result = runner.invoke(app, ["score", "--orders", str(orders_path), "--as-of", as_of, "--engine", "spark",
                                 "--out", str(out), "--tiers", str(tiers_path)])
    assert result.exit_code == 0, result.output
    local = tmp_path / "local" / "scores.parquet"
    run = score_log(fitted_model, OrderLog(lines=synth_orders, source="synth"), pd.Timestamp(as_of), local,
                    model_version="1", tiers=load_tiers(tiers_path))
    assert f"ignored {run.n_future_orders_ignored:,} orders" in result.output

    stages = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert stages and all(s.startswith("lifecycle_stage=") for s in stages)
    got = pd.read_parquet(out)
    got = _sorted(got.assign(lifecycle_stage=got["lifecycle_stage"].astype(str))[list(pd.read_parquet(local).columns)])
    expected = pd.read_parquet(local)
    assert len(got) == run.n_customers > 1000
    assert (got["model_version"] == "1").all()
    assert set(got["member_tier"]) == {"basic", "plus", "elite"} and got["predicted_tier"].nunique() > 1
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=1e-12, check_dtype=False)
    snapshot = _sorted(pd.read_parquet(tmp_path / "scores.features.parquet"))
    expected_snapshot = pd.read_parquet(run.snapshot_path)
    pd.testing.assert_frame_equal(snapshot, expected_snapshot, check_exact=False, rtol=1e-9, atol=1e-9, check_dtype=False)


@pytest.mark.spark
def test_score_on_spark_carries_the_uplift_columns_of_the_duckdb_path(spark, mlflow_store, uplift_model, synth_orders,
                                                                      tmp_path):
    """A model with an uplift part: ``uplift`` and ``uplift_<action>`` on Spark, the DuckDB path's values."""
    from features.orders import OrderLog
    from serving.batch import score_log
    from serving.cli import app

    _register_champion(uplift_model, synth_orders)
    few = synth_orders[synth_orders["customer_id"].isin(synth_orders["customer_id"].unique()[:600])]
    orders_path = tmp_path / "orders.parquet"
    few.to_parquet(orders_path, index=False)
    as_of = "2025-09-30"

    out = tmp_path / "scores.parquet"
    result = runner.invoke(app, ["score", "--orders", str(orders_path), "--as-of", as_of, "--engine", "spark",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = score_log(uplift_model, OrderLog(lines=few, source="synth"), pd.Timestamp(as_of),
                    tmp_path / "local" / "scores.parquet", model_version="1")
    expected = pd.read_parquet(run.scores_path)
    assert list(expected.columns)[-3:] == ["uplift", "uplift_churn_warning", "uplift_win_back"]
    got = pd.read_parquet(out)
    assert set(got.columns) == set(expected.columns)
    got = _sorted(got.assign(lifecycle_stage=got["lifecycle_stage"].astype(str))[list(expected.columns)])
    assert len(got) == run.n_customers > 300
    assert got["uplift"].notna().all() and got["uplift"].nunique() > 10  # values, not a constant fill
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=1e-12, check_dtype=False)


# --------------------------------------------------------------------------- set-up errors (no JVM)


def test_tiers_on_spark_with_a_model_logged_before_the_tiers_param_is_one_line(mlflow_store, fitted_model):
    """Such a pyfunc would drop the param and score the shipped tiers: refused before Spark does any work."""
    from types import SimpleNamespace

    from serving.spark_batch import score_on_spark
    from training.registry import log_run
    from training.tiers import load_tiers

    old = log_run(fitted_model, {"cutoff": "2025-06-30", "horizon_days": 60, "n_customers": 100}, params={"job": "test"})
    log = SimpleNamespace(first_order_date=pd.Timestamp("2023-01-01"), source="synth")
    with pytest.raises(InputError, match=r"^--tiers: model .* was logged before its pyfunc took tiers"):
        score_on_spark(None, log, pd.Timestamp("2025-06-30"), "unused", model_uri=old.model_uri, tiers=load_tiers())


def test_missing_pyspark_is_one_line_naming_the_extra(monkeypatch):
    from features import spark as spark_module

    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(InputError, match=r"needs PySpark.*install the `spark` extra"):
        with spark_module.open_spark():
            pass


def test_missing_java_is_one_line(monkeypatch):
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    from features import spark as spark_module

    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.setattr(spark_module.shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(InputError, match=r"needs Java.*JAVA_HOME"):
        with spark_module.open_spark():
            pass


def test_master_urls_choose_local_settings():
    from features.spark import _local_cores

    assert _local_cores("local[2]") == 2
    assert _local_cores("local") == _local_cores("local[*]") >= 1
    assert _local_cores("spark://host:7077") is None and _local_cores("yarn") is None


@pytest.mark.spark
def test_replenishment_pair_expressions_on_spark_equal_duckdb(spark):
    """The (customer, category) features and labels are portable Ibis too: Spark gives DuckDB's numbers."""
    import ibis

    from features.replenish import build_pair_features, category_expr, label_pairs_expr, pair_expr, pair_lines
    from features.synth import generate_order_log

    lines = generate_order_log(600, seed=5)
    table = pair_lines(lines)
    expected = build_pair_features(table, "2025-06-30", horizon_days=60)
    con = ibis.pyspark.connect(spark)
    spark.createDataFrame(table.to_pandas()).createOrReplaceTempView("replenish_pair_lines")
    source = con.table("replenish_pair_lines")
    keys = ["customer_id", "category"]
    pairs = con.to_pyarrow(pair_expr(source, "2025-06-30")).to_pandas()
    categories = con.to_pyarrow(category_expr(source, "2025-06-30")).to_pandas()
    labels = con.to_pyarrow(label_pairs_expr(source, "2025-06-30", 60)).to_pandas()
    got = pairs.merge(categories, on="category", how="left").merge(labels, on=keys, how="left")
    got = got.sort_values(keys, ignore_index=True)[list(expected.columns)]
    assert got[keys].equals(expected[keys])
    for name in expected.columns.drop(keys):
        np.testing.assert_allclose(got[name].astype(float), expected[name], rtol=1e-9, atol=1e-9, err_msg=name)
