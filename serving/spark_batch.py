"""Batch scoring on Spark, with the same scores as :func:`serving.batch.score_log` (tested).

Features are computed by Spark and the registered pyfunc is applied by ``mlflow.pyfunc.spark_udf``.

1. The orders up to the as-of date go through :func:`features.spark.feature_frame` with
   the champion's mix values (the columns it was trained with); the RFM ranks and the
   scores' RFM columns against the champion's training population are set by the functions
   the local path uses (``training.model.rfm_rank_columns`` and ``rfm_columns``, in a pandas
   UDF), and the result is written as the feature snapshot ``<scores stem>.features.parquet``
   with an ``as_of`` column, as the local path writes it.
2. The snapshot is read back (so features are computed once) and every row goes through
   the MLflow pyfunc in Spark's Python workers (``spark_udf``, Arrow batches), with the
   as-of date and the model version as the pyfunc's params. A model with an uplift part
   (``train --uplift``) adds ``uplift`` and ``uplift_<action>`` after the contract's
   columns, as the DuckDB path does. Member tiers other than the shipped ones go to the
   pyfunc as its ``tiers`` param (:func:`training.tiers.tiers_text`).
3. Scores are written as a Parquet folder **partitioned by** ``lifecycle_stage``
   (``lifecycle_stage=active/part-*.parquet``, ...): each stage is what one campaign
   reads (win-back reads ``lapsed``, churn warnings ``at_risk``), the five stages make
   folders large enough to be worth a file each, and readers that read the whole folder
   (Spark, pandas, pyarrow, DuckDB with ``hive_partitioning``) get the column back.

Both folders are written all or nothing (:func:`features.spark.write_spark_parquet`).
Rows are not sorted: there is no global order to keep on a cluster.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd

from features.common.errors import CutoffError, InputError
from features.orders import parse_date
from features.spark import SparkOrderLog, feature_frame, write_spark_parquet
from features.timecut import after, as_day, until
from serving.batch import ScoreRun, snapshot_path_for
from training.contract import SCORE_COLUMNS, SCORE_DTYPES
from training.model import RFM_RANK_COLUMNS, RFM_SCORE_COLUMNS, rfm_columns, rfm_rank_columns
from training.tiers import Tiers, tiers_text
from training.uplift import LAST_CHANNEL

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["PARTITION_COLUMN", "score_on_spark", "score_struct"]

PARTITION_COLUMN = "lifecycle_stage"

_SPARK_TYPES = {"str": "string", "datetime64[ns]": "timestamp", "int64": "long", "float64": "double"}


def score_struct(uplift_columns=()):
    """The score contract as a Spark struct type (the pyfunc's result type), without ``as_of``,
    then ``uplift_columns`` as doubles (the model's uplift part, if any: ``uplift``,
    ``uplift_<action>``, as :func:`serving.batch.score_schema` adds them).

    ``spark_udf`` returns no timestamps, and ``as_of`` is the snapshot's own column anyway.
    """
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "long": T.LongType(), "double": T.DoubleType()}
    fields = [T.StructField(c, kinds[_SPARK_TYPES[SCORE_DTYPES[c]]]) for c in SCORE_COLUMNS if c != "as_of"]
    return T.StructType([*fields, *(T.StructField(c, T.DoubleType()) for c in uplift_columns)])


def with_training_rfm(features: "DataFrame", rfm_reference: dict) -> "DataFrame":
    """``features`` with the RFM ranks and scores against the training population, as
    ``RepurchaseModel.point_in_time_features`` sets them locally (ranks in place, the scores'
    ``rfm_r``, ``rfm_f``, ``rfm_m`` appended), computed by the same functions."""
    from pyspark.sql import functions as F

    names = (*RFM_RANK_COLUMNS, *RFM_SCORE_COLUMNS)

    @F.pandas_udf(", ".join(f"{c} long" for c in names))
    def rfm(days: pd.Series, orders: pd.Series, spend: pd.Series) -> pd.DataFrame:
        facts = {"days_since_last": days, "n_orders": orders, "total_spend": spend}
        return pd.DataFrame({**rfm_rank_columns(facts, rfm_reference), **rfm_columns(facts, rfm_reference)})

    packed = features.withColumn("_rfm", rfm("days_since_last", "n_orders", "total_spend"))
    kept = [F.col(f"_rfm.{c}").alias(c) if c in names else F.col(f"`{c}`") for c in features.columns]
    return packed.select(*kept, *(F.col(f"_rfm.{c}").alias(c) for c in names if c not in features.columns))


def _model_inputs(snapshot: "DataFrame", model_uri: str) -> list:
    """The snapshot's columns in the pyfunc's input schema, nulls for the ones it lacks.

    The logged signature lists the BTYD columns too (the example it was inferred from had
    them); the pyfunc recomputes them from the features, so nulls are all it needs.
    """
    import mlflow
    from pyspark.sql import functions as F

    signature = mlflow.models.get_model_info(model_uri).signature
    if signature is None:
        return [F.col(f"`{c}`") for c in snapshot.columns if c != "as_of"]
    kinds = {"double": "double", "float": "float", "long": "long", "integer": "int", "string": "string",
             "boolean": "boolean", "datetime": "timestamp"}
    columns = []
    for name, kind in zip(signature.inputs.input_names(), signature.inputs.input_types()):
        if name in snapshot.columns:
            columns.append(F.col(f"`{name}`"))
        else:
            columns.append(F.lit(None).cast(kinds.get(getattr(kind, "name", str(kind)), "double")).alias(name))
    return columns


def score_on_spark(
    spark: "SparkSession",
    log: SparkOrderLog,
    as_of: pd.Timestamp,
    out_path: str | Path,
    *,
    model_uri: str,
    progress: Callable[[str], None] | None = None,
    tiers: Tiers | None = None,
) -> ScoreRun:
    """Score every customer with an order on or before ``as_of`` on Spark; later orders are ignored.

    Parameters
    ----------
    spark
        The session (see :func:`features.spark.open_spark`).
    log
        Orders read by :func:`features.spark.read_orders`.
    as_of
        The as-of date.
    out_path
        Folder of the scores (partitioned by ``lifecycle_stage``); the feature snapshot
        goes beside it as ``<stem>.features.parquet``.
    model_uri
        The registered model (``models:/repurchase@champion``) or any pyfunc URI.
    progress
        Called with a short message as each stage starts.
    tiers
        Member tiers (:func:`training.tiers.load_tiers`); None: the shipped tiers. The
        model must have been logged with the pyfunc's ``tiers`` param
        (:func:`training.registry.takes_tiers`), else :class:`InputError`.

    Returns
    -------
    ScoreRun
        Paths, customers scored and the orders after ``as_of`` that were ignored.
    """
    import mlflow
    from pyspark.sql import functions as F

    from training.registry import load_scorer, takes_tiers

    say = progress or (lambda message: None)
    as_of = parse_date(as_of, "as_of")
    if as_of < log.first_order_date:
        raise CutoffError(f"--as-of {as_of.date()} is before the first order in {log.source} ({log.first_order_date.date()})")
    say("loading the model")
    scorer, version = load_scorer(model_uri)
    params = {"as_of": as_of.date().isoformat(), "model_version": version}
    if tiers is not None:
        if not takes_tiers(model_uri):
            raise InputError(f"--tiers: model {model_uri} was logged before its pyfunc took tiers, so Spark would score "
                             "it with the shipped tiers; retrain it (repurchase train ... --register), drop --tiers, "
                             "or use --engine duckdb")
        params["tiers"] = tiers_text(tiers)
    spec = scorer.spec_
    # A model with an uplift part scores ``uplift`` and ``uplift_<action>`` after the
    # contract's columns (the pyfunc returns them), as the DuckDB path writes them.
    columns = scorer.score_columns()
    uplift_columns = columns[len(SCORE_COLUMNS):]

    n_future = after(log.orders, as_of).count() if log.last_order_date > as_of else 0
    past = until(log.orders, as_of)
    unused = [c for c, values in (("channel", spec.channel_values), ("category", spec.category_values))
              if values is None and c in past.columns]
    features = with_training_rfm(feature_frame(
        past.drop(*unused), as_of.date(), channel_values=spec.channel_values, category_values=spec.category_values
    ), spec.rfm_reference)
    if scorer.has_uplift() and getattr(scorer.uplift_, "channel_share_", None) and "channel" in log.orders.columns:
        # The uplift part's persuaded share depends on each customer's last channel before the
        # scoring day, as training.uplift.last_channels reads it for the DuckDB path (orders at
        # the same instant: Spark keeps no row order, so one of them).
        latest = until(log.orders, as_day(as_of) - dt.timedelta(days=1)).groupBy("customer_id").agg(
            F.max_by("channel", "order_ts").alias(LAST_CHANNEL))
        features = features.join(latest, "customer_id", "left")
    out_path = Path(out_path) if "://" not in str(out_path) else out_path
    snapshot_path = snapshot_path_for(Path(out_path)) if isinstance(out_path, Path) else f"{str(out_path).removesuffix('.parquet')}.features.parquet"
    say(f"computing features as of {as_of.date()}")
    write_spark_parquet(features.withColumn("as_of", F.lit(as_of.to_pydatetime()).cast("timestamp_ntz")), snapshot_path)

    snapshot = spark.read.parquet(str(snapshot_path))
    say("scoring")
    predict = mlflow.pyfunc.spark_udf(
        spark,
        model_uri,
        result_type=score_struct(uplift_columns),
        env_manager="local",
        params=params,
    )
    scored = snapshot.select(predict(F.struct(*_model_inputs(snapshot, model_uri))).alias("score"), "as_of")
    scored = scored.select(*[F.col("as_of") if c == "as_of" else F.col(f"score.`{c}`") for c in columns])
    write_spark_parquet(scored, out_path, partition_by=[PARTITION_COLUMN])
    n_customers = spark.read.parquet(str(snapshot_path)).count()
    return ScoreRun(out_path, snapshot_path, n_customers, n_future)
