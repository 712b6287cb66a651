"""The whole job on the built-in CDNOW log (or any log), as `repurchase quickstart` runs it.

1. load and validate the order log;
2. backtest at 1997-09-30 over 90 days (the split of Fader, Hardie & Lee 2005; for another
   log, 90 days before its last order): the model against BG/NBD and recency-only, JSON
   and plots; with categories in the log, the replenishment model against its baselines;
3. train on everything up to the last order and register it (champion when there is none);
4. score all customers with the champion as of the last order day, member tiers included
   (``--tiers``);
5. with categories, predict each customer's next purchase of each category
   (replenishment.parquet); apply the default targeting rules: one CSV per action under
   audiences/ (category reminders among them), every row in the action's treatment or
   random holdout group, and send/ beside it with the treatment rows only;
6. measure repurchase economics (economics.json and its cohort heatmap; LTV:CAC with
   ``--economics`` and a log with channels) and, with ``--previous``, movement since an
   earlier run (transitions.json);
7. write report.html (member tiers, economics and movement among its sections) and print
   a short summary.

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

from features.common.outputs import claim_folder
from features.orders import load_order_log
from serving.migration import write_transitions
from serving.tables import number, print_backtest
from training.i18n import N_, Language

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
    tiers_path: Path | None = None,
    economics_path: Path | None = None,
    previous_path: Path | None = None,
    lang: str | None = None,
) -> dict:
    """Run every stage on ``source`` (CDNOW by default), writing scores.parquet, backtest.json, report.html,
    audiences/ (and replenishment.parquet when the log has categories) to ``out_dir``.

    ``column_map`` and ``exclude_products`` are passed to :func:`features.orders.load_order_log`.
    ``tiers_path`` (``--tiers``) replaces the shipped member tiers; ``economics_path``
    (``--economics``) gives CAC per channel for LTV:CAC and payback in economics.json;
    ``previous_path`` (``--previous``, an earlier run's scores) gives the rules
    ``previous_lifecycle_stage`` and ``previous_rfm_segment``, transitions.json and the
    report's movement section. ``lang`` (``en``, ``zh``; default ``$REPURCHASE_LANG``, else English) is the language of the report, its plots,
    the tables printed and the audiences' reasons; files keep English column names and values."""
    from serving.batch import add_reason_codes, score_log
    from serving.migration import add_previous, check_order, read_previous, transitions
    from serving.report import model_notes, render_report
    from serving.report_economics import economics_data, movement_data, tiers_data
    from serving.targeting import Campaign, apply_rules, load_rules, write_audiences
    from training.backtest import Backtest, write_report
    from training.btyd import BTYDDataError
    from training.economics import economics_report, load_economics, write_economics
    from training.jobs import backtest_job, has_categories, no_backtest_report, replenish_job, train_job
    from training.i18n import language
    from training.registry import configure_tracking, load_scorer
    from training.segments import REMINDER
    from training.tiers import load_tiers

    language_ = language(lang)
    _ = language_.gettext
    began = time.perf_counter()
    tiers = load_tiers(tiers_path)
    economics_config = load_economics(economics_path)
    before = read_previous(previous_path) if previous_path is not None else None
    out_dir = claim_folder(out_dir)
    configure_tracking(tracking_uri)
    steps = []

    def step(message: str):
        steps.append((message, time.perf_counter()))
        return console.status(message)

    with step(_("loading and validating the order log {source} ...").format(source=escape(str(source)))):
        log = load_order_log(source, column_map, exclude_products=exclude_products)
    summary = log.summary()
    head = _("order log")
    console.print(Text.assemble((head, "bold"), log.describe(language_).removeprefix(head)), soft_wrap=True)
    cutoff = BACKTEST_CUTOFF if source == QUICKSTART_SOURCE else log.last_order_date - pd.Timedelta(days=HORIZON_DAYS)
    categories = has_categories(log)
    with step((_("backtest at {cutoff} over {days} days (customers, and categories for replenishment) ...") if categories
               else _("backtest at {cutoff} over {days} days ...")).format(cutoff=cutoff.date(), days=HORIZON_DAYS)):
        try:
            backtest = backtest_job(log, cutoff, HORIZON_DAYS, out_dir / "backtest.json", tiers=tiers,
                                    lang=language_.code)
        except BTYDDataError as exc:
            backtest = Backtest(report=no_backtest_report(log, cutoff, HORIZON_DAYS, str(exc), exc.why),
                                frame=pd.DataFrame())
            write_report(backtest.report, out_dir / "backtest.json")
    print_backtest(console, backtest.report, lang=language_)
    if "replenishment" in backtest.report:
        _print_replenishment_backtest(console, backtest.report["replenishment"], language_)

    as_of = log.last_order_date
    with step(_("training on all orders up to {as_of} and registering ...").format(as_of=as_of.date())):
        trained = train_job(log, as_of, HORIZON_DAYS, register=True)
    console.print(_("registered [bold]repurchase[/] version {version} as {alias}").format(
        version=trained.logged.version, alias=trained.logged.alias), markup=True)
    for note in model_notes(trained.model, language_.code):
        console.print(note)

    with step(_("scoring every customer with the champion ...")):
        champion, version = load_scorer()
        run = score_log(champion, log, as_of, out_dir / "scores.parquet", model_version=version, tiers=tiers)
    scores = pd.read_parquet(run.scores_path)
    features = pd.read_parquet(run.snapshot_path)
    moves = None
    if before is not None:
        check_order(before, scores, previous_path)
        features = add_previous(features, before)
        moves = transitions(add_previous(scores, before), before)
        write_transitions(moves, out_dir / "transitions.json")

    replenishment = None
    if categories:
        from training.replenish import ReplenishmentDataError, replenishment_data_reason

        try:
            with step(_("predicting when each customer is due to rebuy each category ...")):
                replenishment = replenish_job(log, as_of, HORIZON_DAYS, out_path=out_dir / "replenishment.parquet",
                                              log_to_mlflow=True).frame
        except ReplenishmentDataError as exc:
            reason = replenishment_data_reason(exc.why, language_) if exc.why else str(exc)
            console.print(_("product-level replenishment skipped: {reason}").format(reason=reason))
        else:
            due = int((replenishment["next_purchase_days_p50"] <= REMINDER.within_days).sum())
            console.print(_("replenishment.parquet: {pairs} customer-category pairs, {due} due within {days} days").format(
                pairs=language_.count(len(replenishment)), due=language_.count(due), days=REMINDER.within_days))
    else:
        console.print(_("no categories in this log: product-level replenishment skipped"))

    with step(_("applying the default targeting rules ...")):
        targeted = apply_rules(scores, load_rules(None), features=features, replenishment=replenishment,
                               clv_reference=champion.spec_.clv_reference, campaign=Campaign(), lang=language_.code)
        targeted = add_reason_codes(targeted, champion, features, rows=targeted["action"].notna().to_numpy())
        audiences = write_audiences(targeted, out_dir / "audiences", send_dir=out_dir / "send")
    with step(_("measuring repurchase economics ...")):
        economics = economics_report(log.orders, as_of, scores, economics_config, source=log.source)
        written = write_economics(economics, out_dir / "economics.json", lang=language_.code)
    with step(_("writing the report ...")):
        extra = {"tiers": tiers_data(scores, backtest.report, language_.code),
                 "economics": economics_data(economics, written["cohorts"], language_.code)}
        if moves is not None:
            extra["movement"] = movement_data(moves, language_.code)
        title = language_.gettext("Repurchase report: {source} as of {as_of}").format(
            source=log.source, as_of=language_.date(as_of.date()))
        render_report(backtest.report, backtest.plots, scores, targeted, out_dir / "report.html", title=title,
                      model_notes=model_notes(champion, language_.code), lang=language_.code, extra_sections=extra)

    _print_audiences(console, audiences, targeted, language_)
    _print_tiers_and_economics(console, scores, tiers.names, backtest.report.get("tiers"), economics, language_)
    elapsed = time.perf_counter() - began
    console.print("\n" + _(
        "[bold]done in {seconds} s.[/] In {folder}/: scores.parquet ({customers} customers), backtest.json (+ plots), "
        "economics.json (+ cohort heatmap), report.html, audiences/, send/{replenishment}. MLflow: {uri} (browse with "
        "`uv run mlflow ui --backend-store-uri {uri}`)."
    ).format(seconds=f"{elapsed:.0f}", folder=escape(str(out_dir)), customers=language_.count(len(scores)),
             replenishment=_(", ") + "replenishment.parquet" if replenishment is not None else "", uri=escape(tracking_uri)),
        markup=True,
    )
    return {"summary": summary, "backtest": backtest.report, "audiences": audiences, "seconds": elapsed}


def _print_replenishment_backtest(console: Console, block: dict, lang: Language) -> None:
    _ = lang.gettext
    table = Table(title=_("replenishment backtest: {pairs} customer-category pairs, {share} bought again within the "
                          "horizon").format(pairs=lang.count(block["n_pairs"]), share=lang.percent(block["base_rate"] or 0)))
    for column in (_("next purchase"), _("model"), _("own last gap"), _("category median")):
        table.add_column(column, justify="left" if column == _("next purchase") else "right")
    blocks = [block["model"], block["own_last_gap"], block["category_median"]]
    for metric, label in (("p50_mae_days", N_("p50 MAE (days)")), ("coverage_p10_p90", N_("p10-p90 coverage")),
                          ("auc", N_("AUC"))):
        table.add_row(_(label), *[number(b.get(metric), 3) for b in blocks])
    console.print(table)


def _print_audiences(console: Console, audiences: pd.DataFrame, targeted: pd.DataFrame, lang: Language) -> None:
    _ = lang.gettext
    table = Table(title=_("audiences (default rules; send/ has the treatment group)"))
    for column in (_("action"), _("customers"), _("treatment"), _("holdout"), _("share"), _("expected revenue"),
                   _("CLV at stake"), _("mean p_repurchase")):
        table.add_column(column, justify="left" if column == _("action") else "right")
    groups = targeted.groupby(["action", "group"]).size()
    for row in audiences.itertuples(index=False):
        table.add_row(lang.name_or_label("action", row.action), lang.count(row.customers),
                      lang.count(int(groups.get((row.action, "treatment"), 0))),
                      lang.count(int(groups.get((row.action, "holdout"), 0))), lang.percent(row.share_of_scored),
                      lang.count(row.expected_revenue_sum), lang.count(row.clv_sum), lang.decimal(row.p_repurchase_mean))
    console.print(table)


def _print_tiers_and_economics(console: Console, scores: pd.DataFrame, names, block: dict | None, economics: dict,
                               lang: Language) -> None:
    _ = lang.gettext
    counts = scores["member_tier"].value_counts()
    predicted = scores["predicted_tier"].value_counts()
    console.print(_("member tiers now (a year on, predicted): {tiers}").format(tiers=_(", ").join(
        f"{lang.name_or_label('member_tier', name)} {lang.count(int(counts.get(name, 0)))} "
        f"({lang.count(int(predicted.get(name, 0)))})" for name in names)))
    if block:
        console.print(_("tiers backtest: macro-F1 {f1} against {kept_f1} for 'the tier stays' (accuracy {accuracy} "
                        "against {kept_accuracy})").format(
            f1=lang.decimal(block["macro_f1"]), kept_f1=lang.decimal(block["persistence_macro_f1"]),
            accuracy=lang.decimal(block["accuracy"]), kept_accuracy=lang.decimal(block["persistence_accuracy"])))
    value = economics["value_of_repurchase"]
    if value["repurchase_rate"] is not None:
        five = next((row for row in value["points"] if row["points"] == 5), None)
        line = _("repurchase: {rate} of the last year's {buyers} buyers ordered twice or more").format(
            rate=lang.percent(value["repurchase_rate"]), buyers=lang.count(value["buyers"]))
        if five and five["extra_revenue"]:
            line += _("; 5 more points would bring {revenue} a year").format(revenue=lang.count(five["extra_revenue"]))
        console.print(line)
    if economics.get("ltv_cac_note"):
        console.print(escape(_(economics["ltv_cac_note"])))
