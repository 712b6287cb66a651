"""The whole job on the built-in CDNOW log (or any log), as `repurchase quickstart` runs it.

1. load and validate the order log;
2. backtest at 1997-09-30 over 90 days (the split of Fader, Hardie & Lee 2005; for another
   log, 90 days before its last order): the model against BG/NBD and recency-only, JSON
   and plots; with categories in the log, the replenishment model against its baselines;
3. train on everything up to the last order and register it (champion when there is none);
4. score all customers with the champion as of the last order day;
5. with categories, predict each customer's next purchase of each category
   (replenishment.parquet); apply the default targeting rules: one CSV per action under
   audiences/ (category reminders among them), every row in the action's treatment or
   random holdout group, and send/ beside it with the treatment rows only;
6. write report.html and print a short summary.

A young log changes the steps, never stops them: a backtest cutoff without repeat buyers
before it gives a backtest.json that says so, a model that cannot be trained for lack of
history is BTYD-only, and the report and the console say both.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from features.io import claim_folder
from features.orders import load_order_log

QUICKSTART_SOURCE = "cdnow"
BACKTEST_CUTOFF = pd.Timestamp("1997-09-30")
HORIZON_DAYS = 90


def run_quickstart(
    out_dir: Path,
    *,
    console: Console,
    tracking_uri: str,
    source: str = QUICKSTART_SOURCE,
    column_map: str | None = None,
    exclude_products: str | None = None,
) -> dict:
    """Run every stage on ``source`` (CDNOW by default), writing scores.parquet, backtest.json, report.html,
    audiences/ (and replenishment.parquet when the log has categories) to ``out_dir``.

    ``column_map`` and ``exclude_products`` are passed to :func:`features.orders.load_order_log`."""
    from serving.batch import add_reason_codes, score_log
    from serving.report import model_notes, render_report
    from serving.targeting import Campaign, apply_rules, load_rules, write_audiences
    from training.backtest import Backtest, write_report
    from training.btyd import BTYDDataError
    from training.jobs import backtest_job, has_categories, no_backtest_report, replenish_job, train_job
    from training.registry import configure_tracking, load_scorer
    from training.segments import REMINDER

    began = time.perf_counter()
    out_dir = claim_folder(out_dir)
    configure_tracking(tracking_uri)
    steps = []

    def step(message: str):
        steps.append((message, time.perf_counter()))
        return console.status(message)

    with step(f"loading and validating the order log {escape(str(source))} ..."):
        log = load_order_log(source, column_map, exclude_products=exclude_products)
    summary = log.summary()
    console.print(Text.assemble(("order log", "bold"), log.describe().removeprefix("order log")), soft_wrap=True)
    cutoff = BACKTEST_CUTOFF if source == QUICKSTART_SOURCE else log.last_order_date - pd.Timedelta(days=HORIZON_DAYS)
    categories = has_categories(log)
    with step(f"backtest at {cutoff.date()} over {HORIZON_DAYS} days"
              f"{' (customers, and categories for replenishment)' if categories else ''} ..."):
        try:
            backtest = backtest_job(log, cutoff, HORIZON_DAYS, out_dir / "backtest.json")
        except BTYDDataError as exc:
            backtest = Backtest(report=no_backtest_report(log, cutoff, HORIZON_DAYS, str(exc)), frame=pd.DataFrame())
            write_report(backtest.report, out_dir / "backtest.json")
    _print_backtest(console, backtest.report)
    if "replenishment" in backtest.report:
        _print_replenishment_backtest(console, backtest.report["replenishment"])

    as_of = log.last_order_date
    with step(f"training on all orders up to {as_of.date()} and registering ..."):
        trained = train_job(log, as_of, HORIZON_DAYS, register=True)
    console.print(f"registered [bold]repurchase[/] version {trained.logged.version} as {trained.logged.alias}", markup=True)
    for note in model_notes(trained.model):
        console.print(note)

    with step("scoring every customer with the champion ..."):
        champion, version = load_scorer()
        run = score_log(champion, log, as_of, out_dir / "scores.parquet", model_version=version)
    scores = pd.read_parquet(run.scores_path)
    features = pd.read_parquet(run.snapshot_path)

    replenishment = None
    if categories:
        from training.replenish import ReplenishmentDataError

        try:
            with step("predicting when each customer is due to rebuy each category ..."):
                replenishment = replenish_job(log, as_of, HORIZON_DAYS, out_path=out_dir / "replenishment.parquet",
                                              log_to_mlflow=True).frame
        except ReplenishmentDataError as exc:
            console.print(f"product-level replenishment skipped: {exc}")
        else:
            console.print(f"replenishment.parquet: {len(replenishment):,} customer-category pairs, "
                          f"{int((replenishment['next_purchase_days_p50'] <= REMINDER.within_days).sum()):,} "
                          f"due within {REMINDER.within_days} days")
    else:
        console.print("no categories in this log: product-level replenishment skipped")

    with step("applying the default targeting rules ..."):
        targeted = apply_rules(scores, load_rules(None), features=features, replenishment=replenishment,
                               clv_reference=champion.spec_.clv_reference, campaign=Campaign())
        targeted = add_reason_codes(targeted, champion, features, rows=targeted["action"].notna().to_numpy())
        audiences = write_audiences(targeted, out_dir / "audiences", send_dir=out_dir / "send")
    with step("writing the report ..."):
        render_report(backtest.report, backtest.plots, scores, targeted, out_dir / "report.html",
                      title=f"Repurchase report: {log.source} as of {as_of.date()}", model_notes=model_notes(champion))

    _print_audiences(console, audiences, targeted)
    elapsed = time.perf_counter() - began
    console.print(
        f"\n[bold]done in {elapsed:.0f} s.[/] In {escape(str(out_dir))}/: scores.parquet ({len(scores):,} customers), "
        f"backtest.json (+ plots), report.html, audiences/, send/{', replenishment.parquet' if replenishment is not None else ''}. MLflow: "
        f"{escape(tracking_uri)} (browse with `uv run mlflow ui --backend-store-uri {escape(tracking_uri)}`).",
        markup=True,
    )
    return {"summary": summary, "backtest": backtest.report, "audiences": audiences, "seconds": elapsed}


def _fmt(value) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def _print_backtest(console: Console, report: dict) -> None:
    if report.get("backtest_note"):
        console.print(report["backtest_note"])
        return
    table = Table(title=f"backtest: {report['n_customers']:,} customers at {report['cutoff']}, "
                        f"{report['horizon_days']}-day horizon, base rate {report['base_rate']:.3f}")
    for column in ("p_repurchase", "model", "BG/NBD", "recency only"):
        table.add_column(column, justify="right" if column != "p_repurchase" else "left")
    model, bgnbd, recency = report["model"], report["bgnbd"], report["recency_only"]
    for metric in ("auc", "pr_auc", "brier", "log_loss", "ece", "lift_top10"):
        table.add_row(metric, _fmt(model.get(metric)), _fmt(bgnbd.get(metric)), _fmt(recency.get(metric)))
    holdout = report["holdout_orders"]
    orders = lambda value: "–" if value is None else f"{value:,.0f}"  # noqa: E731
    table.add_row("orders in horizon", orders(holdout["model"]), orders(holdout["bgnbd"]), f"actual {holdout['actual']:,}")
    table.add_row("revenue gini", _fmt((model.get("revenue") or {}).get("gini")), _fmt(bgnbd["revenue"]["gini"]), "")
    console.print(table)
    if report.get("model_note"):
        console.print(f"model column empty: {report['model_note']}")


def _print_replenishment_backtest(console: Console, block: dict) -> None:
    table = Table(title=f"replenishment backtest: {block['n_pairs']:,} customer-category pairs, "
                        f"{block['base_rate'] or 0:.1%} bought again within the horizon")
    for column in ("next purchase", "model", "own last gap", "category median"):
        table.add_column(column, justify="left" if column == "next purchase" else "right")
    blocks = [block["model"], block["own_last_gap"], block["category_median"]]
    for metric, label in (("p50_mae_days", "p50 MAE (days)"), ("coverage_p10_p90", "p10-p90 coverage"), ("auc", "AUC")):
        table.add_row(label, *[_fmt(b.get(metric)) for b in blocks])
    console.print(table)


def _print_audiences(console: Console, audiences: pd.DataFrame, targeted: pd.DataFrame) -> None:
    table = Table(title="audiences (default rules; send/ has the treatment group)")
    for column in ("action", "customers", "treatment", "holdout", "share", "expected revenue", "CLV at stake",
                   "mean p_repurchase"):
        table.add_column(column, justify="left" if column == "action" else "right")
    groups = targeted.groupby(["action", "group"]).size()
    for row in audiences.itertuples(index=False):
        table.add_row(row.action, f"{row.customers:,}", f"{int(groups.get((row.action, 'treatment'), 0)):,}",
                      f"{int(groups.get((row.action, 'holdout'), 0)):,}", f"{row.share_of_scored:.1%}",
                      f"{row.expected_revenue_sum:,.0f}", f"{row.clv_sum:,.0f}", f"{row.p_repurchase_mean:.3f}")
    console.print(table)
