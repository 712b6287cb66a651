"""Training jobs shared by the CLI, quickstart and the retraining notebook.

``backtest_job``: one honest temporal backtest, written as JSON with its plots beside it.
``train_job``: backtest at ``cutoff - H`` (a split whose truth is known by the cutoff), then
the final fit on everything up to ``cutoff``, logged to MLflow and optionally registered,
compared with the champion on the same split. Any cutoff on or after the first order
trains: a log too short for the split is trained without a backtest (the report says
why), and one too short for the LightGBM model gives a BTYD-only model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.io import atomic_path
from features.orders import OrderLog, check_cutoff
from training.backtest import MODEL_METRICS, Backtest, run_backtest, write_report
from training.btyd import BTYDDataError
from training.model import RepurchaseModel
from training.registry import LoggedModel, champion_version, load_scorer, log_run, model_kind, tracked_run


@dataclass
class TrainResult:
    model: RepurchaseModel
    backtest: Backtest
    logged: LoggedModel
    champion_backtest: Backtest | None = None


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
) -> Backtest:
    """Run a backtest at ``cutoff`` and write ``json_path`` plus ``<stem>.<plot>.png`` beside it.

    Nothing is written unless the whole backtest succeeds. A log with categories but too
    little history to learn replenishment gets ``replenishment_note`` instead of its block.
    """
    check_cutoff(log, cutoff, horizon_days=horizon_days)
    json_path = Path(json_path)
    with tempfile.TemporaryDirectory() as tmp:
        backtest = run_backtest(
            log.orders, cutoff, horizon_days, model_params=model_params, plot_dir=Path(tmp), source=log.source
        )
        if has_categories(log):
            from training.replenish import ReplenishmentDataError, replenishment_backtest

            try:
                backtest.report["replenishment"] = replenishment_backtest(
                    log.purchase_lines[log.purchase_lines["order_ts"] < cutoff + pd.Timedelta(days=horizon_days + 1)],
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
    return run_backtest(orders, cutoff, horizon_days, model_params=champion.get_params(exclude=("horizon_days",)))


def train_job(
    log: OrderLog,
    cutoff: pd.Timestamp,
    horizon_days: int = 90,
    *,
    register: bool = False,
    model_params: dict | None = None,
    plot_dir: Path | None = None,
) -> TrainResult:
    """Backtest at ``cutoff - H``, fit at ``cutoff``, log to MLflow, register if asked.

    Orders after ``cutoff`` are ignored. When the split has too little history for a
    backtest (no repeat buyers before it, say), the model is trained all the same and the
    report carries ``backtest_note`` instead of metrics; when the cutoff has too little for
    LightGBM, the model is BTYD-only (``model.btyd_only_``).
    """
    check_cutoff(log, cutoff)
    split = cutoff - pd.Timedelta(days=horizon_days)
    with tempfile.TemporaryDirectory() as tmp:
        if split >= log.last_order_date:
            reason = f"its {horizon_days} days of truth lie after the last order ({log.last_order_date.date()})"
            backtest = Backtest(report=no_backtest_report(log, split, horizon_days, reason), frame=pd.DataFrame())
        else:
            try:
                backtest = run_backtest(
                    log.orders, split, horizon_days, model_params=model_params, plot_dir=Path(plot_dir or tmp),
                    source=log.source,
                )
            except BTYDDataError as exc:  # no repeat buyers (or no customers) before the split
                backtest = Backtest(report=no_backtest_report(log, split, horizon_days, str(exc)), frame=pd.DataFrame())
        if "backtest_note" in backtest.report or not register:
            champion_backtest = None
        else:
            champion_backtest = champion_on_split(log.orders, split, horizon_days)
        past = log.orders[log.orders["order_ts"] < cutoff + pd.Timedelta(days=1)]
        model = RepurchaseModel(horizon_days=horizon_days, **(model_params or {})).fit(past, cutoff)
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
        )
    return TrainResult(model=model, backtest=backtest, logged=logged, champion_backtest=champion_backtest)


def no_backtest_report(log: OrderLog, split: pd.Timestamp, horizon_days: int, reason: str) -> dict:
    """The backtest report's keys, with nulls, when the split has too little history to backtest."""
    return {
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
    from features.io import write_parquet
    from features.replenish import pair_lines
    from training.replenish import ReplenishmentModel

    check_cutoff(log, as_of, flag="--as-of")
    future = log.lines["order_ts"] >= as_of + pd.Timedelta(days=1)
    purchases = log.purchase_lines
    past = pair_lines(purchases.loc[(purchases["order_ts"] < as_of + pd.Timedelta(days=1)).to_numpy()])
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
    likely = frame["p_within_horizon"] >= 0.5
    with tracked_run(f"replenish {log.source} {as_of.date()}"):
        mlflow.log_params({"job": "replenish", "source": log.source, "as_of": str(as_of.date()), **params})
        mlflow.log_metrics(
            {
                "pairs": float(len(frame)),
                "customers": float(frame["customer_id"].nunique()),
                "basis_own_share": float((frame["basis"] == "own").mean()) if len(frame) else 0.0,
                "likely_within_horizon": float(likely.sum()),
                "due_within_14_days_and_likely": float(((frame["next_purchase_days_p50"] <= 14) & likely).sum()),
                "training_pairs": float(model.n_training_pairs_),
                "best_iteration": float(model.booster_.best_iteration),
                "timing_shift": model.timing_shift_,
                "timing_scale": model.timing_scale_,
            }
        )
        if out_path is not None:
            mlflow.log_artifact(str(out_path))
