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

from features.common.errors import InputError
from serving.tables import print_backtest
from training.i18n import N_, NC_

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

MAX_DAYS = 3650  # horizons and lead times: ten years is already more than any log supports
DEFAULT_HORIZON_DAYS = 90  # what "stale" means for commands without a horizon of their own

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
TiersOption = typer.Option(
    None,
    "--tiers",
    help="Member tiers YAML (basis: spend|orders; tiers: [{name, min}, ...] lowest first, the first at min 0); "
    "default: silver 0, gold 100, diamond 300 on trailing 365-day spend.",
)
LangOption = typer.Option(
    None,
    "--lang",
    help="Language of what a person reads (report, plots, printed tables, audience reasons): en or zh. "
    "Default: $REPURCHASE_LANG, else en. Files keep English column names and values.",
)


def _language(lang: str | None):
    """The ``training.i18n.Language`` of ``--lang`` / ``$REPURCHASE_LANG``; a language not offered is bad input."""
    from training.i18n import language

    try:
        return language(lang)
    except ValueError as exc:
        raise InputError(str(exc)) from None


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


def _check_as_of(log, day, flag: str, horizon_days: int, *, count_orders: bool = True, lang=None) -> None:
    """Refuse a date before the first order; warn (one line, in ``lang``) about a stale export, or
    count the orders after the date, which are ignored."""
    from features.orders import check_cutoff

    lang = lang or _language("en")
    stale = check_cutoff(log, day, flag=flag, stale_after_days=horizon_days, lang=lang)
    if stale:
        err.print(lang.gettext("warning: {message}").format(message=stale))
    if count_orders and log.last_order_date > day:
        n_after = log.orders_after(day)
        if n_after:
            err.print(lang.gettext("warning: ignored {n} orders after {flag} {date}").format(
                n=lang.count(n_after), flag=flag, date=day.date()))


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
    campaigns: bool = typer.Option(
        False, "--campaigns", help="Add a year of past monthly campaigns (replenishment_reminder, churn_warning, "
        "win_back) with a random 10% holdout and a known effect, and write their contacts file beside --out as "
        "<name>.contacts.parquet (customer_id, action, contacted_at, group, holdout_share), for `repurchase measure`."
    ),
) -> None:
    """Write a realistic synthetic order log for tests and benchmarks.

    Heterogeneous purchase rates with dropout, replenishment customers on regular
    cycles, 6.18 and 11.11 peaks, a quiet Spring Festival, community vs storefront
    channels, categories and products, order values with customer-level means.
    --months 7 makes a shop that opened seven months before --end; --messy adds what real
    exports carry (see features.synth.make_messy), for trying the loader's rules.

    --campaigns runs past campaigns on the simulated shop (see features.campaigns): some
    customers buy only if contacted, some buy anyway, some never buy, and a few are put
    off by a contact; the log holds what the treatment group then did, the contacts file
    who was sent and who was held out. The true lift of each action is printed (and kept
    in the contacts file's metadata), so `repurchase measure` can be checked against it.
    """
    import time

    from features.common.outputs import check_output_path, write_parquet
    from features.orders import parse_date
    from features.synth import generate_order_log, make_messy

    if months is not None and start is not None:
        raise InputError("give --start or --months, not both")
    if campaigns and messy:
        raise InputError("--campaigns and --messy: give one; a messy export would blur the campaigns' known effect")
    last = parse_date(end, "--end")
    if months is not None:
        first = last - _months(months) + _days(1)
        start = str(first.date())
    start = start or "2023-01-01"
    if last <= parse_date(start, "--start"):
        raise InputError(f"--end {end} must be after --start {start}")
    check_output_path(out_path)
    began = time.perf_counter()
    if campaigns:
        _synth_campaigns(customers, seed, start, end, out_path)
        return
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


def contacts_path_for(out_path: Path) -> Path:
    """Where `synth --campaigns` writes the contacts file: beside the log, as <name>.contacts.parquet."""
    return out_path.with_name(f"{out_path.stem}.contacts.parquet")


def _synth_campaigns(customers: int, seed: int, start: str, end: str, out_path: Path) -> None:
    import json
    import time

    import pyarrow.parquet as pq

    from features.campaigns import simulate_campaigns
    from features.common.outputs import atomic_paths, check_output_path, stamped_table

    contacts_path = contacts_path_for(out_path)
    check_output_path(contacts_path)
    began = time.perf_counter()
    with err.status(f"simulating {customers:,} customers and a year of campaigns ..."):
        simulated = simulate_campaigns(customers, seed=seed, start=start, end=end)
    truth = json.dumps(simulated.true_effects)
    with err.status(f"writing {out_path} and {contacts_path} ..."), atomic_paths([out_path, contacts_path]) as (log_tmp, contacts_tmp):
        pq.write_table(stamped_table(simulated.lines, "synth", campaigns=True), log_tmp)
        pq.write_table(stamped_table(simulated.contacts, "contacts", window_days=simulated.window_days,
                                     true_effects=truth), contacts_tmp)
    lines = simulated.lines
    out.print(
        f"wrote {out_path}: {lines['customer_id'].nunique():,} customers, {lines['order_id'].nunique():,} orders, "
        f"{len(lines):,} lines from {start} to {end}; and {contacts_path}: {len(simulated.contacts):,} contacts in "
        f"{simulated.contacts['contacted_at'].nunique()} campaigns, in {time.perf_counter() - began:.1f} s"
    )
    for action, truth_block in simulated.true_effects.items():
        out.print(f"true lift over {simulated.window_days} days, {action}: {100 * truth_block['rate_diff']:+.1f} points "
                  f"on {truth_block['customers']:,} contacts ({truth_block['holdout']:,} held out), "
                  f"{truth_block['incremental_orders']:,.0f} incremental orders")


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


def _load(orders: str, column_map: Optional[str], exclude_products: Optional[str], lang=None):
    """Load and check the order log, and say in one line (in ``lang``) what it holds and what the loader's rules did."""
    from features.orders import load_order_log

    with err.status((lang or _language("en")).gettext("loading orders ...")):
        log = load_order_log(orders, column_map, exclude_products=exclude_products)
        description = log.describe(lang)
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

    Any date on or after the first order works; orders after it are ignored (and counted),
    and a date more than 90 days after the last order gets a warning (a stale export?).
    Both engines run the same feature definitions and give the same values. DuckDB writes
    one file sorted by customer_id; Spark writes a folder of part files (unsorted) that
    pandas, pyarrow, DuckDB and Spark read as one table.
    """
    from features.common.outputs import check_output_path, write_parquet
    from features.orders import parse_date

    _check_engine(engine)
    cut = parse_date(cutoff, "--cutoff")
    check_output_path(out_path, folder=engine == "spark")
    if engine == "spark":
        _features_on_spark(orders, cut, out_path, column_map, exclude_products)
        return
    log = _load(orders, column_map, exclude_products)
    _check_as_of(log, cut, "--cutoff", DEFAULT_HORIZON_DAYS)
    from features.pipeline import build_features

    with err.status(f"computing features as of {cut.date()} ..."):
        frame = build_features(log.orders_table(), cut)
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
        stale = check_cutoff(log, cut, stale_after_days=DEFAULT_HORIZON_DAYS)
        if stale:
            err.print(f"warning: {stale}")
        elif log.last_order_date > cut:
            from features.timecut import after

            n_after = after(log.orders, cut).count()
            if n_after:
                err.print(f"warning: ignored {n_after:,} orders after --cutoff {cut.date()}")
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
    uplift: bool = typer.Option(
        False, "--uplift", help="Also learn, from the past randomised contacts of --contacts, how much contacting "
        "changes each customer's chance of an order within --window-days; scores then carry uplift."
    ),
    contacts: Optional[Path] = typer.Option(
        None, "--contacts", help="With --uplift: contacts file (CSV or Parquet: customer_id, action, contacted_at, "
        "group) of past campaigns with random holdouts, e.g. written by `repurchase synth --campaigns`."
    ),
    window_days: int = typer.Option(30, "--window-days", min=1, max=365,
                                    help="With --uplift: an order on the days 1 to N after a contact counts."),
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
    lang: Optional[str] = LangOption,
) -> None:
    """Train the composite model (BTYD + LightGBM) and log it to MLflow.

    First a backtest at cutoff - horizon (its truth is known by the cutoff) against BG/NBD
    and recency-only; then the final fit on all orders up to the cutoff. With --register
    the model becomes 'champion' when there is none, else 'challenger' unless it beats the
    champion on that same backtest.

    Any cutoff on or after the first order works. A young log trains a BTYD-only model
    (BG/NBD + Gamma-Gamma; the output says what more history would unlock LightGBM), and a
    BG/NBD fit that finds no drop-out yet is a labelled answer, not an error.

    --uplift --contacts FILE: learns, from contacts whose window ended by the cutoff, each
    customer's uplift per action (features as of each contact's date): P(order | sent) on
    LightGBM, and per action the share of would-be non-buyers a contact persuades. It is first judged on the latest campaigns (about 30% of the contacts), having
    learned only from the earlier ones: Qini coefficient and uplift at 10% and 30% for the
    uplift ranking, ranking by p_repurchase, and random. Then it learns from all of them and
    goes inside the registered model: scores gain uplift (the best action's) and
    uplift_<action>, which rules and the budget (rank_by: uplift) can use.
    """
    from features.orders import parse_date
    from training.jobs import prepare_uplift, train_job
    from training.registry import configure_tracking

    language = _language(lang)
    if uplift and contacts is None:
        raise InputError("--uplift needs --contacts FILE: the past campaigns' contacts, with their random holdouts")
    if contacts is not None and not uplift:
        raise InputError("--contacts is read by --uplift only; add --uplift to learn from the contacts")
    cut = parse_date(cutoff, "--cutoff")
    past_contacts = None
    if uplift:
        from features.contacts import load_contacts

        past_contacts = load_contacts(contacts)
    log = _load(orders, column_map, exclude_products, language)
    _check_as_of(log, cut, "--cutoff", horizon_days, lang=language)
    uplift_data = None
    if past_contacts is not None:
        with err.status(language.gettext("reading {n} contacts' features as of their dates ...").format(
                n=language.count(len(past_contacts)))):
            uplift_data = prepare_uplift(log, past_contacts, cut, window_days)
        _ = language.gettext
        if uplift_data.n_window_not_over:
            err.print(_("warning: ignored {n} contacts whose {days}-day window ends after {date}").format(
                n=language.count(uplift_data.n_window_not_over), days=window_days, date=uplift_data.learn_until.date()))
        if uplift_data.n_without_history:
            err.print(_("warning: ignored {n} contacts of customers with no order on or before their contact date")
                      .format(n=language.count(uplift_data.n_without_history)))
    configure_tracking()
    with err.status(language.gettext("backtesting at {split} and training at {cutoff} ...").format(
            split=(cut - _days(horizon_days)).date(), cutoff=cut.date())):
        result = train_job(log, cut, horizon_days, register=register, uplift=uplift_data)
    print_backtest(out, result.backtest.report, lang=language,
                   champion=result.champion_backtest.report if result.champion_backtest else None)
    if result.uplift is not None:
        _print_uplift(result.uplift, language)
    _print_model(result.model, language)
    _ = language.gettext
    registered = (_("; registered version {version} as {alias}").format(version=result.logged.version,
                                                                      alias=result.logged.alias)
                  if result.logged.version else "")
    out.print(_("MLflow run {run_id}{registered}").format(run_id=result.logged.run_id, registered=registered))


# the rankings of the uplift table, as a reader of another language sees them (English: the names)
UPLIFT_RANKINGS = (NC_("ranking", "uplift"), NC_("ranking", "p_repurchase"), NC_("ranking", "random"))


def _print_uplift(report: dict, lang) -> None:
    """The uplift model on the held-out campaigns, beside ranking by p_repurchase and at random."""
    from rich.table import Table

    _ = lang.gettext
    learn, held = report["learn"], report["held_out"]
    table = Table(title=_("uplift on the held-out campaigns {first} to {last} ({contacts} contacts, {holdout} held out), "
                          "{days}-day window").format(first=held["first"], last=held["last"],
                                                      contacts=lang.count(held["contacts"]),
                                                      holdout=lang.count(held["holdout"]), days=report["window_days"]))
    columns = (N_("ranking"), N_("qini"), N_("uplift@10%"), N_("uplift@30%"), N_("extra buyers @30%"),
               N_("extra orders @30%"))
    for column in columns:
        table.add_column(_(column), justify="left" if column == "ranking" else "right")

    def cell(value, kind) -> str:
        if value is None:
            return "-"
        if kind == "points":
            return _("{points} pts").format(points=lang.signed(100 * value, 1))
        return lang.signed(value, 0) if kind == "count" else lang.decimal(value)

    for name, block in report["rankings"].items():
        table.add_row(lang.name_or_label("ranking", name), cell(block["qini_auc"], "ratio"),
                      cell(block["uplift_at_10"], "points"), cell(block["uplift_at_30"], "points"),
                      cell(block["incremental_buyers_at_30"], "count"), cell(block["incremental_orders_at_30"], "count"))
    out.print(table)
    ratio = report.get("ratio_at_30")
    versus = (_("{ratio}x ranking by p_repurchase").format(ratio=lang.decimal(ratio, 2)) if ratio is not None
              else report.get("p_repurchase_note") or _("p_repurchase's uplift@30% is not positive: no ratio"))
    out.print(_("uplift@30%: {versus}; learned from {contacts} contacts ({first} to {last}), then from all {total} for "
                "the model ({actions})").format(
        versus=versus, contacts=lang.count(learn["contacts"]), first=learn["first"], last=learn["last"],
        total=lang.count(report["final"]["contacts"]),
        actions=_(", ").join(lang.name_or_label("action", a) for a in report["final"]["actions"])))


def _print_model(model, lang) -> None:
    """What was trained, in a line or two: BTYD-only or the full model, and a BTYD fit that ran to a boundary."""
    from training.btyd import INTERIOR, fit_status_meaning
    from training.model import btyd_only_note

    _ = lang.gettext
    cutoff = model.spec_.training_cutoff
    if model.is_btyd_only():
        out.print(_("model at {cutoff}: {reason}").format(cutoff=cutoff, reason=btyd_only_note(model, lang)))
    else:
        origins = model.spec_.origins
        season = getattr(model, "season_origin_", None)  # models pickled before seasons have none
        seasonal = _("; {season} covers the horizon's season a year earlier").format(season=season) if season else ""
        out.print(_("model at {cutoff}: LightGBM on BTYD features, {n} training origins ({first} to {last}{seasonal})")
                  .format(cutoff=cutoff, n=len(origins), first=origins[0], last=origins[-1], seasonal=seasonal))
    status = getattr(model.bgnbd_, "fit_status_", INTERIOR)
    if status != INTERIOR:
        out.print(_("BG/NBD at {cutoff}: {meaning}").format(cutoff=cutoff, meaning=fit_status_meaning(status, lang)))
    alive = getattr(model, "alive_model_", None)
    if alive is not None and alive is not model.bgnbd_ and alive.fit_status_ != INTERIOR:
        out.print(_("MBG/NBD (p_alive) at {cutoff}: {meaning}").format(
            cutoff=cutoff, meaning=fit_status_meaning(alive.fit_status_, lang)))


def _days(n: int):
    import pandas as pd

    return pd.Timedelta(days=n)


@app.command()
@handles_errors
def backtest(
    orders: str = OrdersOption,
    cutoff: str = typer.Option(..., "--cutoff", help="Backtest cutoff YYYY-MM-DD; truth is the orders in (cutoff, cutoff + horizon]."),
    horizon_days: int = typer.Option(90, "--horizon-days", min=1, max=MAX_DAYS, help="Horizon in days."),
    json_path: Path = typer.Option(..., "--json", help="Where to write the metrics JSON; plots go beside it as <name>.<plot>.png."),
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
    tiers: Optional[Path] = TiersOption,
    lang: Optional[str] = LangOption,
) -> None:
    """Temporal backtest: fit on data up to the cutoff, compare with what happened next.

    Reports the model against BG/NBD alone and a recency-only baseline on the same split:
    AUC, PR-AUC, Brier, log loss, calibration error, lift; revenue Gini and decile error;
    next-order timing error and coverage; the model's calibration at each training origin
    (calibration_by_origin); and a weekly tracking plot. cutoff + horizon must
    lie within the log. When the history before the cutoff is too short to train the model,
    its column is empty (nulls in the JSON) and one line says why; BG/NBD and recency-only
    are still reported. When the log reaches a year past the cutoff, the tiers block compares
    the member tier predicted a year on with the one reached, beside "the tier stays".
    """
    from features.common.outputs import check_output_path
    from features.orders import parse_date
    from training.jobs import backtest_job
    from training.registry import configure_tracking

    language = _language(lang)
    cut = parse_date(cutoff, "--cutoff")
    tier_set = _load_tiers(tiers)
    check_output_path(json_path)
    log = _load(orders, column_map, exclude_products, language)
    configure_tracking()
    with err.status(language.gettext("backtesting at {cutoff} over {days} days ...").format(cutoff=cut.date(),
                                                                                      days=horizon_days)):
        result = backtest_job(log, cut, horizon_days, json_path, tiers=tier_set, lang=language.code)
    print_backtest(out, result.report, lang=language)
    _print_tiers(result.report.get("tiers"), language)
    out.print(language.gettext("wrote {json} and {n} plots beside it").format(json=json_path, n=len(result.plots)))


TIER_BASES = {"spend": N_("spend"), "orders": N_("orders")}


def _print_tiers(block: dict | None, lang) -> None:
    if not block:
        return
    _ = lang.gettext
    basis = block["basis"]
    out.print(_("member tiers a year on ({customers} customers, {basis}): accuracy {accuracy}, macro-F1 {f1}; the tier "
                "stays: accuracy {kept_accuracy}, macro-F1 {kept_f1}").format(
        customers=lang.count(block["n_customers"]), basis=_(TIER_BASES[basis]) if basis in TIER_BASES else basis,
        accuracy=lang.decimal(block["accuracy"]), f1=lang.decimal(block["macro_f1"]),
        kept_accuracy=lang.decimal(block["persistence_accuracy"]), kept_f1=lang.decimal(block["persistence_macro_f1"])))


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
    tiers: Optional[Path] = TiersOption,
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

    Member tiers: member_tier (trailing 365-day spend), predicted_tier (12 months ahead),
    p_upgrade, p_downgrade and spend_to_next_tier, on the shipped silver / gold / diamond
    thresholds or those in --tiers FILE (no retraining needed to change them; on Spark they
    go to the pyfunc as its tiers param, which models registered before it existed lack).
    """
    from features.common.outputs import check_output_path
    from features.orders import parse_date
    from serving.batch import snapshot_path_for
    from training.registry import configure_tracking, load_scorer

    _check_engine(engine)
    day = parse_date(as_of, "--as-of")
    tier_set = _load_tiers(tiers)
    if engine == "spark" and explain:
        raise InputError("--explain: reason codes are computed by the local engine only; drop --explain or use --engine duckdb")
    for path in (out_path, snapshot_path_for(out_path)):
        check_output_path(path, folder=engine == "spark")
    if engine == "spark":
        configure_tracking()
        _score_on_spark(orders, day, out_path, model, column_map, exclude_products, tier_set if tiers is not None else None)
        return
    log = _load(orders, column_map, exclude_products)
    configure_tracking()
    with err.status(f"loading model {escape(model)} ..."):
        scorer, version = load_scorer(model)
    _check_as_of(log, day, "--as-of", scorer.horizon_days, count_orders=False)
    run = _score_with_progress(scorer, log, day, out_path, version, explain, tier_set)
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
                    exclude_products: Optional[str], tiers=None) -> None:
    import time

    from features.spark import open_spark, read_orders
    from serving.spark_batch import score_on_spark

    began = time.perf_counter()
    with err.status("starting Spark ...") as status, open_spark() as spark:
        status.update("reading and checking orders on Spark ...")
        log = read_orders(spark, orders, column_map, exclude_products=exclude_products)
        out.print(log.description, soft_wrap=True)
        run = score_on_spark(spark, log, day, out_path, model_uri=model, tiers=tiers,
                             progress=lambda message: status.update(f"{message} on Spark ..."))
    if run.n_future_orders_ignored:
        err.print(f"warning: ignored {run.n_future_orders_ignored:,} orders after --as-of {day.date()}")
    out.print(f"wrote {run.scores_path} (Spark, partitioned by lifecycle_stage; {run.n_customers:,} customers) "
              f"and the feature snapshot {run.snapshot_path} in {time.perf_counter() - began:.0f} s")


def _load_tiers(path: Optional[Path]):
    from training.tiers import load_tiers

    return load_tiers(path)


def _score_with_progress(scorer, log, day, out_path, version, explain=False, tiers=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from serving.batch import score_log

    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("score", total=None)
        return score_log(scorer, log, day, out_path, model_version=version, explain=explain, tiers=tiers,
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
    contacts: Optional[Path] = typer.Option(
        None, "--contacts", help="Contacts file (CSV or Parquet: customer_id, action, contacted_at, group) of past "
        "campaigns, for the rules' cooldown_days and the file's contact_cap."
    ),
    campaign_date: Optional[str] = typer.Option(
        None, "--campaign-date", help="Date YYYY-MM-DD of this campaign, for the holdout draw and the cooldowns "
        "(default: the scores' as_of date)."
    ),
    previous: Optional[Path] = typer.Option(
        None, "--previous", help="Scores Parquet of an earlier run: rules may use previous_lifecycle_stage and "
        "previous_rfm_segment, and --out gets transitions.json (who moved from which stage and segment to which)."
    ),
    lang: Optional[str] = LangOption,
) -> None:
    """Apply targeting rules to scores: audiences with actions, reasons and holdouts.

    Rules (YAML) are tried in order; the first that matches gives the customer its action
    and a reason in words. Writes one CSV per action and summary.csv to --out. The feature
    snapshot written by `repurchase score` beside the scores (<name>.features.parquet) is
    joined automatically, so rules and reasons can use feature columns too. With
    --replenishment, the default rules remind customers of the category that is due
    ("bought coffee every 21 days; last 18 days ago; reminder due 2025-10-02").

    Every action keeps a random holdout (10%, or the rule's `holdout:`; 0.0 turns it off):
    each audience row has group = treatment or holdout, drawn from a hash of the customer
    id, the action and the campaign date (--campaign-date, default the scores' as_of), so a
    rerun on the same day gives the same groups and no score influences them. --out/send/
    holds, per action, the treatment rows only: what goes to the messaging tool. With
    --contacts, customers in a rule's cooldown or over the contact cap are held back: they
    stay in the audience file with held_back saying why ("contacted 3 days ago for
    replenishment_reminder") and are not sent. Record the audience rows without held_back
    (both groups; contacted_at = campaign_date) as contacts for `repurchase measure`.

    With --previous OLD_SCORES.parquet, each customer's lifecycle stage and RFM segment of
    that run join as previous_lifecycle_stage and previous_rfm_segment ("acquired_since" for
    customers acquired since; "unknown" for all without --previous): the default churn warning also
    fires for customers who moved from active to at_risk since then. --out gets
    transitions.json, the lifecycle and RFM transition matrices.
    """
    from features.contacts import load_contacts
    from features.common.outputs import check_output_path
    from features.orders import parse_date
    from serving.batch import read_parquet_input, read_scored
    from serving.migration import add_previous, check_order, read_previous, transitions, write_transitions
    from serving.targeting import Campaign, apply_rules, load_rules, write_audiences

    language = _language(lang)
    _ = language.gettext
    check_output_path(out_dir, folder=True)
    day = parse_date(campaign_date, "--campaign-date") if campaign_date is not None else None
    rule_set = load_rules(rules)
    past = load_contacts(contacts) if contacts is not None else None
    before = read_previous(previous) if previous is not None else None
    scores_frame, features = read_scored(scores)
    if before is not None:
        check_order(before, scores_frame, previous)
        features = add_previous(features if features is not None else scores_frame[["customer_id"]], before)
    replenish_frame = read_parquet_input(replenishment, "--replenishment") if replenishment is not None else None
    targeted = apply_rules(scores_frame, rule_set, features=features, replenishment=replenish_frame,
                           campaign=Campaign(date=day, contacts=past), lang=language.code)
    summary = write_audiences(targeted, out_dir)
    if before is not None:
        moves = transitions(add_previous(scores_frame, before), before)
        write_transitions(moves, out_dir / "transitions.json")
        since = moves.get("previous_as_of") or _("the previous run")
        out.print(_("since {since}: {moved} customers changed lifecycle stage ({at_risk} from {active} to {risky}), "
                    "{acquired} acquired since; transitions.json in {folder}").format(
            since=since, moved=language.count(moves["moved_lifecycle"]), at_risk=language.count(moves["active_to_at_risk"]),
            active=language.name_or_label("lifecycle_stage", "active"),
            risky=language.name_or_label("lifecycle_stage", "at_risk"),
            acquired=language.count(moves["acquired_since"]), folder=out_dir))
    counts = _group_counts(targeted)
    extra = _extra_buyers(targeted)
    for row in summary.itertuples(index=False):
        treatment, holdout, held = counts.get(row.action, (0, 0, 0))
        held_text = _(", {held} held back").format(held=language.count(held)) if past is not None else ""
        extra_text = (_(", {buyers} buyers from the uplift of those sent").format(
            buyers=("+" if extra[row.action] >= 0 else "") + language.count(extra[row.action]))
            if row.action in extra else "")
        out.print(_("{action}: {customers} customers ({share}; {treatment} to send, {holdout} holdout{held}), expected "
                    "revenue {revenue}{extra}").format(
            action=language.name_or_label("action", row.action),
            customers=language.count(row.customers), share=language.percent(row.share_of_scored),
            treatment=language.count(treatment), holdout=language.count(holdout), held=held_text,
            revenue=language.count(row.expected_revenue_sum), extra=extra_text))
    out.print(_("wrote {n} audiences, summary.csv and send/ (treatment only) to {folder}").format(
        n=len(summary), folder=out_dir))


def _extra_buyers(targeted) -> dict[str, float]:
    """Per action with a learned uplift: the customers to send times their uplift, summed (expected extra buyers)."""
    if "uplift" not in targeted.columns:
        return {}
    sent = targeted["action"].notna() & targeted["uplift"].notna()
    if "group" in targeted.columns:
        sent &= targeted["group"] == "treatment"
    if "held_back" in targeted.columns:
        sent &= targeted["held_back"].isna()
    return {str(action): float(rows["uplift"].sum()) for action, rows in targeted[sent].groupby("action")}


def _group_counts(targeted) -> dict[str, tuple[int, int, int]]:
    """Per action: customers to send, in the holdout, and held back."""
    acted = targeted[targeted["action"].notna()]
    held = acted["held_back"].notna() if "held_back" in acted.columns else acted["action"].isna()
    counts = {}
    for action, rows in acted.groupby("action"):
        kept = ~held.loc[rows.index]
        counts[str(action)] = (int(((rows["group"] == "treatment") & kept).sum()),
                               int(((rows["group"] == "holdout") & kept).sum()), int((~kept).sum()))
    return counts


EconomicsOption = typer.Option(
    None,
    "--economics",
    help="Economics YAML: economics: {cac: {CHANNEL: VALUE}, margin: 0.4} for LTV:CAC and payback per channel.",
)


@app.command()
@handles_errors
def economics(
    orders: str = OrdersOption,
    json_path: Path = typer.Option(..., "--json", help="Where to write economics.json; the cohort heatmap goes beside it."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Measure as of this date YYYY-MM-DD (default: the last order)."),
    scores: Optional[Path] = typer.Option(
        None, "--scores", help="Scores Parquet from `repurchase score`: adds predicted LTV (clv) to the realised."
    ),
    economics_file: Optional[Path] = EconomicsOption,
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
    lang: Optional[str] = LangOption,
) -> None:
    """Repurchase economics: repurchase rate by month, cohort retention, LTV, LTV:CAC, payback.

    Writes economics.json (repurchase rate by month; the cohort retention triangle; LTV by
    acquisition cohort and channel, realised so far plus the scores' predicted clv with
    --scores; LTV:CAC and payback months per channel with --economics; the value of 1, 5
    and 10 more points of repurchase rate from this log's own numbers) and the triangle as
    a heatmap (<name>.cohorts.png). A log without a channel column gets everything but the
    per-channel figures, and the JSON says what they need.
    """
    from features.common.outputs import check_output_path
    from features.orders import parse_date
    from serving.batch import read_parquet_input
    from training.economics import economics_report, load_economics, write_economics

    check_output_path(json_path)
    language = _language(lang)
    config = load_economics(economics_file)
    day = parse_date(as_of, "--as-of") if as_of is not None else None
    score_rows = read_parquet_input(scores, "--scores") if scores is not None else None
    log = _load(orders, column_map, exclude_products, language)
    if day is not None:
        _check_as_of(log, day, "--as-of", 90, lang=language)
    report = economics_report(log.orders, day if day is not None else log.last_order_date, score_rows, config,
                              source=log.source)
    written = write_economics(report, json_path, lang=language.code)
    _print_economics(report, language)
    out.print(language.gettext("wrote {json} and {cohorts}").format(json=written["json"], cohorts=written["cohorts"]))


def _print_economics(report: dict, language) -> None:
    _ = language.gettext
    value = report["value_of_repurchase"]
    out.print(_("last {days} days: {buyers} buyers, {rate} ordered twice or more").format(
        days=value["window_days"], buyers=language.count(value["buyers"]), rate=language.percent(value["repurchase_rate"])))
    for row in value["points"]:
        if row["extra_revenue"] is not None:
            out.print("  " + _("+{points} points of repurchase rate: {buyers} more repeat buyers, {revenue} more revenue "
                               "a year").format(points=row["points"], buyers=language.count(row["extra_repeat_buyers"]),
                                                revenue=language.count(row["extra_revenue"])))
    for row in report.get("ltv_cac") or []:
        months = row["payback_months"]
        payback = "–" if months is None else language.ngettext("{n} month", "{n} months", months).format(n=months)
        out.print("  " + _("{channel}: LTV {ltv}, LTV:CAC {ratio}, payback {payback}").format(
            channel=row["channel"], ltv=language.count(row["ltv"]), ratio=language.decimal(row["ltv_cac"], 2),
            payback=payback))
    if report.get("ltv_cac_note"):
        out.print(_(report["ltv_cac_note"]))


@app.command()
@handles_errors
def measure(
    contacts: Path = typer.Option(
        ..., "--contacts", help="Contacts file (CSV or Parquet): customer_id, action, contacted_at (date), group "
        "(treatment or holdout); optional holdout_share (the planned share, per action)."
    ),
    orders: str = OrdersOption,
    json_path: Path = typer.Option(..., "--json", help="Where to write the results JSON; the 'Did it work?' page "
                                   "goes beside it as <name>.html."),
    window_days: int = typer.Option(30, "--window-days", min=1, max=365,
                                    help="Count orders on the days 1 to N after each contact."),
    contact_cost: float = typer.Option(0.5, "--contact-cost", min=0.0, help="Cost of one contact, for ROI."),
    holdout_share: float = typer.Option(
        0.1, "--holdout-share", help="Planned holdout share, for the sample-ratio test of actions whose contacts "
        "have no holdout_share column."
    ),
    rules: Optional[Path] = typer.Option(
        None, "--rules", help="Rules YAML whose actions the contacts may name (default: the shipped rules)."
    ),
    column_map: Optional[str] = MapOption,
    lang: Optional[str] = LangOption,
) -> None:
    """Did it work? Compare each action's treatment group with its holdout after the contact.

    For every contact, counts the customer's orders in the window (the days 1 to
    --window-days after contacted_at; a contacted customer without an order is a
    non-buyer, never dropped). Per action and overall, for both groups: customers, buyers,
    repurchase rate, orders and revenue per customer; then the rate difference with its 95%
    interval (Newcombe) and p-value (score test), relative lift, incremental orders and
    revenue, ROI at --contact-cost, the smallest difference the group sizes can detect (80%
    power), and a sample-ratio test of the groups against the planned holdout share. It
    says plainly when an effect is not significant or the groups are too small to tell.
    Writes --json, the 'Did it work?' page beside it (<name>.html), and an MLflow run.
    Every window must lie inside the order log.
    """
    from features.contacts import load_contacts
    from features.common.outputs import check_output_path
    from features.orders import load_order_log
    from serving.targeting import load_rules
    from training.measure import check_contact_windows, log_measurement, measure_campaigns
    from training.registry import configure_tracking

    language = _language(lang)
    if not 0 < holdout_share < 1:
        raise InputError(f"--holdout-share: {holdout_share} is not a share between 0 and 1 (e.g. 0.1)")
    if json_path.suffix.lower() == ".html":
        raise InputError(f"--json: '{json_path}' names an HTML file; give a .json path (the page goes beside it)")
    report_path = json_path.with_suffix(".html")
    check_output_path(json_path)
    check_output_path(report_path)
    actions = {rule.action for rule in load_rules(rules).rules}
    past = load_contacts(contacts, known_actions=actions)
    with err.status(language.gettext("loading orders ...")):
        log = load_order_log(orders, column_map)
    check_contact_windows(past, log.first_order_date, log.last_order_date, window_days, origin=past.attrs["origin"])
    with err.status(language.gettext("measuring {n} contacts over {days}-day windows ...").format(
            n=language.count(len(past)), days=window_days)):
        result = measure_campaigns(past, log.orders, window_days=window_days, contact_cost=contact_cost,
                                   holdout_share=holdout_share)
    _write_measurement(result, json_path, report_path, language.code)
    configure_tracking()
    run_id = log_measurement(result, json_path, report_path, orders_source=log.source, contacts_source=str(contacts))
    _print_measurement(result, language)
    if result["contacts_without_any_order"]:
        err.print(language.gettext("note: {n} contacted customers have no order at all in {source}; they count as "
                                   "non-buyers").format(n=language.count(result["contacts_without_any_order"]),
                                                        source=log.source))
    out.print(language.gettext("wrote {json} and {page}; MLflow run {run_id}").format(json=json_path, page=report_path,
                                                                                     run_id=run_id))


def _write_measurement(result: dict, json_path: Path, report_path: Path, lang: str) -> None:
    """The JSON and its page, both complete before either replaces an earlier one."""
    import json

    from features.common.outputs import atomic_paths
    from serving.report import build_measurement_html

    page = build_measurement_html(result, lang=lang)
    with atomic_paths([json_path, report_path]) as (json_tmp, page_tmp):
        json_tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        page_tmp.write_text(page, encoding="utf-8")


VERDICTS = {"significant": N_("significant"), "not_significant": N_("not significant"), "too_small": N_("too small")}


def _print_measurement(result: dict, lang) -> None:
    from rich.table import Table

    from training.measure import verdict_summary

    _ = lang.gettext

    def pct(value, signed=False):
        if value is None:
            return "-"
        return lang.signed(100 * value, 1) if signed else lang.percent(value)

    table = Table(title=_("did it work? {days}-day window, treatment against holdout").format(days=result["window_days"]))
    for column in (N_("action"), N_("treatment"), N_("holdout"), N_("diff (pts)"), N_("95% interval"), "p",
                   N_("verdict")):
        table.add_column(_(column), justify="left" if column in ("action", "verdict") else "right")
    for name, block in [*result["actions"].items(), ("overall", result["overall"])]:
        interval = block["rate_diff_ci95"]
        table.add_row(
            _("overall") if name == "overall" else lang.name_or_label("action", name),
            f"{lang.count(block['treatment']['customers'])} {pct(block['treatment']['rate'])}",
            f"{lang.count(block['holdout']['customers'])} {pct(block['holdout']['rate'])}", pct(block["rate_diff"], True),
            "-" if interval is None else _("{low} to {high}").format(low=pct(interval[0], True), high=pct(interval[1], True)),
            "-" if block["p_value"] is None else f"{block['p_value']:.2g}",
            _(VERDICTS.get(block["verdict"], block["verdict"].replace("_", " "))),
        )
    out.print(table)
    for name, block in [*result["actions"].items(), ("overall", result["overall"])]:
        shown = _("overall") if name == "overall" else lang.name_or_label("action", name)
        out.print(_("{action}: {summary}").format(action=shown, summary=verdict_summary(block, lang)))


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
    lang: Optional[str] = LangOption,
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
    from features.common.outputs import check_output_path
    from features.orders import parse_date
    from training.jobs import replenish_job
    from training.registry import configure_tracking

    language = _language(lang)
    day = parse_date(as_of, "--as-of")
    check_output_path(out_path)
    log = _load(orders, column_map, exclude_products, language)
    _check_as_of(log, day, "--as-of", horizon_days, count_orders=False, lang=language)
    configure_tracking()
    with err.status(language.gettext("learning replenishment cycles up to {as_of} and predicting ...").format(
            as_of=day.date())):
        result = replenish_job(log, day, horizon_days, lead_days=lead_days, out_path=out_path, log_to_mlflow=True)
    if result.n_future_lines_ignored:
        err.print(language.gettext("warning: ignored {n} order lines after --as-of {date}").format(
            n=language.count(result.n_future_lines_ignored), date=day.date()))
    _print_replenishment(result.frame, language)
    out.print(language.gettext("wrote {path} ({n} customer-category pairs)").format(
        path=out_path, n=language.count(len(result.frame))))


def _print_replenishment(frame, lang) -> None:
    from rich.table import Table

    from training.segments import REMINDER

    _ = lang.gettext
    due = frame["next_purchase_days_p50"] <= REMINDER.within_days
    likely = frame["p_within_horizon"] >= REMINDER.min_p_within_horizon
    table = Table(title=_("replenishment as of {as_of}").format(
        as_of=lang.date(frame["as_of"].iloc[0].date()) if len(frame) else "-"))
    for column in (N_("category"), N_("pairs"), N_("own rhythm"), N_("likely within horizon")):
        table.add_column(_(column), justify="left" if column == "category" else "right")
    table.add_column(_("due in {days} days & likely").format(days=REMINDER.within_days), justify="right")
    grouped = frame.assign(own=frame["basis"] == "own", likely=likely, due=due & likely).groupby("category")
    summary = grouped.agg(pairs=("customer_id", "size"), own=("own", "mean"), likely=("likely", "sum"), due=("due", "sum"))
    for category, row in summary.sort_values("pairs", ascending=False).head(15).iterrows():
        table.add_row(str(category), lang.count(row.pairs), lang.percent(row.own, 0), lang.count(row.likely),
                      lang.count(row.due))
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
    tiers: Optional[Path] = TiersOption,
) -> None:
    """Serve online scoring over HTTP with BentoML.

    POST /score and POST /target take {"customer_ids": [...]} (looked up in the snapshot)
    or {"customers": [{"customer_id": ..., "orders": [{"order_ts": ..., "amount": ...}]}]}
    (scored from the history by the same feature code as batch). GET /healthz, /readyz;
    API docs (Swagger UI) at /, the OpenAPI document at /docs.json. With REPURCHASE_API_KEY
    set, requests need "Authorization: Bearer <key>". Ctrl-C stops it.

    Member tiers in the answers follow --tiers FILE (else the shipped silver / gold /
    diamond), read at start: give the file `repurchase score --tiers` was given and the
    tier columns by id and by history equal the batch ones. The model stores no tiers.
    """
    from serving.launch import serve_command

    if snapshot is None and DEFAULT_SNAPSHOT.exists():
        snapshot = DEFAULT_SNAPSHOT
    serve_command(model, port, snapshot, host=host, tiers=tiers)


@app.command()
@handles_errors
def quickstart(
    out_dir: Path = typer.Option(Path("out/quickstart"), "--out", help="Folder for the results."),
    orders: str = typer.Option(
        "cdnow", "--orders", help="Order log to run on (default: the built-in CDNOW log); any source `--orders` takes."
    ),
    column_map: Optional[str] = MapOption,
    exclude_products: Optional[str] = ExcludeProductsOption,
    tiers: Optional[Path] = TiersOption,
    economics_file: Optional[Path] = EconomicsOption,
    previous: Optional[Path] = typer.Option(
        None, "--previous", help="Scores Parquet of an earlier run: movement since then in the rules, "
        "transitions.json and the report."
    ),
    lang: Optional[str] = LangOption,
) -> None:
    """Run the whole job on the built-in CDNOW log (or --orders) and write the results to --out.

    Backtest (the model against BG/NBD and recency-only), train and register the champion,
    score every customer, apply the default rules, write report.html. When the log has
    categories (e.g. `repurchase synth`), also the product-level replenishment backtest,
    replenishment.parquet and category reminders. Member tiers (--tiers) are scored and
    backtested; economics.json (repurchase by month and cohort, LTV, LTV:CAC and payback
    with --economics) and its cohort heatmap join the report.
    """
    from serving.quickstart import run_quickstart
    from training.registry import tracking_uri

    language = _language(lang)
    run_quickstart(out_dir, console=out, tracking_uri=tracking_uri(), source=orders, column_map=column_map,
                   exclude_products=exclude_products, tiers_path=tiers, economics_path=economics_file,
                   previous_path=previous, lang=language.code)


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

    from serving.launch import passive_openmp_waits

    passive_openmp_waits()  # before anything loads LightGBM's OpenMP runtime
    _quiet_libraries()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    app(prog_name="repurchase")


if __name__ == "__main__":
    main()
