"""Training jobs shared by the CLI, quickstart and the retraining notebook.

``backtest_job``: one honest temporal backtest, written as JSON with its plots beside it.
``train_job``: backtest at ``cutoff - H`` (a split whose truth is known by the cutoff), then
the final fit on everything up to ``cutoff``, logged to MLflow and optionally registered,
compared with the champion on the same split. With past randomised contacts
(:func:`prepare_uplift`, ``train --uplift``) it also evaluates an uplift model on the latest
campaigns and gives the final model its uplift part (:func:`uplift_job`). Any cutoff on or after the first order
trains: a log too short for the split is trained without a backtest (the report says
why), and one too short for the LightGBM model gives a BTYD-only model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.common.outputs import atomic_path
from features.orders import OrderLog, check_cutoff, parse_date
from features.timecut import as_day, on_or_before, until
from training.backtest import MODEL_METRICS, Backtest, no_backtest_reason, run_backtest, write_report
from training.btyd import BTYDDataError, BTYDFitError
from training.model import RepurchaseModel
from training.registry import LoggedModel, champion_version, load_scorer, log_run, model_kind, tracked_run
from training.segments import REMINDER
from training.uplift import (
    EVAL_SHARE,
    UpliftDataError,
    UpliftModel,
    campaign_split,
    contact_uplift,
    describe,
    evaluate_uplift,
    uplift_frame,
    usable_contacts,
)


@dataclass
class TrainResult:
    model: RepurchaseModel
    backtest: Backtest
    logged: LoggedModel
    champion_backtest: Backtest | None = None
    uplift: dict | None = None
    """The uplift evaluation (:func:`uplift_job`) when trained with contacts."""


@dataclass
class UpliftData:
    """Past contacts ready to learn from: the frame (:func:`training.uplift.uplift_frame`), its
    split by time, and what was left out."""

    frame: pd.DataFrame
    learn: np.ndarray
    held_out: np.ndarray
    window_days: int
    learn_until: pd.Timestamp
    n_given: int
    n_window_not_over: int
    n_without_history: int


def prepare_uplift(log: OrderLog, contacts: pd.DataFrame, cutoff: pd.Timestamp, window_days: int = 30,
                   eval_share: float = EVAL_SHARE) -> UpliftData:
    """Contacts whose windows ended by the cutoff (and the log's end), with their features and
    outcomes, split by time; :class:`training.uplift.UpliftDataError` (one line) when they cannot
    train and evaluate an uplift model. Cheap next to training, so the CLI runs it first."""
    origin = contacts.attrs.get("origin", "contacts")
    learn_until = min(parse_date(cutoff, "cutoff"), log.last_order_date.normalize())
    usable = usable_contacts(contacts, learn_until, window_days)
    if usable.empty:
        raise UpliftDataError(
            f"{origin}: no contact's {window_days}-day window ends by {learn_until.date()} (the cutoff, or the last "
            f"order if earlier); the latest contact is {contacts['contacted_at'].max().date()}: give contacts "
            "whose outcome is known, a later --cutoff, or a shorter --window-days"
        )
    day = as_day(cutoff)
    past = until(log.orders, cutoff)
    frame = uplift_frame(past, usable, window_days, channel_values=RepurchaseModel._mix(past, day, "channel"),
                         category_values=RepurchaseModel._mix(past, day, "category"))
    if frame.empty:
        raise UpliftDataError(
            f"{origin}: none of the {len(usable):,} contacted customers has an order in {log.source} on or before "
            "the contact's date; give the order log of the same shop"
        )
    try:
        learn, held_out = campaign_split(frame, window_days, eval_share)
    except UpliftDataError as exc:
        raise UpliftDataError(f"{origin}: {exc}") from None
    return UpliftData(frame=frame, learn=learn, held_out=held_out, window_days=window_days, learn_until=learn_until,
                      n_given=len(contacts), n_window_not_over=len(contacts) - len(usable),
                      n_without_history=int(frame.attrs.get("without_history", 0)))


def uplift_job(data: UpliftData, model: RepurchaseModel, orders: pd.DataFrame, *, model_params: dict | None = None) -> dict:
    """Evaluate an uplift model on the latest campaigns (:func:`evaluate_uplift_job`), then fit
    ``model``'s uplift part on every usable contact. Returns the report (JSON-ready), with
    ``final``: what the model's uplift part learned from."""
    report, _ = evaluate_uplift_job(data, orders, model.horizon_days, model_params=model_params)
    model.fit_uplift(data.frame, window_days=data.window_days)
    report["final"] = {**describe(data.frame), "actions": list(model.uplift_.actions_)}
    return report


def evaluate_uplift_job(data: UpliftData, orders: pd.DataFrame, horizon_days: int, *,
                        model_params: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """An uplift model learned from the earlier campaigns, judged on the latest against ranking
    by ``p_repurchase`` and at random (:func:`training.uplift.evaluate_uplift`).

    ``p_repurchase`` comes from a repurchase model (``horizon_days``, ``model_params``) trained
    at the first held-out campaign date on ``orders``: what a campaign that day would have
    ranked by; not the final model, which has seen the held-out windows. Held-out contacts of
    an action the earlier campaigns did not have are left out (counted).

    Returns the report (JSON-ready) and the held-out contacts (``customer_id``, ``action``,
    ``contacted_at``, ``group``, ``treated``, ``bought``, ``orders``) with both rankings'
    scores, ``uplift`` and ``p_repurchase`` (NaN when there is no such model).
    """
    frame = data.frame
    learner = UpliftModel(window_days=data.window_days).fit(frame[data.learn])
    held_out = frame[data.held_out]
    unknown = ~held_out["action"].isin(learner.actions_).to_numpy()
    held_out = held_out[~unknown].reset_index(drop=True)
    first_held = held_out["contacted_at"].min()
    p_repurchase, note = _p_repurchase_at_contacts(held_out, orders, first_held, horizon_days, model_params)
    uplift = contact_uplift(learner, held_out)
    report = {
        "window_days": data.window_days,
        "learn_until": data.learn_until.date().isoformat(),
        "contacts": {"given": data.n_given, "window_not_over": data.n_window_not_over,
                     "without_history": data.n_without_history, "used": int(len(frame)),
                     "held_out_action_not_learned": int(unknown.sum())},
        "learn": describe(frame[data.learn]),
        "held_out": describe(held_out),
        "p_repurchase_model_cutoff": first_held.date().isoformat(),
        **evaluate_uplift(held_out, uplift, p_repurchase),
    }
    if note:
        report["p_repurchase_note"] = note
    scored = held_out[["customer_id", "action", "contacted_at", "group", "treated", "bought", "orders"]].assign(
        uplift=uplift, p_repurchase=np.full(len(held_out), np.nan) if p_repurchase is None else p_repurchase)
    return report, scored


def _p_repurchase_at_contacts(contacts: pd.DataFrame, orders: pd.DataFrame, trained_at: pd.Timestamp,
                              horizon_days: int, model_params: dict | None) -> tuple[np.ndarray | None, str]:
    """Each contact's ``p_repurchase`` as of its date, from a model trained at ``trained_at``;
    (None, why) when no model can be trained there."""
    try:
        baseline = RepurchaseModel(horizon_days=horizon_days, **(model_params or {})).fit(orders, trained_at)
    except (BTYDDataError, BTYDFitError, InputError) as exc:
        return None, f"no p_repurchase model at {trained_at.date()}: {exc}"
    out = np.full(len(contacts), np.nan)
    customer = orders["customer_id"].astype(str)
    for day, rows in contacts.groupby("contacted_at", sort=True):
        mine = customer.isin(set(rows["customer_id"])).to_numpy()
        past = orders[mine & on_or_before(orders["order_ts"], day).to_numpy()]
        scores = baseline.score_features(baseline.point_in_time_features(past, day), day)
        by_customer = pd.Series(scores["p_repurchase"].to_numpy(), index=scores["customer_id"].astype(str).to_numpy())
        out[rows.index.to_numpy()] = by_customer.reindex(rows["customer_id"].to_numpy()).to_numpy()
    return out, ""


def _move_plots(backtest: Backtest, target_dir: Path, stem: str) -> dict[str, Path]:
    """Move rendered plots next to the report as ``<stem>.<plot>.png`` (each move atomic)."""
    moved = {}
    for name, path in backtest.plots.items():
        target = target_dir / f"{stem}.{name}.png"
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
        moved[name] = target
    return moved


def backtest_job(
    log: OrderLog,
    cutoff: pd.Timestamp,
    horizon_days: int,
    json_path: Path,
    *,
    model_params: dict | None = None,
    log_to_mlflow: bool = True,
    tiers=None,
    lang: str | None = None,
) -> Backtest:
    """Run a backtest at ``cutoff`` and write ``json_path`` plus ``<stem>.<plot>.png`` beside it (plots in ``lang``).

    ``tiers`` (``training.tiers.Tiers``; default the shipped ones) sets the ``tiers`` block,
    present when the log reaches a year past the cutoff.

    Nothing is written unless the whole backtest succeeds. A log with categories but too
    little history to learn replenishment gets ``replenishment_note`` instead of its block.
    """
    check_cutoff(log, cutoff, horizon_days=horizon_days)
    json_path = Path(json_path)
    with tempfile.TemporaryDirectory() as tmp:
        backtest = run_backtest(
            log.orders, cutoff, horizon_days, model_params=model_params, plot_dir=Path(tmp), source=log.source,
            tiers=tiers,
            lang=lang,
        )
        if has_categories(log):
            from training.replenish import ReplenishmentDataError, replenishment_backtest

            try:
                backtest.report["replenishment"] = replenishment_backtest(
                    until(log.purchase_lines, cutoff, horizon_days=horizon_days),
                    cutoff,
                    horizon_days,
                )
            except ReplenishmentDataError as exc:
                backtest.report["replenishment_note"] = str(exc)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        backtest.plots = _move_plots(backtest, json_path.parent, json_path.stem)
    backtest.report["plots"] = {k: v.name for k, v in backtest.plots.items()}
    write_report(backtest.report, json_path)
    if log_to_mlflow:
        import mlflow

        from training.registry import _flat_metrics

        with tracked_run(f"backtest {log.source} {cutoff.date()}"):
            mlflow.log_params({"job": "backtest", "source": log.source, "cutoff": str(cutoff.date()), "horizon_days": horizon_days})
            mlflow.log_metrics(_flat_metrics(backtest.report))
            mlflow.log_artifact(str(json_path))
            for path in backtest.plots.values():
                mlflow.log_artifact(str(path), artifact_path="plots")
    return backtest


def champion_on_split(orders: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int) -> Backtest | None:
    """The champion on a given split: as registered when it was trained before the split,
    else its recipe (hyperparameters) retrained at the split, so the comparison is fair."""
    if champion_version() is None:
        return None
    champion, _ = load_scorer()
    if champion.horizon_days != horizon_days:
        return None
    if pd.Timestamp(champion.spec_.training_cutoff) <= cutoff:
        return run_backtest(orders, cutoff, horizon_days, fitted_model=champion)
    recipe = {name: value for name, value in champion.get_params().items() if name != "horizon_days"}
    return run_backtest(orders, cutoff, horizon_days, model_params=recipe)


def train_job(
    log: OrderLog,
    cutoff: pd.Timestamp,
    horizon_days: int = 90,
    *,
    register: bool = False,
    model_params: dict | None = None,
    plot_dir: Path | None = None,
    uplift: UpliftData | None = None,
) -> TrainResult:
    """Backtest at ``cutoff - H``, fit at ``cutoff``, log to MLflow, register if asked.

    With ``uplift`` (:func:`prepare_uplift`), the model also gets its uplift part, evaluated
    on the latest campaigns first (:func:`uplift_job`; in MLflow as ``uplift.*`` metrics and
    ``uplift.json``).

    Orders after ``cutoff`` are ignored. When the split has too little history for a
    backtest (no repeat buyers before it, say), the model is trained all the same and the
    report carries ``backtest_note`` instead of metrics; when the cutoff has too little for
    LightGBM, the model is BTYD-only (``model.btyd_only_``).
    """
    check_cutoff(log, cutoff)
    split = cutoff - pd.Timedelta(days=horizon_days)
    with tempfile.TemporaryDirectory() as tmp:
        if split >= log.last_order_date:
            why = {"kind": "truth_after_last_order", "last_order": log.last_order_date.date().isoformat()}
            backtest = Backtest(report=no_backtest_report(log, split, horizon_days, why=why), frame=pd.DataFrame())
        else:
            try:
                backtest = run_backtest(
                    log.orders, split, horizon_days, model_params=model_params, plot_dir=Path(plot_dir or tmp),
                    source=log.source,
                )
            except BTYDDataError as exc:  # no repeat buyers (or no customers) before the split
                backtest = Backtest(report=no_backtest_report(log, split, horizon_days, str(exc), exc.why),
                                    frame=pd.DataFrame())
        if "backtest_note" in backtest.report or not register:
            champion_backtest = None
        else:
            champion_backtest = champion_on_split(log.orders, split, horizon_days)
        past = until(log.orders, cutoff)
        model = RepurchaseModel(horizon_days=horizon_days, **(model_params or {})).fit(past, cutoff)
        uplift_report = uplift_job(uplift, model, past, model_params=model_params) if uplift is not None else None
        example = model.features(past, cutoff).head(5)
        logged = log_run(
            model,
            backtest.report,
            params={"job": "train", "source": log.source, "cutoff": str(cutoff.date()), "backtest_cutoff": str(split.date()),
                    "model_kind": model_kind(model), **model.get_params()},
            plot_paths=backtest.plots,
            example_features=example,
            register=register,
            champion_report=champion_backtest.report if champion_backtest else None,
            run_name=f"train {log.source} {cutoff.date()}",
            uplift_report=uplift_report,
        )
    return TrainResult(model=model, backtest=backtest, logged=logged, champion_backtest=champion_backtest,
                       uplift=uplift_report)


def no_backtest_report(log: OrderLog, split: pd.Timestamp, horizon_days: int, reason: str | None = None,
                       why: dict | None = None) -> dict:
    """The backtest report's keys, with nulls, when the split has too little history to backtest.

    ``reason`` says why in English; ``why`` gives its numbers (:func:`training.backtest.backtest_note`
    says it in the reader's language): a :class:`~training.btyd.BTYDDataError`'s ``why``, or
    ``{"kind": "truth_after_last_order", "last_order": ISO date}``, which needs no ``reason``.
    """
    why = {"cutoff": split.date().isoformat(), "horizon_days": int(horizon_days), **why} if why else None
    if reason is None:
        reason = no_backtest_reason(why)
    report = {
        "source": log.source,
        "cutoff": split.date().isoformat(),
        "horizon_days": int(horizon_days),
        "n_customers": None,
        "base_rate": None,
        "model": dict.fromkeys(MODEL_METRICS),
        "bgnbd": {**dict.fromkeys(("auc", "pr_auc", "brier")), "params": dict.fromkeys(("r", "alpha", "a", "b")),
                  "time_unit": None, "log_likelihood": None},
        "recency_only": {"auc": None},
        "holdout_orders": {"actual": None, "bgnbd": None, "model": None},
        "backtest_note": f"no backtest at {split.date()} ({horizon_days} days before the cutoff): {reason}",
    }
    if why:
        report["backtest_note_why"] = why
    return report


@dataclass
class ReplenishResult:
    frame: pd.DataFrame
    model: object
    path: Path | None
    n_future_lines_ignored: int


def has_categories(log: OrderLog) -> bool:
    """Whether the log says what was bought (a category or product per line)."""
    from features.replenish import NoCategoriesError, pair_key_column

    try:
        pair_key_column(log.lines)
    except NoCategoriesError:
        return False
    return True


def replenish_job(
    log: OrderLog,
    as_of: pd.Timestamp,
    horizon_days: int = 90,
    *,
    lead_days: int = 7,
    out_path: Path | None = None,
    model_params: dict | None = None,
    log_to_mlflow: bool = False,
) -> ReplenishResult:
    """Train the replenishment model on the lines up to ``as_of`` and predict every (customer, category).

    Writes ``out_path`` (Parquet, atomically) when given. Lines after ``as_of`` are ignored and counted.
    With ``log_to_mlflow``, the run is tracked (not registered): its parameters, how the model
    trained, what it predicted, and the output file when there is one.
    """
    from features.common.outputs import write_parquet
    from features.replenish import pair_lines
    from training.replenish import ReplenishmentModel

    check_cutoff(log, as_of, flag="--as-of")
    future = ~on_or_before(log.lines["order_ts"], as_of)
    past = pair_lines(until(log.purchase_lines, as_of))
    # It learns from origins whose label windows lie within the log, which may end before as_of.
    learn_until = min(as_of, log.last_order_date)
    model = ReplenishmentModel(horizon_days=horizon_days, lead_days=lead_days, **(model_params or {})).fit(past, learn_until)
    frame = model.predict(past, as_of)
    if out_path is not None:
        write_parquet(frame, out_path)
    if log_to_mlflow:
        _log_replenish_run(log, as_of, model, frame, out_path)
    return ReplenishResult(frame=frame, model=model, path=out_path, n_future_lines_ignored=int(future.sum()))


def _log_replenish_run(log: OrderLog, as_of: pd.Timestamp, model, frame: pd.DataFrame, out_path: Path | None) -> None:
    import mlflow

    params = {k: v for k, v in vars(model).items() if not k.endswith("_")}
    likely = frame["p_within_horizon"] >= REMINDER.min_p_within_horizon
    due = frame["next_purchase_days_p50"] <= REMINDER.within_days
    with tracked_run(f"replenish {log.source} {as_of.date()}"):
        mlflow.log_params({"job": "replenish", "source": log.source, "as_of": str(as_of.date()), **params})
        mlflow.log_metrics(
            {
                "pairs": float(len(frame)),
                "customers": float(frame["customer_id"].nunique()),
                "basis_own_share": float((frame["basis"] == "own").mean()) if len(frame) else 0.0,
                "likely_within_horizon": float(likely.sum()),
                f"due_within_{REMINDER.within_days}_days_and_likely": float((due & likely).sum()),
                "training_pairs": float(model.n_training_pairs_),
                "best_iteration": float(model.booster_.best_iteration),
                "timing_shift": model.timing_shift_,
                "timing_scale": model.timing_scale_,
            }
        )
        if out_path is not None:
            mlflow.log_artifact(str(out_path))
