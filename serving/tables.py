"""Console tables shared by the commands (`repurchase backtest`, `train`, `quickstart`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from training.i18n import N_, Language, language

METRICS = ("auc", "pr_auc", "brier", "log_loss", "ece", "lift_top10")
"""The backtest's headline metrics, in the order the table shows them."""


def number(value, digits: int = 4) -> str:
    """A metric for a table cell; a dash for a missing one (None or NaN)."""
    return "–" if value is None or value != value else f"{value:.{digits}f}"


# the scorers' names as the table's columns show them, and the holdout block's keys
COLUMN_NAMES = {"model": N_("model"), "bgnbd": N_("BG/NBD"), "recency_only": N_("recency only"), "champion": N_("champion")}


def print_backtest(console: Console, report: dict, champion: dict | None = None, lang: Language | None = None) -> None:
    """The backtest's headline numbers: the model beside its baselines (and the champion's model, when given).

    One table (metrics, expected against actual orders in the horizon, revenue Gini), then a
    line for an empty model column and one for a BG/NBD fit at a boundary. Words in ``lang``
    (``training.i18n``; English by default); metric names are machine names and stay.
    """
    from training.backtest import backtest_note, fit_meaning, model_note
    from training.btyd import INTERIOR

    lang = lang or language("en")
    _ = lang.gettext
    if report.get("backtest_note"):
        console.print(backtest_note(report, lang))
        return
    columns = [("model", report.get("model")), ("bgnbd", report.get("bgnbd")), ("recency_only", report.get("recency_only"))]
    if champion is not None:
        columns.insert(1, ("champion", champion.get("model")))
    table = Table(title=_("backtest at {cutoff}, horizon {days} days, {customers} customers, base rate {base_rate}").format(
        cutoff=report["cutoff"], days=report["horizon_days"], customers=lang.count(report["n_customers"]),
        base_rate=lang.decimal(report["base_rate"])))
    table.add_column("p_repurchase")
    for key, _block in columns:
        table.add_column(_(COLUMN_NAMES[key]), justify="right")
    for metric in METRICS:
        table.add_row(metric, *[number((block or {}).get(metric)) for _key, block in columns])
    holdout = report.get("holdout_orders") or {}
    if holdout:
        expected = {"model": holdout.get("model"), "bgnbd": holdout.get("bgnbd")}
        cells = [lang.count(expected.get(key)) for key, _block in columns]
        cells[-1] = _("actual {orders}").format(orders=lang.count(holdout["actual"]))
        table.add_row(_("orders in horizon"), *cells)
    table.add_row(_("revenue gini"), *[number(((block or {}).get("revenue") or {}).get("gini")) if key != "recency_only"
                                       else "" for key, block in columns])
    console.print(table)
    if report.get("model_note"):
        console.print(_("model column empty: {note}").format(note=model_note(report, lang)))
    status = (report.get("bgnbd") or {}).get("fit_status", INTERIOR)
    if status != INTERIOR:
        console.print(_("BG/NBD at {cutoff}: {meaning}").format(cutoff=report["cutoff"],
                                                              meaning=fit_meaning(report["bgnbd"], lang)))
