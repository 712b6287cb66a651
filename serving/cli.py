"""The ``repurchase`` command: thin Typer entry points over the packages' functions.

Exit codes: 0 ok, 2 bad input or usage (one line on stderr, no traceback, no partial
output), 1 a bug (one line; set ``REPURCHASE_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from features.errors import InputError

app = typer.Typer(
    name="repurchase",
    help=(
        "Predict which customers will order again, when, and for how much; "
        "turn the scores into audiences with actions and reasons.\n\n"
        "Order logs (--orders) are a CSV or Parquet file, a DuckDB table as FILE.duckdb:TABLE, "
        "or a built-in log: cdnow, cdnow-sample. Start with: repurchase quickstart"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Text printed here comes from users' files and flags ("[/bold]" is a fine product name),
# so it is never read as Rich markup; styled parts are built as Text.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, markup=False)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MAX_DAYS = 3650  # horizons and lead times: ten years is already more than any log supports

OrdersOption = typer.Option(
    ..., "--orders", help="Order log: CSV/Parquet path, FILE.duckdb:TABLE, or a built-in name (cdnow, cdnow-sample)."
)
MapOption = typer.Option(
    None,
    "--map",
    help="Map your column names onto the contract, e.g. customer_id=cust,order_ts=date,amount=value.",
)
ExcludeProductsOption = typer.Option(
    None,
    "--exclude-products",
    help="Product ids that are not products (postage, fees, bank charges), e.g. POST,DOT,M: their lines are "
    "removed (and counted) before lines make orders. Matched ignoring case; needs a product_id column. "
    "Without it such lines count as spend of their order.",
)


def _error_line(label: str, message: str) -> Text:
    """``label: message`` on one line, the message shown as written (never as markup)."""
    return Text.assemble((f"{label}:", "bold red"), " ", " ".join(message.split("\n")))


def handles_errors(command: Callable) -> Callable:
    """Turn input errors into one line and exit code 2; bugs into one line and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            err.print(_error_line("error", str(exc)))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing was written")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: say so in one line unless asked for the traceback
            if os.environ.get("REPURCHASE_DEBUG"):
                raise
            err.print(_error_line(
                "internal error",
                f"{type(exc).__name__}: {exc} (this is a bug; rerun with REPURCHASE_DEBUG=1 for the traceback)",
            ))
            raise typer.Exit(1) from None

    return wrapper


def _tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


@app.command()
@handles_errors
def synth(
    customers: int = typer.Option(..., "--customers", min=1, help="How many customers to simulate."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same log."),
    out_path: Path = typer.Option(..., "--out", help="Parquet file to write (order lines)."),
    start: Optional[str] = typer.Option(None, "--start", help="First day of the log (default 2023-01-01, or --months before --end)."),
    end: str = typer.Option("2025-12-31", "--end", help="Last day of the log."),
    months: Optional[int] = typer.Option(
        None, "--months", min=1, max=240, help="A young shop: the log covers only the last M months up to --end."
    ),
    messy: bool = typer.Option(
        False, "--messy", help="Export it the way real shop systems do: cancellation invoices, refund lines, postage "
        "and fee lines, duplicate rows, a wholesale order and a wholesale customer, extra columns, minute timestamps."
    ),
) -> None:
    """Write a realistic synthetic order log for tests and benchmarks.

    Heterogeneous purchase rates with dropout, replenishment customers on regular
    cycles, 6.18 and 11.11 peaks, a quiet Spring Festival, community vs storefront
    channels, categories and products, order values with customer-level means.
    --months 7 makes a shop that opened seven months before --end; --messy adds what real
    exports carry (see features.synth.make_messy), for trying the loader's rules.
    """
    import time

    from features.io import check_output_path, write_parquet
    from features.orders import parse_date
    from features.synth import generate_order_log, make_messy

    if months is not None and start is not None:
        raise InputError("give --start or --months, not both")
    last = parse_date(end, "--end")
    if months is not None:
        first = last - _months(months) + _days(1)
        start = str(first.date())
    start = start or "2023-01-01"
    if last <= parse_date(start, "--start"):
        raise InputError(f"--end {end} must be after --start {start}")
    check_output_path(out_path)
    began = time.perf_counter()
    with err.status(f"simulating {customers:,} customers ..."):
        lines = generate_order_log(customers, seed=seed, start=start, end=end)
        if messy:
            lines = make_messy(lines, seed=seed)
    with err.status(f"writing {escape(str(out_path))} ..."):
        write_parquet(lines, out_path, kind="synth")
    n_orders = lines["order_id"].nunique()
    out.print(
        f"wrote {out_path}: {lines['customer_id'].nunique():,} customers, {n_orders:,} orders{' (messy export)' if messy else ''}, "
        f"{len(lines):,} lines from {start} to {end} in {time.perf_counter() - began:.1f} s"
    )


def _months(n: int):
    import pandas as pd

    return pd.DateOffset(months=n)


ENGINES = ("duckdb", "spark")
EngineOption = typer.Option(
    "duckdb",
    "--engine",
    help=(
        "duckdb (embedded, default) or spark: PySpark on $REPURCHASE_SPARK_MASTER (default local[2]; "
        "any cluster URL), needs the `spark` extra and Java 17. With spark, --orders also takes a Spark "
        "table as spark:DB.TABLE and Parquet URIs (s3a://, hdfs://, ...), and --out is a folder of Parquet part files."
    ),
)


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"--engine: '{engine}' is not an engine; use duckdb or spark")


def _load(orders: str, column_map: Optional[str], exclude_products: Optional[str]):
    """Load and check the order log, and say in one line what it holds and what the loader's rules did."""
    from features.orders import load_order_log

    with err.status("loading orders ..."):
        log = load_order_log(orders, column_map, exclude_products=exclude_products)
        description = log.describe()
    out.print(description, soft_wrap=True)
    return log


@app.command()
@handles_errors
def features(
    orders: str = OrdersOption,
    cutoff: str = typer.Option(..., "--cutoff", help="As-of date YYYY-MM-DD: only orders on or before it are used."),
    out_path: Path = typer.Option(..., "--out", help="Parquet file to write: one row per customer, customer_id first."),
    engine: str = EngineOption,
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
) -> None:
    """Compute point-in-time features per customer as of a cutoff.

    Both engines run the same feature definitions and give the same values. DuckDB writes
    one file sorted by customer_id; Spark writes a folder of part files (unsorted) that
    pandas, pyarrow, DuckDB and Spark read as one table.
    """
    from features.io import check_output_path, write_parquet
    from features.orders import check_cutoff, parse_date

    _check_engine(engine)
    cut = parse_date(cutoff, "--cutoff")
    check_output_path(out_path, folder=engine == "spark")
    if engine == "spark":
        _features_on_spark(orders, cut, out_path, column_map, exclude_products)
        return
    log = _load(orders, column_map, exclude_products)
    check_cutoff(log, cut)
    from features.pipeline import build_features

    with err.status(f"computing features as of {cut.date()} ..."):
        frame = build_features(log.orders, cut)
    write_parquet(frame, out_path)
    out.print(f"wrote {out_path}: {len(frame):,} customers x {frame.shape[1] - 1} features as of {cut.date()}")


def _features_on_spark(orders: str, cut, out_path: Path, column_map: Optional[str], exclude_products: Optional[str]) -> None:
    import time

    from features.orders import check_cutoff
    from features.spark import feature_frame, open_spark, read_orders, write_spark_parquet

    began = time.perf_counter()
    with err.status("starting Spark ...") as status, open_spark() as spark:
        status.update("reading and checking orders on Spark ...")
        log = read_orders(spark, orders, column_map, exclude_products=exclude_products)
        out.print(log.description, soft_wrap=True)
        check_cutoff(log, cut)
        status.update(f"computing features as of {cut.date()} on Spark ...")
        frame = feature_frame(log.orders, cut.date())
        written = write_spark_parquet(frame, out_path)
        n_customers = spark.read.parquet(written).count()
    out.print(f"wrote {out_path} (Spark, a folder of Parquet part files): {n_customers:,} customers x "
              f"{len(frame.columns) - 1} features as of {cut.date()} in {time.perf_counter() - began:.0f} s")


@app.command()
@handles_errors
def train(
    orders: str = OrdersOption,
    cutoff: str = typer.Option(..., "--cutoff", help="Training cutoff YYYY-MM-DD: the model sees only orders up to it."),
    horizon_days: int = typer.Option(90, "--horizon-days", min=1, max=MAX_DAYS, help="Prediction horizon in days."),
    register: bool = typer.Option(False, "--register", help="Register the model as a new version of 'repurchase'."),
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
) -> None:
    """Train the composite model (BTYD + LightGBM) and log it to MLflow.

    First a backtest at cutoff - horizon (its truth is known by the cutoff) against BG/NBD
    and recency-only; then the final fit on all orders up to the cutoff. With --register
    the model becomes 'champion' when there is none, else 'challenger' unless it beats the
    champion on that same backtest.
    """
    from features.orders import parse_date
    from training.jobs import train_job
    from training.registry import configure_tracking

    cut = parse_date(cutoff, "--cutoff")
    log = _load(orders, column_map, exclude_products)
    configure_tracking(_tracking_uri())
    with err.status(f"backtesting at {(cut - _days(horizon_days)).date()} and training at {cut.date()} ..."):
        result = train_job(log, cut, horizon_days, register=register)
    _print_comparison(result.backtest.report, champion=result.champion_backtest.report if result.champion_backtest else None)
    registered = f"; registered version {result.logged.version} as {result.logged.alias}" if result.logged.version else ""
    out.print(f"MLflow run {result.logged.run_id}{registered}")


def _days(n: int):
    import pandas as pd

    return pd.Timedelta(days=n)


def _print_comparison(report: dict, champion: dict | None = None) -> None:
    """The backtest's headline numbers, the model beside its baselines."""
    from rich.table import Table

    table = Table(title=f"backtest at {report['cutoff']}, horizon {report['horizon_days']} days, "
                        f"{report['n_customers']:,} customers, base rate {report['base_rate']:.3f}")
    table.add_column("p_repurchase")
    columns = [("model", report.get("model")), ("BG/NBD", report.get("bgnbd")), ("recency only", report.get("recency_only"))]
    if champion is not None:
        columns.insert(1, ("champion", champion.get("model")))
    for name, _ in columns:
        table.add_column(name, justify="right")
    for metric in ("auc", "pr_auc", "brier", "log_loss", "ece", "lift_top10"):
        cells = []
        for _, block in columns:
            value = (block or {}).get(metric)
            cells.append("" if value is None or value != value else f"{value:.4f}")
        table.add_row(metric, *cells)
    out.print(table)
    holdout = report.get("holdout_orders", {})
    if holdout:
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in holdout.items())
        out.print(f"orders in the horizon: {parts}")


@app.command()
@handles_errors
def backtest(
    orders: str = OrdersOption,
    cutoff: str = typer.Option(..., "--cutoff", help="Backtest cutoff YYYY-MM-DD; truth is the orders in (cutoff, cutoff + horizon]."),
    horizon_days: int = typer.Option(90, "--horizon-days", min=1, max=MAX_DAYS, help="Horizon in days."),
    json_path: Path = typer.Option(..., "--json", help="Where to write the metrics JSON; plots go beside it as <name>.<plot>.png."),
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
) -> None:
    """Temporal backtest: fit on data up to the cutoff, compare with what happened next.

    Reports the model against BG/NBD alone and a recency-only baseline on the same split:
    AUC, PR-AUC, Brier, log loss, calibration error, lift; revenue Gini and decile error;
    next-order timing error and coverage; and a weekly tracking plot.
    """
    from features.io import check_output_path
    from features.orders import parse_date
    from training.jobs import backtest_job
    from training.registry import configure_tracking

    cut = parse_date(cutoff, "--cutoff")
    check_output_path(json_path)
    log = _load(orders, column_map, exclude_products)
    configure_tracking(_tracking_uri())
    with err.status(f"backtesting at {cut.date()} over {horizon_days} days ..."):
        result = backtest_job(log, cut, horizon_days, json_path)
    _print_comparison(result.report)
    out.print(f"wrote {json_path} and {len(result.plots)} plots beside it")


@app.command()
@handles_errors
def score(
    orders: str = OrdersOption,
    as_of: str = typer.Option(..., "--as-of", help="Score as of this date YYYY-MM-DD; later orders are ignored (and counted)."),
    out_path: Path = typer.Option(..., "--out", help="Parquet file of scores, one row per customer."),
    model: str = typer.Option("models:/repurchase@champion", "--model", help="MLflow model URI."),
    explain: bool = typer.Option(
        False, "--explain", help="Add reason_codes: the three features that moved each p_repurchase most (slower)."
    ),
    engine: str = EngineOption,
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
) -> None:
    """Score every customer with the registered model (batch).

    Writes the score contract (p_repurchase, next-order quantiles, expected orders and
    revenue, CLV, churn risk, RFM segment, lifecycle stage, ...) one row per customer, and
    the feature snapshot beside it (<name>.features.parquet) that `repurchase serve` uses
    for scoring by id. Orders after --as-of are ignored and counted. --explain adds
    reason_codes ("days_since_last=3 (+0.62); ..."), which `repurchase target` carries into
    the audiences.

    With --engine spark, features are computed by Spark and the model runs in Spark's
    Python workers (mlflow.pyfunc.spark_udf); --out is then a folder partitioned by
    lifecycle_stage (lifecycle_stage=active/part-*.parquet, ...) and the snapshot a
    folder of part files. --explain is not available with --engine spark.
    """
    from features.io import check_output_path
    from features.orders import parse_date
    from serving.batch import snapshot_path_for
    from training.registry import configure_tracking, load_scorer

    _check_engine(engine)
    day = parse_date(as_of, "--as-of")
    if engine == "spark" and explain:
        raise InputError("--explain: reason codes are computed by the local engine only; drop --explain or use --engine duckdb")
    for path in (out_path, snapshot_path_for(out_path)):
        check_output_path(path, folder=engine == "spark")
    if engine == "spark":
        configure_tracking(_tracking_uri())
        _score_on_spark(orders, day, out_path, model, column_map, exclude_products)
        return
    log = _load(orders, column_map, exclude_products)
    configure_tracking(_tracking_uri())
    with err.status(f"loading model {escape(model)} ..."):
        scorer, version = load_scorer(model)
    run = _score_with_progress(scorer, log, day, out_path, version, explain)
    if run.defaults_used:
        shown = ", ".join(f"{name} {value!r}" if isinstance(value, str) else f"{name} {value:g}"
                          for name, value in run.defaults_used.items())
        err.print(f"warning: {log.source} has no {', '.join(run.defaults_used)} column, which the model was trained "
                  f"with; scored with the order-log contract's defaults ({shown})")
    if run.n_future_orders_ignored:
        err.print(f"warning: ignored {run.n_future_orders_ignored:,} orders after --as-of {day.date()}")
    out.print(f"wrote {run.scores_path} ({run.n_customers:,} customers, model version {version or 'unregistered'}) "
              f"and the feature snapshot {run.snapshot_path}")


def _score_on_spark(orders: str, day, out_path: Path, model: str, column_map: Optional[str],
                    exclude_products: Optional[str]) -> None:
    import time

    from features.spark import open_spark, read_orders
    from serving.spark_batch import score_on_spark

    began = time.perf_counter()
    with err.status("starting Spark ...") as status, open_spark() as spark:
        status.update("reading and checking orders on Spark ...")
        log = read_orders(spark, orders, column_map, exclude_products=exclude_products)
        out.print(log.description, soft_wrap=True)
        run = score_on_spark(spark, log, day, out_path, model_uri=model,
                             progress=lambda message: status.update(f"{message} on Spark ..."))
    if run.n_future_orders_ignored:
        err.print(f"warning: ignored {run.n_future_orders_ignored:,} orders after --as-of {day.date()}")
    out.print(f"wrote {run.scores_path} (Spark, partitioned by lifecycle_stage; {run.n_customers:,} customers) "
              f"and the feature snapshot {run.snapshot_path} in {time.perf_counter() - began:.0f} s")


def _score_with_progress(scorer, log, day, out_path, version, explain=False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from serving.batch import score_log

    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("score", total=None)
        return score_log(scorer, log, day, out_path, model_version=version, explain=explain,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))


@app.command()
@handles_errors
def target(
    scores: Path = typer.Option(..., "--scores", help="Scores Parquet written by `repurchase score`."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for one CSV per action and a summary."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="Rules YAML; the shipped default rules when omitted."),
    replenishment: Optional[Path] = typer.Option(
        None, "--replenishment", help="Parquet written by `repurchase replenish`: category reminders (replenish_* columns)."
    ),
) -> None:
    """Apply targeting rules to scores: audiences with actions and reasons.

    Rules (YAML) are tried in order; the first that matches gives the customer its action
    and a reason in words. Writes one CSV per action and summary.csv to --out. The feature
    snapshot written by `repurchase score` beside the scores (<name>.features.parquet) is
    joined automatically, so rules and reasons can use feature columns too. With
    --replenishment, the default rules remind customers of the category that is due
    ("bought coffee every 21 days; last 18 days ago; reminder due 2025-10-02").
    """
    from features.io import check_output_path
    from serving.batch import read_parquet_input, read_scored
    from serving.rules import apply_rules, load_rules, write_audiences

    check_output_path(out_dir, folder=True)
    rule_set = load_rules(rules)
    scores_frame, features = read_scored(scores)
    replenish_frame = read_parquet_input(replenishment, "--replenishment") if replenishment is not None else None
    targeted = apply_rules(scores_frame, rule_set, features=features, replenishment=replenish_frame)
    summary = write_audiences(targeted, out_dir)
    for row in summary.itertuples(index=False):
        out.print(f"{row.action}: {row.customers:,} customers ({row.share_of_scored:.1%}), "
                  f"expected revenue {row.expected_revenue_sum:,.0f}")
    out.print(f"wrote {len(summary)} audiences and summary.csv to {out_dir}")


@app.command()
@handles_errors
def replenish(
    orders: str = OrdersOption,
    as_of: str = typer.Option(..., "--as-of", help="As-of date YYYY-MM-DD."),
    out_path: Path = typer.Option(..., "--out", help="Parquet file: one row per (customer, category)."),
    lead_days: int = typer.Option(7, "--lead-days", min=0, max=MAX_DAYS,
                                  help="Send the reminder this many days before the expected reorder."),
    horizon_days: int = typer.Option(90, "--horizon-days", min=7, max=MAX_DAYS,
                                     help="p_within_horizon is P(a purchase within this many days)."),
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
) -> None:
    """Predict when each customer is due to rebuy each category they buy.

    Needs a `category` (or `product_id`) column; `quantity` stretches the cycle (two units
    last twice as long). Writes one row per (customer, category) bought on or before
    --as-of: last_purchase, next_purchase_days_p10/p50/p90 (days from --as-of, given a
    purchase within the horizon; 0 = due now), p_within_horizon, remind_on (--lead-days
    before the p50 date) and basis (own rhythm, or the category's when the customer has
    too few purchases of it). Trained on the spot on earlier cutoffs of the same log;
    the run is tracked in MLflow (MLFLOW_TRACKING_URI).
    Feed it to `repurchase target --replenishment FILE` for category reminders.
    """
    from features.io import check_output_path
    from features.orders import parse_date
    from training.jobs import replenish_job
    from training.registry import configure_tracking

    day = parse_date(as_of, "--as-of")
    check_output_path(out_path)
    log = _load(orders, column_map, exclude_products)
    configure_tracking(_tracking_uri())
    with err.status(f"learning replenishment cycles up to {day.date()} and predicting ..."):
        result = replenish_job(log, day, horizon_days, lead_days=lead_days, out_path=out_path, log_to_mlflow=True)
    if result.n_future_lines_ignored:
        err.print(f"warning: ignored {result.n_future_lines_ignored:,} order lines after --as-of {day.date()}")
    _print_replenishment(result.frame)
    out.print(f"wrote {out_path} ({len(result.frame):,} customer-category pairs)")


def _print_replenishment(frame) -> None:
    from rich.table import Table

    due = frame["next_purchase_days_p50"] <= 14
    likely = frame["p_within_horizon"] >= 0.5
    table = Table(title=f"replenishment as of {frame['as_of'].iloc[0].date() if len(frame) else '-'}")
    for column in ("category", "pairs", "own rhythm", "likely within horizon", "due in 14 days & likely"):
        table.add_column(column, justify="left" if column == "category" else "right")
    grouped = frame.assign(own=frame["basis"] == "own", likely=likely, due=due & likely).groupby("category")
    summary = grouped.agg(pairs=("customer_id", "size"), own=("own", "mean"), likely=("likely", "sum"), due=("due", "sum"))
    for category, row in summary.sort_values("pairs", ascending=False).head(15).iterrows():
        table.add_row(str(category), f"{int(row.pairs):,}", f"{row.own:.0%}", f"{int(row.likely):,}", f"{int(row.due):,}")
    out.print(table)


DEFAULT_SNAPSHOT = Path("out/quickstart/scores.features.parquet")


@app.command()
@handles_errors
def serve(
    model: str = typer.Option("models:/repurchase@champion", "--model", help="MLflow model URI."),
    port: int = typer.Option(3000, "--port", min=1, max=65535, help="HTTP port."),
    snapshot: Optional[Path] = typer.Option(
        None,
        "--snapshot",
        help="Feature snapshot for scoring by id (written by `repurchase score` as <name>.features.parquet); "
        f"default {DEFAULT_SNAPSHOT} when it exists. Without one, only scoring from order histories works.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
) -> None:
    """Serve online scoring over HTTP with BentoML.

    POST /score and POST /target take {"customer_ids": [...]} (looked up in the snapshot)
    or {"customers": [{"customer_id": ..., "orders": [{"order_ts": ..., "amount": ...}]}]}
    (scored from the history by the same feature code as batch). GET /healthz, /readyz;
    API docs (Swagger UI) at /, the OpenAPI document at /docs.json. With REPURCHASE_API_KEY
    set, requests need "Authorization: Bearer <key>". Ctrl-C stops it.
    """
    from serving.online import serve_command
    from training.registry import configure_tracking

    configure_tracking(_tracking_uri())
    if snapshot is None and DEFAULT_SNAPSHOT.exists():
        snapshot = DEFAULT_SNAPSHOT
    serve_command(model, port, snapshot, host=host)


@app.command()
@handles_errors
def quickstart(
    out_dir: Path = typer.Option(Path("out/quickstart"), "--out", help="Folder for the results."),
    orders: str = typer.Option(
        "cdnow", "--orders", help="Order log to run on (default: the built-in CDNOW log); any source `--orders` takes."
    ),
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
) -> None:
    """Run the whole job on the built-in CDNOW log (or --orders) and write the results to --out.

    Backtest (the model against BG/NBD and recency-only), train and register the champion,
    score every customer, apply the default rules, write report.html. When the log has
    categories (e.g. `repurchase synth`), also the product-level replenishment backtest,
    replenishment.parquet and category reminders.
    """
    from serving.quickstart import run_quickstart

    run_quickstart(out_dir, console=out, tracking_uri=_tracking_uri(), source=orders, column_map=column_map,
                   exclude_products=exclude_products)


def _quiet_libraries() -> None:
    """Keep MLflow's and LightGBM's chatter out of the user's terminal (our own messages say what matters)."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow configures its loggers on import
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    for module in (r"mlflow(\..*)?", r"lightgbm(\..*)?", r"sklearn(\..*)?", r"lifetimes(\..*)?", r"pydantic(\..*)?"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _stop_on_sigterm(signum, frame):
    # `kill` (SIGTERM) unwinds like Ctrl-C, so temporary outputs are removed and MLflow runs end.
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point."""
    import signal

    _quiet_libraries()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    app(prog_name="repurchase")


if __name__ == "__main__":
    main()
