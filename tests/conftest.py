"""Shared fixtures: small synthetic logs and a model (built once per session), private MLflow stores."""

from __future__ import annotations

import os
import shutil
from unittest import mock

import pytest

from features.orders import merge_order_lines
from serving.launch import passive_openmp_waits

passive_openmp_waits()  # the test run is an entry point: set before any test loads LightGBM


@pytest.fixture(scope="session")
def synth_orders():
    """Orders (lines merged) of 3,000 synthetic customers over 2023-2025."""
    from features.synth import generate_order_log

    return merge_order_lines(generate_order_log(3000, seed=7))


@pytest.fixture(scope="session")
def fitted_model(synth_orders):
    """A composite model trained on the synthetic log at 2025-06-30, its BTYD parts from known
    parameters and its boosters short (``known_models``): for the tests that are not about fitting."""
    from known_models import known_repurchase_model

    return known_repurchase_model(synth_orders, "2025-06-30", horizon_days=60)


@pytest.fixture(scope="session")
def uplift_model(fitted_model, synth_orders):
    """The fitted model with an uplift part learned from made-up randomised contacts before its cutoff."""
    import pickle

    import numpy as np
    import pandas as pd

    from features.contacts import holdout_draw, validate_contacts

    past = synth_orders[synth_orders["order_ts"] < pd.Timestamp("2025-06-30") + pd.Timedelta(days=1)]
    customers = np.sort(past.loc[past["order_ts"] < "2025-03-01", "customer_id"].astype(str).unique())[:1500]
    dates = np.array(["2025-03-01", "2025-04-01", "2025-05-01"])[np.arange(len(customers)) % 3]
    actions = np.array(["win_back", "churn_warning"])[np.arange(len(customers)) % 2]
    draws = np.concatenate([holdout_draw([c], a, d) for c, a, d in zip(customers, actions, dates)])
    contacts = validate_contacts(pd.DataFrame({"customer_id": customers, "action": actions, "contacted_at": dates,
                                               "group": np.where(draws < 0.3, "holdout", "treatment")}))
    model = pickle.loads(pickle.dumps(fitted_model))
    return model.fit_uplift(model.uplift_frame(past, contacts, 30), window_days=30)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An MLflow SQLite database with MLflow's tables and nothing else, made once per session (per worker).

    A new store runs MLflow's 60-odd schema migrations, each committed to disk: about 1 s of CPU
    but 7-10 s of waiting on a busy disk (measured here), where copying this file costs
    milliseconds. It holds only MLflow's ``Default`` experiment, which nothing uses: each copy's
    ``configure_tracking`` creates the project's experiment with its artifacts beside the copy.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())
    return folder / "mlflow.db"


def new_store(template, folder) -> str:
    """A copy of the ``mlflow_template`` database at ``folder/mlruns/mlflow.db``, MLflow pointed at it; its URI."""
    from training.registry import configure_tracking

    db = folder / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    return configure_tracking(f"sqlite:///{db}")


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch, mlflow_template):
    """MLflow pointed at a SQLite store under tmp_path (never the working directory)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    new_store(mlflow_template, tmp_path)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def champion_store(mlflow_template):
    """Register a model as champion in a private store: ``champion_store(folder, model, report, **log_run_kwargs)``
    gives the store's URI and the logged model; MLflow and the environment are left as they were."""
    import mlflow

    from training.registry import log_run

    def register(folder, model, report: dict, **log_kwargs):
        with mock.patch.dict(os.environ):
            try:
                os.environ["MLFLOW_TRACKING_URI"] = uri = new_store(mlflow_template, folder)
                logged = log_run(model, report, **{"params": {}, **log_kwargs}, register=True)
            finally:
                mlflow.set_tracking_uri(None)
        return uri, logged

    return register


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local Spark session for every Spark test (two cores, two shuffle partitions)."""
    pytest.importorskip("pyspark")
    from features.spark import open_spark

    conf = {
        "spark.sql.shuffle.partitions": "2",
        "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("spark-warehouse")),
        "spark.driver.memory": "2g",
        # short jobs: the quick JIT tier starts faster than it loses on throughput
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    }
    with open_spark("local[2]", conf=conf) as session:
        yield session
