"""Console tables shared by the commands (`repurchase backtest`, `train`, `quickstart`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

METRICS = ("auc", "pr_auc", "brier", "log_loss", "ece", "lift_top10")
"""The backtest's headline metrics, in the order the table shows them."""


def number(value, digits: int = 4) -> str:
    """A metric for a table cell; a dash for a missing one (None or NaN)."""
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def print_backtest(console: Console, report: dict, champion: dict | None = None) -> None:
    """The backtest's headline numbers: the model beside its baselines (and the champion's model, when given).

    One table (metrics, expected against actual orders in the horizon, revenue Gini), then a
    line for an empty model column and one for a BG/NBD fit at a boundary.
    """
    from training.btyd import INTERIOR, fit_status_meaning

    if report.get("backtest_note"):
        console.print(report["backtest_note"])
        return
    columns = [("model", report.get("model")), ("BG/NBD", report.get("bgnbd")), ("recency only", report.get("recency_only"))]
    if champion is not None:
        columns.insert(1, ("champion", champion.get("model")))
    table = Table(title=f"backtest at {report['cutoff']}, horizon {report['horizon_days']} days, "
                        f"{report['n_customers']:,} customers, base rate {report['base_rate']:.3f}")
    table.add_column("p_repurchase")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for metric in METRICS:
        table.add_row(metric, *[number((block or {}).get(metric)) for _, block in columns])
    holdout = report.get("holdout_orders") or {}
    if holdout:
        expected = {"model": holdout.get("model"), "BG/NBD": holdout.get("bgnbd")}
        cells = ["–" if expected.get(name) is None else f"{expected[name]:,.0f}" for name, _ in columns]
        cells[-1] = f"actual {holdout['actual']:,}"
        table.add_row("orders in horizon", *cells)
    table.add_row("revenue gini", *[number(((block or {}).get("revenue") or {}).get("gini")) if name != "recency only" else ""
                                    for name, block in columns])
    console.print(table)
    if report.get("model_note"):
        console.print(f"model column empty: {report['model_note']}")
    status = (report.get("bgnbd") or {}).get("fit_status", INTERIOR)
    if status != INTERIOR:
        console.print(f"BG/NBD at {report['cutoff']}: {fit_status_meaning(status)}")
