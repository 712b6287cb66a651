"""Features on Spark: the Ibis definitions of :mod:`features.pipeline`, run by PySpark.

Nothing here redefines a feature: :func:`feature_frame` compiles
:func:`features.pipeline.feature_expr` for Spark SQL through ``ibis.pyspark`` and returns a
lazy Spark DataFrame with the column types the DuckDB path gives (tested equal to 1e-9).

Sources (``--orders`` with ``--engine spark``)
----------------------------------------------
* ``spark:TABLE`` or ``spark:DB.TABLE``: a table in the session's catalog (Hive
  metastore, Unity Catalog, Glue, ...), read by Spark;
* a Parquet file or folder, local or any URI the session can read (``s3a://``,
  ``hdfs://``, ``abfss://``, ``gs://``, ``file://``), read by Spark;
* anything else :func:`features.orders.load_order_log` reads (``cdnow``,
  ``cdnow-sample``, CSV, ``FILE.duckdb:TABLE``): loaded and validated on the driver, then
  handed to Spark. Fine for logs one machine can hold.

Sources read by Spark follow the order-log contract and rules of :mod:`features.orders`
(``--map``, lines merged by ``order_id``, returns netted or dropped, missing quantity 1,
missing category and channel ``"unknown"``), checked by Spark in one pass; errors name
the source, the column and an offending value (a distributed table has no row numbers).
The rules for messy exports are Spark's too, with the same results: exact duplicate rows
dropped, ``exclude_products`` (``--exclude-products``), cancellation invoices netted into
the purchases they cancel, order values above 250x the median capped (an exact median:
Spark's ``percentile``), ignored columns named; :attr:`SparkOrderLog.description` is the
summary line, which does not name possible wholesale customers (that would cost a pass
over the orders for a note). Lines are kept (memory, else disk) while they are cleaned.
Two differences: timestamps are read as UTC wall-clock time (Spark stores instants), and
when two lines of an order tie for the largest amount, the order's category is either's
(DuckDB breaks that tie arbitrarily too).

Session
-------
:func:`open_spark` reuses an active session (spark-submit, Databricks, a notebook);
otherwise it starts one on the master given, else ``$REPURCHASE_SPARK_MASTER``, else
``local[2]``: quiet logs, no UI, UTC session time zone, Arrow transfers, and for local
masters two shuffle partitions per core and ``$REPURCHASE_SPARK_DRIVER_MEMORY`` (4g) of
driver memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from features.common.errors import InputError, OrderLogError
from features.common.outputs import check_output_path, clean_stale, commit_folder, temporary_name
from features.orders import (
    OUTLIER_ORDER_MULTIPLE,
    PARQUET_SUFFIXES,
    _resolve_columns,
    describe_summary,
    load_order_log,
    parse_column_map,
    parse_product_list,
)

if TYPE_CHECKING:  # pyspark is an optional extra
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "MASTER_ENV",
    "SparkOrderLog",
    "btyd_statistics",
    "feature_frame",
    "open_spark",
    "read_orders",
    "write_spark_parquet",
]

MASTER_ENV = "REPURCHASE_SPARK_MASTER"
DRIVER_MEMORY_ENV = "REPURCHASE_SPARK_DRIVER_MEMORY"
DEFAULT_MASTER = "local[2]"
TABLE_PREFIX = "spark:"
_INSTALL_HINT = "install the `spark` extra: uv sync --extra spark (or pip install 'repurchase[spark]')"
_JAVA_HINT = "install Java 17 (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
_LOG4J = Path(__file__).with_name("spark_log4j2.properties")


# --------------------------------------------------------------------------- session


def _import_pyspark():
    try:
        import pyspark  # noqa: F401
        from pyspark.sql import SparkSession
    except ImportError:
        raise InputError(f"--engine spark needs PySpark, which is not installed: {_INSTALL_HINT}") from None
    return SparkSession


def _java_available() -> bool:
    home = os.environ.get("JAVA_HOME")
    return bool(shutil.which("java")) or bool(home and (Path(home) / "bin" / "java").exists())


def _local_cores(master: str) -> int | None:
    """Cores of a ``local``, ``local[N]`` or ``local[*]`` master; None for a cluster."""
    found = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master.strip())
    if not found:
        return None
    cores = found.group(1)
    return os.cpu_count() or 1 if cores in (None, "*") else int(cores)


@contextlib.contextmanager
def open_spark(master: str | None = None, *, conf: Mapping[str, str] | None = None) -> Iterator["SparkSession"]:
    """A Spark session for the block: the active one if there is one, else a new one, stopped after.

    Parameters
    ----------
    master
        Spark master URL (``local[2]``, ``spark://host:7077``, ``yarn``, ``k8s://...``);
        default ``$REPURCHASE_SPARK_MASTER``, else ``local[2]``. Ignored when a session is
        already active.
    conf
        Extra Spark settings for a new session.

    Raises
    ------
    InputError
        PySpark is not installed, or Java cannot be found or started.
    """
    SparkSession = _import_pyspark()
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    if not _java_available():
        raise InputError(f"--engine spark needs Java, which was not found: {_JAVA_HINT}")
    master = master or os.environ.get(MASTER_ENV) or DEFAULT_MASTER
    settings = {
        "spark.app.name": "repurchase",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_LOG4J.as_uri()}",
    }
    cores = _local_cores(master)
    if cores is not None:
        # Python workers (pandas UDFs, the MLflow pyfunc) run in this interpreter's
        # environment; PySpark reads the variable when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        settings["spark.sql.shuffle.partitions"] = str(2 * cores)
        settings["spark.driver.memory"] = os.environ.get(DRIVER_MEMORY_ENV, "4g")
    extra = dict(conf or {})
    java_options = " ".join(filter(None, [settings["spark.driver.extraJavaOptions"], extra.pop("spark.driver.extraJavaOptions", "")]))
    settings.update(extra, **{"spark.driver.extraJavaOptions": java_options})
    builder = SparkSession.builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: say why in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--engine spark: Spark did not start on {master} ({first}); {_JAVA_HINT}") from None
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


# --------------------------------------------------------------------------- reading


@dataclass
class SparkOrderLog:
    """A validated order log as a Spark DataFrame, one row per order (lines merged).

    Attributes
    ----------
    orders : pyspark.sql.DataFrame
        ``customer_id`` (string), ``order_ts`` (timestamp), ``amount`` (double) and, where
        the source has them, ``quantity``, ``category``, ``channel``.
    source : str
        Where it came from, for messages.
    first_order_date, last_order_date : pandas.Timestamp
        Days of the first and the last order.
    """

    orders: "DataFrame"
    source: str
    first_order_date: "pd.Timestamp"
    last_order_date: "pd.Timestamp"
    description: str = ""


def read_orders(
    spark: "SparkSession",
    source: str,
    column_map: Mapping[str, str] | str | None = None,
    *,
    exclude_products: str | Sequence[str] | None = None,
) -> SparkOrderLog:
    """Read and validate an order log for Spark (sources and rules in the module docstring).

    ``exclude_products`` removes the lines of those product ids, as
    :func:`features.orders.load_order_log` does.

    Raises
    ------
    OrderLogError
        The source is missing or breaks the order-log contract (one line).
    """
    if isinstance(column_map, str) or column_map is None:
        column_map = parse_column_map(column_map)
    excluded = parse_product_list(exclude_products)
    from pyspark import StorageLevel

    source = str(source)
    if source.startswith(TABLE_PREFIX):
        raw, origin = _read_table(spark, source[len(TABLE_PREFIX):]), source
    elif _is_parquet(source):
        raw, origin = _read_parquet(spark, source), source.rstrip("/").rsplit("/", 1)[-1] or source
    else:
        log = load_order_log(source, column_map, exclude_products=excluded)
        orders = spark.createDataFrame(log.orders)
        return SparkOrderLog(_canonical_types(orders), log.source, log.first_order_date, log.last_order_date, log.describe())
    lines, counts = _validated_lines(raw, origin, column_map, exclude_products=excluded)
    persisted = []
    if "order_id" in lines.columns:
        # Cleaning reads the lines three times (checks, cancellations, the rest).
        lines = lines.persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(lines)
        lines, credit_counts, matched = _net_credit_invoices(lines)
        counts.update(credit_counts)
        persisted.append(matched)
    # Kept (memory, else local disk) once merged: the date range, the mix values and the
    # features each read the orders again, and reading and merging is the costly part.
    merged = _merge_lines(lines, origin).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _with_date_range(merged, origin, counts)
    finally:
        for frame in persisted:
            frame.unpersist()


def _is_parquet(source: str) -> bool:
    if re.match(r"^[a-zA-Z][\w+.-]*://", source):  # a URI: Spark's file systems read it
        return True
    path = Path(source)
    return path.is_dir() or path.suffix.lower() in PARQUET_SUFFIXES


def _read_table(spark: "SparkSession", name: str) -> "DataFrame":
    from pyspark.errors import AnalysisException

    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*){0,2}", name):
        raise OrderLogError(f"{TABLE_PREFIX}{name}: not a table name; write {TABLE_PREFIX}TABLE or {TABLE_PREFIX}DB.TABLE")
    try:
        return spark.table(name)
    except AnalysisException:
        raise OrderLogError(f"{TABLE_PREFIX}{name}: no such table in the Spark catalog") from None


def _read_parquet(spark: "SparkSession", source: str) -> "DataFrame":
    from pyspark.errors import AnalysisException

    is_uri = bool(re.match(r"^[a-zA-Z][\w+.-]*://", source))
    if not is_uri and not Path(source).exists():
        raise OrderLogError(f"{source}: no such file or folder")
    nanoseconds = [] if is_uri else _nanosecond_columns(source)
    if nanoseconds:
        # Spark reads nanosecond timestamps (pandas' and pyarrow's default) only as integers.
        spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    try:
        frame = spark.read.parquet(source)
    except AnalysisException as exc:
        first = str(exc).strip().splitlines()[0]
        raise OrderLogError(f"{source}: cannot be read as Parquet by Spark ({first})") from None
    if nanoseconds:
        from pyspark.sql import functions as F

        for name in nanoseconds:
            frame = frame.withColumn(name, F.timestamp_micros(F.floor(F.col(name) / 1000)))
    return frame


def _nanosecond_columns(source: str) -> list[str]:
    """Columns stored as nanosecond timestamps in a local Parquet file or folder (from the footer)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        schema = ds.dataset(source, format="parquet").schema
    except (pa.ArrowException, OSError):
        return []
    return [f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"]


def _first_value(frame: "DataFrame", condition, column: str) -> str:
    row = frame.filter(condition).select(column).limit(1).collect()
    return str(row[0][0]) if row else "?"


_COPIES = "__repurchase_copies"


def _validated_lines(
    raw: "DataFrame", origin: str, column_map: Mapping[str, str], *, exclude_products: Sequence[str] = ()
) -> tuple["DataFrame", dict]:
    """The contract columns, cast and checked in one Spark pass (the rules of features.orders).

    With ``order_id``, exact duplicate rows are merged first; lines of ``exclude_products``
    are removed. Returns the lines and the counts of :class:`features.orders.Cleaning`
    (and ``returns_dropped``) found in the same pass.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    resolved = _resolve_columns(raw, origin, column_map)
    ignored = tuple(c for c in raw.columns if c not in resolved.values())
    if "order_id" in resolved:
        # Rows repeated in every column are one row (and counted); rows without an order id
        # then differ somewhere, so a hash of the whole row is a stable id for them.
        raw = raw.groupBy(*[F.col(f"`{c}`") for c in raw.columns]).agg(F.count(F.lit(1)).alias(_COPIES))
        row_hash = F.xxhash64(*[F.col(f"`{c}`") for c in raw.columns if c != _COPIES])
    kinds = {field.name: field.dataType for field in raw.schema.fields}

    def as_string(name: str):
        column, kind = F.col(f"`{resolved[name]}`"), kinds[resolved[name]]
        if isinstance(kind, (T.FloatType, T.DoubleType, T.DecimalType)):  # ids: "17", not "17.0"
            column = F.when(column == F.floor(column), column.cast("long").cast("string")).otherwise(column.cast("string"))
        return F.trim(column.cast("string"))

    def as_number(name: str):
        column = F.col(f"`{resolved[name]}`")
        if isinstance(kinds[resolved[name]], T.StringType):
            column = F.expr(f"try_cast(trim(`{resolved[name]}`) as double)")
        return column.cast("double")

    ts_source = F.col(f"`{resolved['order_ts']}`")
    ts_kind = kinds[resolved["order_ts"]]
    if isinstance(ts_kind, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        order_ts = ts_source.cast("timestamp")
    elif isinstance(ts_kind, T.StringType):
        text = F.trim(ts_source)
        order_ts = F.when(text.rlike(r"^\d{8}$"), F.try_to_timestamp(text, F.lit("yyyyMMdd"))).otherwise(
            F.expr(f"try_cast(trim(`{resolved['order_ts']}`) as timestamp)")
        )
    else:
        raise OrderLogError(
            f"{origin}: column 'order_ts' holds {ts_kind.simpleString()} values, not dates; use a date, timestamp or text column"
        )
    if not isinstance(kinds[resolved["amount"]], (T.NumericType, T.StringType)):
        raise OrderLogError(f"{origin}: column 'amount' holds {kinds[resolved['amount']].simpleString()} values, not numbers")

    columns = {
        "customer_id": as_string("customer_id"),
        "order_ts": order_ts,
        "amount": as_number("amount"),
        "order_ts_given": ts_source.isNotNull(),
        "amount_given": F.col(f"`{resolved['amount']}`").isNotNull(),
    }
    if "order_id" in resolved:
        order_id = as_string("order_id")
        # rows without an id are orders of their own: ids no real order can have
        synthetic = F.concat(F.lit("\x00row"), row_hash.cast("string"))
        columns["order_id"] = F.when(order_id.isNull() | (order_id == ""), synthetic).otherwise(order_id)
        columns[_COPIES] = F.col(_COPIES)
    if "quantity" in resolved:
        columns["quantity_raw"] = as_number("quantity")
        columns["quantity_given"] = F.col(f"`{resolved['quantity']}`").isNotNull()
    if "product_id" in resolved:
        columns["product_id"] = as_string("product_id")
    elif exclude_products:
        raise InputError(f"--exclude-products: {origin} has no 'product_id' column to match "
                         "(map yours with --map product_id=YOUR_COLUMN)")
    for name in ("category", "channel"):
        if name in resolved:
            columns[name] = F.coalesce(as_string(name), F.lit("unknown"))
    lines = raw.select(*[value.alias(name) for name, value in columns.items()])
    wanted = {p.strip().upper(): p for p in exclude_products}
    product_key = F.upper(F.col("product_id")) if exclude_products else None

    infinite = F.col("amount").isin(float("inf"), float("-inf"))
    checks = {
        "rows": F.lit(True),
        "blank_customer": F.col("customer_id").isNull() | (F.col("customer_id") == ""),
        "empty_ts": ~F.col("order_ts_given"),
        "bad_ts": F.col("order_ts_given") & F.col("order_ts").isNull(),
        "empty_amount": ~F.col("amount_given"),
        "bad_amount": F.col("amount_given") & F.col("amount").isNull(),
        "infinite_amount": infinite,
    }
    if "quantity" in resolved:
        checks["bad_quantity"] = F.col("quantity_given") & F.col("quantity_raw").isNull()
    tallies = [F.count_if(condition).alias(name) for name, condition in checks.items()]
    if "order_id" in resolved:
        tallies.append(F.sum(F.col(_COPIES) - 1).alias("duplicate_rows"))
    if exclude_products:
        excluded = F.coalesce(product_key.isin(list(wanted)), F.lit(False))
        tallies.append(F.count_if(excluded).alias("excluded_lines"))
        tallies.append(F.sum(F.when(excluded, F.col("amount"))).alias("excluded_amount"))
        tallies += [F.count_if(product_key == key).alias(f"product {key}") for key in wanted]
    else:
        excluded = F.lit(False)
    if "order_id" not in resolved:
        tallies.append(F.count_if(~excluded & (F.col("amount") < 0)).alias("returns_dropped"))
    counts = lines.agg(*tallies).first().asDict()
    if counts["rows"] == 0:
        raise OrderLogError(f"{origin}: has a header but no rows")
    messages = {
        "blank_customer": ("customer_id", "is empty", "every order needs a customer"),
        "empty_ts": ("order_ts", "is empty", "every order needs a date"),
        "bad_ts": ("order_ts", "is not a date", "use YYYY-MM-DD or ISO 8601"),
        "empty_amount": ("amount", "is empty", "every order needs a value"),
        "bad_amount": ("amount", "is not a number", "write plain numbers like 12.50, no currency signs"),
        "infinite_amount": ("amount", "is infinite", ""),
        "bad_quantity": ("quantity", "is not a number", ""),
    }
    for check, (column, what, fix) in messages.items():
        n = counts.get(check, 0)
        if n:
            shown = resolved[column]
            value = _first_value(raw.select(F.col(f"`{shown}`")), _raw_condition(check, resolved, lines), shown) if check.startswith("bad") else None
            example = f" e.g. '{value}'" if value is not None else ""
            raise OrderLogError(
                f"{origin}: column '{column}': {n:,} value(s){example} {what}{'; ' + fix if fix else ''}"
            )
    if "quantity" in resolved:
        lines = lines.withColumn("quantity", F.coalesce(F.col("quantity_raw"), F.lit(1.0)))
    if exclude_products:
        lines = lines.filter(~excluded)
    found = {key for key in wanted if counts.get(f"product {key}")}
    cleaning = {
        "ignored_columns": ignored,
        "duplicate_rows": int(counts.get("duplicate_rows") or 0),
        "excluded_products": tuple(exclude_products),
        "products_not_found": tuple(p for key, p in wanted.items() if key not in found),
        "excluded_lines": int(counts.get("excluded_lines") or 0),
        "excluded_amount": float(counts.get("excluded_amount") or 0.0),
        "returns_dropped": int(counts.get("returns_dropped") or 0),
    }
    if cleaning["excluded_lines"] == counts["rows"]:
        raise OrderLogError(f"{origin}: no lines left after excluding products {', '.join(exclude_products)}")
    return lines.drop("order_ts_given", "amount_given", "quantity_raw", "quantity_given", _COPIES), cleaning


def _raw_condition(check: str, resolved: Mapping[str, str], lines: "DataFrame"):
    """The failed check on the raw column (to show the value as the user wrote it)."""
    from pyspark.sql import functions as F

    column = {"bad_ts": "order_ts", "bad_amount": "amount", "bad_quantity": "quantity"}[check]
    raw = F.col(f"`{resolved[column]}`")
    if column == "order_ts":
        text = F.trim(raw.cast("string"))
        parsed = F.when(text.rlike(r"^\d{8}$"), F.try_to_timestamp(text, F.lit("yyyyMMdd"))).otherwise(
            F.expr(f"try_cast(trim(`{resolved[column]}`) as timestamp)")
        )
    else:
        parsed = F.expr(f"try_cast(trim(`{resolved[column]}`) as double)")
    return raw.isNotNull() & parsed.isNull()


_CREDIT_SQL = """
with negative as (
    select distinct customer_id, order_id from {lines} where amount < 0
),
credit_orders as (
    select n.customer_id, n.order_id from negative n
    left anti join (select customer_id, order_id from {lines} where amount > 0) p
        on n.customer_id = p.customer_id and n.order_id = p.order_id
),
credits as (
    select l.*, -l.amount as credit
    from {lines} l
    left semi join credit_orders c on l.customer_id = c.customer_id and l.order_id = c.order_id
),
purchases as (
    select l.customer_id, false as any_product, l.product_id, l.order_id, min(l.order_ts) as ts, sum(l.amount) as bought
    from {lines} l
    left semi join (select distinct customer_id, product_id from credits where product_id is not null) c
        on l.customer_id = c.customer_id and l.product_id = c.product_id
    where l.amount > 0
    group by l.customer_id, l.product_id, l.order_id
    union all
    select l.customer_id, true, cast(null as string), l.order_id, min(l.order_ts), sum(l.amount)
    from {lines} l
    left semi join (select distinct customer_id from credits where product_id is null) c on l.customer_id = c.customer_id
    where l.amount > 0
    group by l.customer_id, l.order_id
),
events as (
    select customer_id, any_product, product_id, ts, 0 as kind, order_id as purchase, bought,
           cast(null as double) as credit, cast(null as string) as credit_order, cast(null as {line_type}) as line
    from purchases
    union all
    select customer_id, product_id is null, product_id, order_ts, 1, null, null, credit, order_id, struct({line_columns})
    from credits
),
matched as (
    select * from (
        select kind, customer_id, any_product, product_id, ts, credit, credit_order, line,
               last(purchase, true) over w as purchase,
               last(bought, true) over w as bought
        from events
        window w as (partition by customer_id, any_product, product_id
                     order by ts, kind, purchase, credit_order rows between unbounded preceding and current row)
    ) where kind = 1
)
select customer_id, credit_order, purchase, credit, line,
       case when purchase is null then 0.0 else greatest(0.0, least(credit, bought - coalesce(sum(credit) over (
           partition by customer_id, any_product, product_id, purchase
           order by ts, credit_order, credit rows between unbounded preceding and 1 preceding), 0.0))) end as allocated
from matched
"""


def _net_credit_invoices(lines: "DataFrame") -> tuple["DataFrame", dict, "DataFrame"]:
    """:func:`features.orders.net_credit_invoices` on Spark: the same matching, as Spark SQL.

    Returns the lines, the counts, and the matched cancellation lines (kept in memory
    while the lines are read; unpersist it after).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = lines.sparkSession
    if "product_id" not in lines.columns:
        lines = lines.withColumn("product_id", F.lit(None).cast("string"))
    view = f"repurchase_lines_{uuid.uuid4().hex[:12]}"
    lines.createOrReplaceTempView(view)
    line_columns = list(lines.columns)
    # Each cancellation line rides along as a struct (null for purchases), to come out netted.
    line_type = "struct<" + ",".join(f"{f.name}:{f.dataType.simpleString()}" for f in lines.schema.fields) + ">"
    matched = spark.sql(_CREDIT_SQL.format(lines=view, line_type=line_type, line_columns=", ".join(line_columns)))
    netted = F.col("purchase").isNotNull() & ((F.col("allocated") > 0) | (F.col("credit") == 0))
    matched = matched.withColumn("netted", netted).persist(StorageLevel.MEMORY_AND_DISK)
    row = matched.agg(
        F.count_distinct("customer_id", "credit_order").alias("credit_invoices"),
        F.count_if("netted").alias("credit_lines_netted"),
        F.count_if(~F.col("netted")).alias("credit_lines_dropped"),
        F.sum(F.when(F.col("netted"), F.col("credit") - F.col("allocated")).otherwise(F.col("credit"))).alias("amount"),
    ).first()
    counts = {
        "credit_invoices": int(row["credit_invoices"] or 0),
        "credit_lines_netted": int(row["credit_lines_netted"] or 0),
        "credit_lines_dropped": int(row["credit_lines_dropped"] or 0),
        "credit_amount_dropped": float(row["amount"] or 0.0),
    }
    share = F.when(F.col("credit") > 0, F.col("allocated") / F.col("credit")).otherwise(F.lit(1.0))
    replaced = {"order_id": F.col("purchase"), "amount": -F.col("allocated")}
    if "quantity" in line_columns:
        replaced["quantity"] = F.col("line.quantity") * share
    moved = matched.filter("netted").select(
        *[replaced.get(c, F.col(f"line.`{c}`")).alias(c) for c in line_columns]
    )
    credit_orders = matched.select("customer_id", F.col("credit_order").alias("order_id")).distinct()
    rest = lines.join(credit_orders, on=["customer_id", "order_id"], how="left_anti")
    return rest.unionByName(moved), counts, matched


def _merge_lines(lines: "DataFrame", origin: str) -> "DataFrame":
    """Lines to orders by :func:`features.order_rules.merge_lines` (the rules DuckDB runs), with
    the flags the summary counts: ``refunded`` (dropped), ``purchased``, ``in_span`` and ``last_ts``."""
    import ibis
    from pyspark.sql import functions as F

    from features.order_rules import merge_lines

    if "order_id" in lines.columns:
        con = ibis.pyspark.connect(lines.sparkSession)
        view = f"repurchase_lines_{uuid.uuid4().hex[:12]}"
        lines.createOrReplaceTempView(view)
        merged = lines.sparkSession.sql(con.compile(merge_lines(con.table(view), last_ts=True)))
        merged = merged.withColumn("in_span", F.lit(True)).drop("order_id")
    else:  # unmatched returns are dropped, and the log's span is that of what is left
        refunded = F.col("amount") < 0
        merged = lines.select("*", refunded.alias("refunded"), F.lit(False).alias("purchased"),
                              (~refunded).alias("in_span"), F.col("order_ts").alias("last_ts"))
    keep = [c for c in ("customer_id", "order_ts", "amount", "quantity", "category", "channel") if c in merged.columns]
    flags = [F.col(c) for c in ("refunded", "purchased", "in_span", "last_ts")]
    return merged.select(*[F.col(c) for c in keep], *flags)


def _canonical_types(orders: "DataFrame") -> "DataFrame":
    types = {"customer_id": "string", "order_ts": "timestamp", "amount": "double", "quantity": "double",
             "category": "string", "channel": "string"}
    keep = [c for c in types if c in orders.columns]
    return orders.select(*[orders[c].cast(types[c]).alias(c) for c in keep])


def _with_date_range(merged: "DataFrame", origin: str, counts: dict) -> SparkOrderLog:
    """The orders (refunded dropped, outlier values capped, kept in memory) with their span and summary line."""
    import pandas as pd
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    kept = ~F.col("refunded")
    row = merged.agg(
        F.min(F.when(F.col("in_span"), F.col("order_ts"))).alias("first"),
        F.max(F.when(F.col("in_span"), F.col("last_ts"))).alias("last"),
        F.count_if(kept).alias("orders"),
        F.count_distinct(F.when(kept, F.col("customer_id"))).alias("customers"),
        F.count_if(F.col("refunded") & F.col("purchased")).alias("orders_reversed"),
        F.expr("percentile(case when not refunded and amount > 0 then amount end, 0.5)").alias("median"),
    ).first()
    if row["first"] is None or not row["orders"]:
        merged.unpersist()
        raise OrderLogError(f"{origin}: no orders left after dropping returns (negative amounts)")
    cap = OUTLIER_ORDER_MULTIPLE * row["median"] if row["median"] is not None else float("inf")
    over = kept & (F.col("amount") > F.lit(cap))
    outliers = merged.agg(
        F.count_if(over).alias("n"),
        F.sum(F.when(over, F.col("amount") - F.lit(cap))).alias("capped"),
        F.sum(F.when(kept, F.least(F.col("amount"), F.lit(cap)))).alias("revenue"),
    ).first()
    orders = merged.filter(kept).withColumn("amount", F.least(F.col("amount"), F.lit(cap)))
    orders = _canonical_types(orders).persist(StorageLevel.MEMORY_AND_DISK)
    orders.count()  # kept before the merged frame is let go
    merged.unpersist()
    first, last = pd.Timestamp(row["first"]).normalize(), pd.Timestamp(row["last"]).normalize()
    summary = {
        "source": origin,
        "orders": int(row["orders"]),
        "customers": int(row["customers"]),
        "first_order": first.date().isoformat(),
        "last_order": last.date().isoformat(),
        "revenue": float(outliers["revenue"] or 0.0),
        "credit_invoices": 0, "credit_lines_netted": 0, "credit_lines_dropped": 0, "credit_amount_dropped": 0.0,
        **counts,
        "duplicate_rows_dropped": counts.get("duplicate_rows", 0),
        "orders_reversed": int(row["orders_reversed"]),
        "outlier_orders": int(outliers["n"]),
        "outlier_cap": cap,
        "outlier_amount_capped": float(outliers["capped"] or 0.0),
    }
    return SparkOrderLog(orders, origin, first, last, describe_summary(summary))


# --------------------------------------------------------------------------- features


def feature_frame(
    orders: "DataFrame",
    cutoff: object,
    *,
    core_only: bool = False,
    channel_values: Sequence[str] | None = None,
    category_values: Sequence[str] | None = None,
) -> "DataFrame":
    """:func:`features.pipeline.feature_expr` on Spark: a lazy DataFrame, one row per customer.

    Column names, order and types (string ``customer_id``, long counts and scores, double
    everything else) are those of :func:`features.pipeline.build_features`; rows are not
    sorted. ``channel_values`` and ``category_values`` fix the share columns as there.
    """
    import ibis
    from pyspark.sql import functions as F

    from features.pipeline import feature_expr

    spark = orders.sparkSession
    con = ibis.pyspark.connect(spark)
    view = f"repurchase_orders_{uuid.uuid4().hex[:12]}"
    orders.createOrReplaceTempView(view)
    expr = feature_expr(
        con.table(view),
        cutoff,
        core_only=core_only,
        channel_values=channel_values,
        category_values=category_values,
    )
    frame = spark.sql(con.compile(expr))
    # Ibis leaves some literals uncast in Spark SQL (decimals, int32); its own results are
    # cast to the expression's schema afterwards, and so are these.
    spark_types = {"string": "string", "int64": "long", "float64": "double"}
    schema = expr.schema()
    return frame.select(*[F.col(f"`{name}`").cast(spark_types[str(kind).lstrip("!")]).alias(name) for name, kind in schema.items()])


def btyd_statistics(features: "DataFrame") -> "pd.DataFrame":
    """The BG/NBD sufficient statistics: distinct (frequency, recency, T) rows with their counts.

    Aggregated by Spark; what reaches the driver is one row per distinct triple (a few
    hundred thousand for a million customers over two years of days), which
    ``training.btyd.BTYDModel().fit(frequency, recency, T, weights=weights)`` fits as it would
    the customers one by one.
    """
    from pyspark.sql import functions as F

    stats = features.groupBy("frequency", "recency", "T").agg(F.count(F.lit(1)).cast("double").alias("weights"))
    return stats.toPandas()


# --------------------------------------------------------------------------- writing


def _hadoop_fs(spark: "SparkSession", path: str):
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hadoop_path


def write_spark_parquet(frame: "DataFrame", target: str | os.PathLike, *, partition_by: Sequence[str] = ()) -> str:
    """Write a Spark DataFrame as a Parquet folder at ``target``, all or nothing.

    Spark writes into a hidden sibling folder (``.NAME.<random>.tmp``, which readers skip)
    that is renamed onto ``target`` only when every task has finished; on failure it is
    removed and ``target`` is left as it was. Works on any Hadoop file system (local,
    HDFS, object stores; on object stores the rename is a copy).
    """
    spark = frame.sparkSession
    target = str(target).rstrip("/")
    writer = frame.write.mode("error")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if not re.match(r"^[a-zA-Z][\w+.-]*://", target):
        # A local folder: the same ownership rules and atomic swap as every other output.
        local = check_output_path(target, folder=True)
        local.resolve().parent.mkdir(parents=True, exist_ok=True)
        clean_stale(local.resolve())
        tmp = temporary_name(local.resolve())
        try:
            writer.parquet(str(tmp))
            commit_folder(tmp, local.resolve())
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return str(local.resolve())
    parent, _, name = target.rpartition("/")
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp" if parent else f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    fs, tmp_path = _hadoop_fs(spark, tmp)
    _, target_path = _hadoop_fs(spark, target)
    if fs.exists(target_path) and not fs.exists(_hadoop_fs(spark, f"{target}/_SUCCESS")[1]):
        raise InputError(f"output '{target}': exists and is not a Parquet folder written by Spark; choose another path")
    try:
        writer.parquet(tmp)
        if fs.exists(target_path):
            fs.delete(target_path, True)
        if not fs.rename(tmp_path, target_path):
            raise OSError(f"could not rename {tmp} to {target}")
    finally:
        if fs.exists(tmp_path):
            fs.delete(tmp_path, True)
    return target

