"""MLflow: training runs, the composite model as one pyfunc, and the registered model's champion and challenger.

Runs carry params, metrics and plots; the ``repurchase`` registered model has the
``champion`` and ``challenger`` aliases.

Promotion rule: a new version becomes ``champion`` when there is none. Otherwise it
becomes ``challenger`` unless, on the same backtest split (same orders, cutoff and horizon),
its ``p_repurchase`` AUC is higher than the champion's and its Brier score no worse
(within 0.001); then it becomes ``champion`` and the old champion keeps its version. A
model that could not be trained at the split (BTYD-only there) is scored by what it then
answers, BG/NBD's ``p_repurchase``; with no backtest at all, nothing beats the champion.

Every run and registered version is tagged ``model_kind`` (``full`` or ``btyd_only``) and
with how its BG/NBD and Gamma-Gamma fits ended (``bgnbd_fit_status``, ...).

Uplift. A model trained with ``--uplift`` keeps its uplift part inside the one composite
model (``RepurchaseModel.uplift_``), not as a second registered model: the pyfunc, ``score``
and ``serve`` then carry ``uplift`` with no second model to load, version or keep in step
with the first (the uplift features are the same customer features). Such runs and versions
are tagged ``uplift_actions`` and ``uplift_window_days``; the run has the evaluation on the
latest campaigns as ``uplift.<ranking>.<metric>`` metrics and ``uplift.json``. Promotion
still compares ``p_repurchase`` only.

Member tiers are not stored with the model: the pyfunc takes them per call (param
``tiers``, the tiers as text), as ``score --tiers`` and ``serve --tiers`` do, so an operator
edits thresholds without retraining. Versions logged before the param existed ignore it;
:func:`takes_tiers` tells them apart (Spark scoring refuses ``--tiers`` for them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.common.outputs import process_alive
from training.contract import SCORE_COLUMNS
from training.model import RepurchaseModel

REGISTERED_MODEL = "repurchase"
EXPERIMENT = "repurchase"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHAMPION, CHALLENGER = "champion", "challenger"
BRIER_TOLERANCE = 0.001
PYFUNC_PARAMS = {"as_of": "", "model_version": "", "tiers": ""}
"""The pyfunc's params and their defaults (``as_of`` defaults to the training cutoff)."""
_REQUIREMENTS = ("lightgbm", "scikit-learn", "pandas", "numpy", "scipy", "lifetimes", "ibis-framework", "duckdb", "pyarrow")


def tracking_uri(uri: str | None = None, *, absolute: bool = False) -> str:
    """The MLflow tracking URI: ``uri``, else $MLFLOW_TRACKING_URI, else the project's SQLite store.

    With ``absolute``, a relative SQLite path is made absolute (for a process that runs in
    another folder, such as the BentoML server).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if absolute and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def configure_tracking(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default: $MLFLOW_TRACKING_URI or the project's SQLite store).

    For a SQLite store the folder is created and artifacts live beside the database
    (``<folder>/artifacts``), never in the working directory. The first use of a new store
    (MLflow creates and migrates its tables) happens under :func:`store_lock`, so two
    commands started together on a new store do not both migrate it. Runs left RUNNING by
    a killed process of this machine are marked KILLED (:func:`end_orphan_runs`).
    """
    import mlflow

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    artifact_root = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_root = (db.parent / "artifacts").resolve().as_uri()
    with store_lock(uri):
        client = mlflow.MlflowClient()
        if client.get_experiment_by_name(EXPERIMENT) is None:
            client.create_experiment(EXPERIMENT, artifact_location=artifact_root)
        mlflow.set_experiment(EXPERIMENT)
    end_orphan_runs()
    return uri


@contextlib.contextmanager
def store_lock(uri: str | None = None):
    """An exclusive lock on a local MLflow store (a file beside the SQLite database), for the
    changes that MLflow itself cannot make atomically: first use of a store, and choosing a
    version's alias. Remote stores get no lock; :func:`register_model` re-reads what it wrote."""
    import fcntl

    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri[len("sqlite:///"):]).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


RUN_PID_TAG, RUN_HOST_TAG = "repurchase.pid", "repurchase.host"


@contextlib.contextmanager
def tracked_run(run_name: str | None = None):
    """``mlflow.start_run`` with this process's id and host as tags, so a run whose process was
    killed (``kill -9``: no chance to end it) is recognised and ended by the next command."""
    import socket

    import mlflow

    with mlflow.start_run(run_name=run_name, tags={RUN_PID_TAG: str(os.getpid()), RUN_HOST_TAG: socket.gethostname()}) as run:
        yield run


def end_orphan_runs() -> int:
    """Mark KILLED the RUNNING runs started on this machine by processes that no longer exist; returns how many."""
    import socket

    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return 0
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{RUN_HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    ended = 0
    for run in runs:
        pid = run.data.tags.get(RUN_PID_TAG, "")
        if pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended += 1
    return ended


def _flat_metrics(report: dict) -> dict[str, float]:
    """Backtest numbers as MLflow metrics: ``model.auc``, ``bgnbd.revenue.gini``, ..."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            if np.isfinite(value):
                out[prefix.replace("@", "_")] = float(value)

    for block in ("model", "bgnbd", "recency_only", "holdout_orders", "replenishment"):
        walk(block, report.get(block, {}))
    for key in ("n_customers", "base_rate"):
        walk(key, report.get(key))
    tiers = report.get("tiers") or {}  # the headline numbers only: tier names may not be valid metric names
    for key in ("accuracy", "macro_f1", "persistence_accuracy", "persistence_macro_f1"):
        walk(f"tiers.{key}", tiers.get(key))
    return out


def uplift_metrics(report: dict) -> dict[str, float]:
    """An uplift evaluation as MLflow metrics: ``uplift.uplift.qini_auc``, ``uplift.p_repurchase.uplift_at_30``,
    ``uplift.random.uplift_at_10``, ``uplift.ratio_at_30``, ..."""
    out = {}
    for ranking, block in report.get("rankings", {}).items():
        for name, value in block.items():
            if value is not None and np.isfinite(value):
                out[f"uplift.{ranking}.{name}"] = float(value)
    if report.get("ratio_at_30") is not None:
        out["uplift.ratio_at_30"] = float(report["ratio_at_30"])
    return out


from mlflow.pyfunc import PythonModel as _PythonModel

# When the class is defined MLflow warns that predict() has no type hints, under its own
# "once" filter that no caller's filter overrides; the signature is given explicitly at
# logging time instead (type-hint validation would reject the feature frame's optional
# columns), so the warning is caught where it is written.
with contextlib.redirect_stderr(io.StringIO()):

    class RepurchasePyfunc(_PythonModel):
        """The composite model as an MLflow pyfunc.

        Input: the feature frame of ``features.pipeline.build_features`` (``customer_id`` and
        the feature columns; extra columns are ignored). Params: ``as_of`` (the date the
        features were built for), ``model_version`` and ``tiers`` (the member tiers as
        YAML or JSON text, :func:`training.tiers.tiers_text`; empty: the shipped tiers).
        Output: the score contract. Tiers travel with the call, not with the model, as
        ``repurchase score --tiers`` takes them: thresholds change without retraining.
        """

        def load_context(self, context):
            with open(context.artifacts["model"], "rb") as handle:
                self.model = pickle.load(handle)

        def predict(self, context, model_input, params=None):
            from training.tiers import tiers_from_text

            params = params or {}
            as_of = params.get("as_of") or self.model.spec_.training_cutoff
            text = params.get("tiers") or ""
            tiers = tiers_from_text(text, "params.tiers") if text.strip() else None
            return self.model.score_features(pd.DataFrame(model_input), as_of, str(params.get("model_version", "")),
                                             tiers=tiers)


def model_kind(model: RepurchaseModel) -> str:
    """``"btyd_only"`` or ``"full"`` (LightGBM on BTYD): the label in MLflow, the CLI and the report."""
    return "btyd_only" if model.is_btyd_only() else "full"


def model_tags(model: RepurchaseModel) -> dict[str, str]:
    """What kind of model this is, how its BTYD fits ended and which model gives ``p_alive``, as MLflow tags."""
    gamma_gamma = model.gamma_gamma_
    tags = {
        "model_kind": model_kind(model),
        "bgnbd_fit_status": getattr(model.bgnbd_, "fit_status_", "interior"),
        "gamma_gamma_fit_status": getattr(gamma_gamma, "fit_status_", "interior") if gamma_gamma is not None
        else "not fitted: mean order value used",
    }
    alive = getattr(model, "alive_model_", None)
    tags["p_alive_model"] = ("bgnbd (one-time buyers read 1)" if alive is None
                             else f"{alive.model}: {getattr(alive, 'fit_status_', 'interior')}")
    if model.is_btyd_only():
        tags["btyd_only_reason"] = model.btyd_only_reason_
    if model.has_uplift():
        tags["uplift_actions"] = ",".join(model.uplift_.actions_)
        tags["uplift_window_days"] = str(model.uplift_.window_days)
    if getattr(model.bgnbd_, "fit_detail_", ""):
        tags["bgnbd_fit_detail"] = model.bgnbd_.fit_detail_
    return tags


def _pip_requirements() -> list[str]:
    return [f"{name}=={package_version(name)}" for name in _REQUIREMENTS] + [f"mlflow=={package_version('mlflow')}"]


@dataclass
class LoggedModel:
    run_id: str
    model_uri: str
    version: str | None = None
    alias: str | None = None


def log_run(
    model: RepurchaseModel,
    report: dict,
    *,
    params: dict,
    plot_paths: dict[str, Path] | None = None,
    example_features: pd.DataFrame | None = None,
    register: bool = False,
    champion_report: dict | None = None,
    run_name: str | None = None,
    uplift_report: dict | None = None,
) -> LoggedModel:
    """Log a training run (params, metrics, plots, feature list, model) and optionally register it.

    ``champion_report`` is the champion's backtest on the same split, used by the promotion rule.
    ``uplift_report`` (``training.jobs.uplift_job``) is logged as ``uplift.*`` metrics and ``uplift.json``.
    """
    import mlflow
    from mlflow.models import infer_signature

    from training.backtest import write_report

    with tracked_run(run_name) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(_flat_metrics(report))
        if uplift_report is not None:
            mlflow.log_metrics(uplift_metrics(uplift_report))
        notes = {k: report[k] for k in ("model_note", "backtest_note") if report.get(k)}
        backtest_status = (report.get("bgnbd") or {}).get("fit_status")
        mlflow.set_tags({"cutoff": report.get("cutoff", ""), "horizon_days": str(report.get("horizon_days", "")),
                         **model_tags(model), **notes,
                         **({"backtest_bgnbd_fit_status": backtest_status} if backtest_status else {})})
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_report(report, tmp / "backtest.json")
            features = model.spec_.model_features or ["(none: BTYD-only model, BG/NBD and Gamma-Gamma on the BTYD summary)"]
            (tmp / "features.txt").write_text("\n".join(features) + "\n")
            mlflow.log_artifact(str(tmp / "backtest.json"))
            mlflow.log_artifact(str(tmp / "features.txt"))
            if uplift_report is not None:
                (tmp / "uplift.json").write_text(json.dumps(uplift_report, indent=2) + "\n")
                mlflow.log_artifact(str(tmp / "uplift.json"))
            for path in (plot_paths or {}).values():
                mlflow.log_artifact(str(path), artifact_path="plots")
            with open(tmp / "model.pkl", "wb") as handle:
                pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)
            example = example_features.head(5) if example_features is not None else None
            signature = None
            if example is not None:
                output = model.score_features(example, model.spec_.training_cutoff, "0")
                signature = infer_signature(example, output, params=PYFUNC_PARAMS | {"as_of": model.spec_.training_cutoff})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=RepurchasePyfunc(),
                artifacts={"model": str(tmp / "model.pkl")},
                signature=signature,
                input_example=None,
                pip_requirements=_pip_requirements(),
            )
    logged = LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri)
    if register:
        logged.version, logged.alias = register_model(logged, report, champion_report, tags=model_tags(model))
    return logged


def beats(report: dict, champion_report: dict) -> bool:
    """The promotion rule: higher AUC, Brier no worse (within ``BRIER_TOLERANCE``), same split."""
    same_split = all(report.get(k) == champion_report.get(k) for k in ("cutoff", "horizon_days", "n_customers"))
    if not same_split:
        raise ValueError("champion and challenger must be compared on the same backtest split")
    new, old = _scored(report), _scored(champion_report)
    if any(block.get(k) is None for block in (new, old) for k in ("auc", "brier")):
        return False
    return new["auc"] > old["auc"] and new["brier"] <= old["brier"] + BRIER_TOLERANCE


def _scored(report: dict) -> dict:
    """The metrics a model earned on a backtest: its own, or BG/NBD's when it was BTYD-only there."""
    model = report.get("model") or {}
    return model if model.get("auc") is not None else (report.get("bgnbd") or {})


def register_model(
    logged: LoggedModel, report: dict, champion_report: dict | None, *, tags: dict[str, str] | None = None
) -> tuple[str, str]:
    """Register a new version, tag it and give it the alias the promotion rule says.

    Exactly one champion under concurrency: on a local store the check "is there a champion?"
    and the alias write happen under :func:`store_lock`; on any store the alias is read back
    after the write, and a version that lost the champion alias to another one becomes
    challenger. The alias returned is the one the registry holds.
    """
    import mlflow

    client = mlflow.MlflowClient()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # "Successfully registered ..."
        version = str(mlflow.register_model(logged.model_uri, REGISTERED_MODEL).version)
    client.set_model_version_tag(REGISTERED_MODEL, version, "auc", str(_scored(report).get("auc")))
    for key, value in (tags or {}).items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)
    with store_lock():
        had_champion = champion_version() is not None
        if not had_champion or (champion_report is not None and beats(report, champion_report)):
            alias = CHAMPION
        else:
            alias = CHALLENGER
        client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
        if alias == CHAMPION and champion_version() != version:
            alias = CHALLENGER
            client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
    return version, alias


def champion_version() -> str | None:
    """The champion's version number, or None when there is none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version)
    except MlflowException:
        return None


def takes_tiers(model_uri: str) -> bool:
    """Whether the pyfunc at ``model_uri`` takes the ``tiers`` param (models logged before it did ignore it)."""
    import mlflow

    signature = mlflow.models.get_model_info(model_uri).signature
    schema = getattr(signature, "params", None)
    return schema is not None and any(param.name == "tiers" for param in schema.params)


def load_scorer(model_uri: str = f"models:/{REGISTERED_MODEL}@{CHAMPION}") -> tuple[RepurchaseModel, str]:
    """The fitted composite model behind a model URI, and its registry version ("" if unregistered)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = " (train one with: repurchase train --orders SRC --cutoff DATE --register)" if "models:/" in model_uri else ""
        raise InputError(f"--model {model_uri}: cannot be loaded: {first}{hint}") from None
    version = ""
    if model_uri.startswith("models:/"):
        name, _, ref = model_uri[len("models:/"):].partition("@")
        client = mlflow.MlflowClient()
        version = str(client.get_model_version_by_alias(name, ref).version) if ref else model_uri.rsplit("/", 1)[-1]
    return loaded.unwrap_python_model().model, version


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "REGISTERED_MODEL",
    "SCORE_COLUMNS",
    "LoggedModel",
    "PYFUNC_PARAMS",
    "RepurchasePyfunc",
    "beats",
    "champion_version",
    "configure_tracking",
    "load_scorer",
    "log_run",
    "model_kind",
    "model_tags",
    "register_model",
    "store_lock",
    "takes_tiers",
    "tracked_run",
]
