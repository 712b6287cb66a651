"""The online service: same numbers as batch, unknown ids reported, every bad request a 4xx.

The service class is instantiated in-process (BentoML 1.4 lets a service class be called
like a plain class); one slow test runs it over HTTP with BentoML's own server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.online import MAX_CUSTOMERS, RequestError, ScoreRequest, parse_request
from training.contract import SCORE_COLUMNS, SCORE_DTYPES

AS_OF = "2025-06-30"
# Member tiers other than the shipped ones (four, other names, thresholds that split this
# small synth log), so that tier columns equal to batch show that the file reached the service.
TIERS_YAML = """basis: spend
tiers:
  - {name: bronze, min: 0}
  - {name: silver, min: 300}
  - {name: gold, min: 1500}
  - {name: platinum, min: 3000}
"""
NUMERIC = [c for c in SCORE_COLUMNS if SCORE_DTYPES[c] not in ("str", "datetime64[ns]")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def served(tmp_path_factory, fitted_model, champion_store):
    """A registered model in a private MLflow store, a small log scored in batch with :data:`TIERS_YAML`, and its snapshot."""
    from features.orders import load_order_log
    from features.synth import generate_order_log
    from serving.batch import score_log
    from training.tiers import load_tiers

    root = tmp_path_factory.mktemp("service")
    report = {"cutoff": "2025-06-30", "horizon_days": 60, "n_customers": 3000, "model": {"auc": 0.7, "brier": 0.2}}
    uri, logged = champion_store(root, fitted_model, report, params={"test": 1})

    lines = generate_order_log(120, seed=11)
    log_path = root / "orders.parquet"
    lines.to_parquet(log_path, index=False)
    log = load_order_log(log_path)
    tiers_path = root / "tiers.yaml"
    tiers_path.write_text(TIERS_YAML)
    run = score_log(fitted_model, log, pd.Timestamp(AS_OF), root / "scores.parquet", model_version=logged.version,
                    tiers=load_tiers(tiers_path))
    return {
        "uri": uri,
        "version": logged.version,
        "lines": log.lines,
        "scores": pd.read_parquet(run.scores_path),
        "snapshot": run.snapshot_path,
        "tiers": tiers_path,
        "root": root,
    }


def _service(served, snapshot: bool):
    from serving.service import RepurchaseService

    saved = {k: os.environ.get(k) for k in ("REPURCHASE_MODEL_URI", "REPURCHASE_SNAPSHOT", "MLFLOW_TRACKING_URI",
                                            "REPURCHASE_TIERS")}
    os.environ["MLFLOW_TRACKING_URI"] = served["uri"]
    os.environ["REPURCHASE_TIERS"] = str(served["tiers"])
    os.environ["REPURCHASE_MODEL_URI"] = "models:/repurchase@champion"
    if snapshot:
        os.environ["REPURCHASE_SNAPSHOT"] = str(served["snapshot"])
    else:
        os.environ.pop("REPURCHASE_SNAPSHOT", None)
    try:
        service = RepurchaseService()
        assert service.wait_loaded(300), service.load_error
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return service


@pytest.fixture(scope="session")
def service(served):
    return _service(served, snapshot=True)


@pytest.fixture(scope="session")
def service_without_snapshot(served):
    return _service(served, snapshot=False)


def call(service, body, target: bool = False) -> tuple[int, dict]:
    """POST a body (JSON text or object) the way BentoML does: parse, then the endpoint."""
    text = body if isinstance(body, (str, bytes)) else json.dumps(body)
    request = ScoreRequest.model_validate_json(text)
    endpoint = service.target if target else service.score
    result = asyncio.run(endpoint(request))
    if hasattr(result, "status_code"):
        return result.status_code, json.loads(result.body)
    return 200, json.loads(json.dumps(result))  # must be plain JSON (no NaN)


def history(lines: pd.DataFrame, customer_id: str) -> dict:
    mine = lines[(lines["customer_id"] == customer_id) & (lines["order_ts"] < pd.Timestamp(AS_OF) + pd.Timedelta(days=1))]
    orders = []
    for row in mine.itertuples(index=False):
        order = {"order_ts": row.order_ts.isoformat(), "amount": float(row.amount)}
        for name in ("order_id", "quantity", "product_id", "category", "channel"):
            if name in mine.columns and not pd.isna(getattr(row, name)):
                value = getattr(row, name)
                order[name] = float(value) if name == "quantity" else str(value)
        orders.append(order)
    return {"customer_id": customer_id, "orders": orders}


def assert_same_scores(batch: pd.DataFrame, rows: list[dict]) -> None:
    online = pd.DataFrame(rows).set_index("customer_id")
    batch = batch.set_index("customer_id").loc[online.index]
    for column in NUMERIC:
        np.testing.assert_allclose(
            online[column].astype(float).to_numpy(), batch[column].astype(float).to_numpy(), rtol=0, atol=1e-9, err_msg=column
        )
    assert (online["as_of"] == batch["as_of"].dt.strftime("%Y-%m-%d")).all()
    for column in ("rfm_segment", "lifecycle_stage", "model_version", "member_tier", "predicted_tier"):
        assert (online[column] == batch[column].astype(str)).all(), column


# --------------------------------------------------------------------------- same numbers as batch


def test_scores_by_id_equal_batch(service, served):
    ids = served["scores"]["customer_id"].tolist()[:40]
    status, answer = call(service, {"customer_ids": ids})
    assert status == 200
    assert [r["customer_id"] for r in answer["scores"]] == ids
    assert list(answer["scores"][0]) == list(SCORE_COLUMNS)
    assert answer["model_version"] == served["version"]
    assert_same_scores(served["scores"], answer["scores"])


def test_tier_columns_follow_the_tiers_file_the_service_was_started_with(service, served):
    """The batch scores used a four-tier file; the service, started with it, answers in those tiers."""
    batch = served["scores"]
    assert set(batch["member_tier"]) <= {"bronze", "silver", "gold", "platinum"}
    assert batch["member_tier"].nunique() >= 3 and batch["predicted_tier"].nunique() >= 2  # the file splits this log
    ids = batch["customer_id"].tolist()
    status, by_id = call(service, {"customer_ids": ids})
    assert status == 200
    customers = [history(served["lines"], i) for i in ids[:20]]
    status, by_history = call(service, {"customers": customers, "as_of": AS_OF}, target=True)
    assert status == 200, by_history
    for rows in (by_id["scores"], by_history["scores"]):
        assert_same_scores(batch, rows)  # tier names and p_upgrade, p_downgrade, spend_to_next_tier included


def test_a_bad_tiers_file_fails_loading_with_one_line(served, tmp_path, monkeypatch):
    from serving.service import RepurchaseService

    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers: [{name: silver, min: 0}, {name: gold, min: -5}]")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    monkeypatch.setenv("REPURCHASE_TIERS", str(bad))
    monkeypatch.delenv("REPURCHASE_SNAPSHOT", raising=False)
    service = RepurchaseService()
    assert not service.wait_loaded(60)
    assert "'min' must be a number >= 0" in service.load_error and "\n" not in service.load_error
    status, answer = call(service, {"customer_ids": ["1"]})
    assert status == 409 and "could not be loaded" in answer["error"]


def test_scores_by_history_equal_batch(service, served):
    ids = served["scores"]["customer_id"].tolist()
    customers = [history(served["lines"], i) for i in ids[:30]]
    status, answer = call(service, {"customers": customers, "as_of": AS_OF})
    assert status == 200, answer
    assert [r["customer_id"] for r in answer["scores"]] == ids[:30]
    assert_same_scores(served["scores"], answer["scores"])


def test_one_customer_alone_equals_batch(service, served):
    """Scores do not depend on who else is in the request (reference distributions, not ranks)."""
    for customer_id in served["scores"]["customer_id"].tolist()[:3]:
        status, answer = call(service, {"customers": [history(served["lines"], customer_id)], "as_of": AS_OF})
        assert status == 200, answer
        assert_same_scores(served["scores"], answer["scores"])


def test_explain_adds_the_models_reason_codes_by_id_and_by_history(service, served, fitted_model):
    ids = served["scores"]["customer_id"].tolist()[:8]
    snapshot = pd.read_parquet(served["snapshot"]).set_index("customer_id").loc[ids].reset_index()
    expected = fitted_model.reason_codes(snapshot)
    status, by_id = call(service, {"customer_ids": ids, "explain": True})
    assert status == 200 and [r["reason_codes"] for r in by_id["scores"]] == expected
    customers = [history(served["lines"], i) for i in ids]
    for target in (False, True):
        status, by_history = call(service, {"customers": customers, "as_of": AS_OF, "explain": True}, target=target)
        assert status == 200 and [r["reason_codes"] for r in by_history["scores"]] == expected
    status, plain = call(service, {"customer_ids": ids})
    assert "reason_codes" not in plain["scores"][0]
    status, answer = call(service, {"customer_ids": ids, "explain": "yes"})
    assert status == 400 and "explain" in answer["error"]


def test_unknown_ids_are_reported_not_dropped(service, served):
    known = served["scores"]["customer_id"].iloc[0]
    status, answer = call(service, {"customer_ids": ["no-such-customer", known, known, 12345]})
    assert status == 200
    assert [r["customer_id"] for r in answer["scores"]] == [known]
    assert answer["unknown_ids"] == ["no-such-customer", "12345"]


def test_target_adds_action_and_reason(service, served):
    ids = served["scores"]["customer_id"].tolist()[:60]
    status, answer = call(service, {"customer_ids": ids}, target=True)
    assert status == 200
    rows = answer["scores"]
    assert all({"action", "reason"} <= set(r) for r in rows)
    assert any(r["action"] is not None for r in rows)
    assert all((r["action"] is None) == (r["reason"] is None) for r in rows)
    status, by_history = call(
        service, {"customers": [history(served["lines"], i) for i in ids[:10]], "as_of": AS_OF}, target=True
    )
    assert status == 200, by_history
    assert [r["action"] for r in by_history["scores"]] == [r["action"] for r in rows[:10]]


def test_ids_without_snapshot_answer_409_histories_still_work(service_without_snapshot, served):
    status, answer = call(service_without_snapshot, {"customer_ids": ["a"]})
    assert status == 409 and "no snapshot loaded" in answer["error"]
    customer = history(served["lines"], served["scores"]["customer_id"].iloc[0])
    status, answer = call(service_without_snapshot, {"customers": [customer], "as_of": AS_OF})
    assert status == 200 and len(answer["scores"]) == 1


def test_probes(service):
    assert service.__is_ready__() and service.__is_alive__()


# --------------------------------------------------------------------------- fast paths equal the general ones


def _scores_step_by_step(model, features: pd.DataFrame, as_of, model_version: str) -> pd.DataFrame:
    """Score rows from the model's public methods, one frame per step (what score_features does in one go)."""
    from training.model import QUANTILES
    from training.segments import lifecycle_stage, rfm_segment

    features = model.with_btyd(features)
    p = model.p_repurchase(features)
    p_alive = model.p_alive(features, p)
    quantiles = np.full((len(features), len(QUANTILES)), np.nan)
    reachable = p >= min(QUANTILES)
    if reachable.any():
        quantiles[reachable] = model.next_order_quantiles(features.loc[reachable], p[reachable])
    scores = pd.DataFrame(
        {
            "customer_id": features["customer_id"].astype("str").to_numpy(),
            "as_of": pd.Timestamp(as_of).normalize(),
            "horizon_days": np.int64(model.horizon_days),
            "p_alive": p_alive,
            "p_repurchase": p,
            "expected_orders": model.expected_orders(features),
            "expected_revenue": model.expected_revenue(features),
            "clv": np.asarray(model.clv(features), dtype=float),
            "next_order_days_p10": quantiles[:, 0],
            "next_order_days_p50": quantiles[:, 1],
            "next_order_days_p90": quantiles[:, 2],
            "churn_risk": 1.0 - p,
            "rfm_r": features["rfm_r"].to_numpy(),
            "rfm_f": features["rfm_f"].to_numpy(),
            "rfm_m": features["rfm_m"].to_numpy(),
            "rfm_segment": rfm_segment(features["rfm_r"].to_numpy(), features["rfm_f"].to_numpy()),
            "lifecycle_stage": lifecycle_stage(features, p, p_alive, model.horizon_days),
            "model_version": model_version,
            **model.tier_columns(features),
        }
    )
    return scores[list(SCORE_COLUMNS)].astype(SCORE_DTYPES)


def test_score_features_equals_the_step_by_step_scores(fitted_model, synth_orders):
    """score_features works on one float matrix; it must give the public methods' answers, bit for bit."""
    features = fitted_model.point_in_time_features(synth_orders, AS_OF)
    expected = _scores_step_by_step(fitted_model, features, AS_OF, "7")
    pd.testing.assert_frame_equal(fitted_model.score_features(features, AS_OF, "7"), expected, check_exact=True)
    rng = np.random.default_rng(3)
    for row in rng.choice(len(features), 25, replace=False):  # one customer at a time, as online
        one = features.iloc[[row]].reset_index(drop=True)
        pd.testing.assert_frame_equal(
            fitted_model.score_features(one, AS_OF, "7"), _scores_step_by_step(fitted_model, one, AS_OF, "7"), check_exact=True
        )
    # already with the BTYD columns (as with_btyd returns them): the same answers
    pd.testing.assert_frame_equal(
        fitted_model.score_features(fitted_model.with_btyd(features), AS_OF, "7"), expected, check_exact=True
    )


_ids = st.sampled_from(["c1", "c2", "C1", "10", "9", "é", "c 3"])
_history_order = st.fixed_dictionaries(
    {
        "order_ts": st.datetimes(min_value=pd.Timestamp("2024-01-01").to_pydatetime(), max_value=pd.Timestamp("2024-01-20").to_pydatetime())
        .map(lambda d: d.isoformat() if d.second % 2 else d.date().isoformat()),
        "amount": st.sampled_from([0.0, 1.5, 20.0]) | st.floats(0, 1e4, allow_nan=False),
    },
    optional={
        "quantity": st.sampled_from([1.0, 2.5]),
        "category": st.sampled_from(["a", "A", " b ", ""]),
        "channel": st.sampled_from(["web", "app"]),
        "product_id": st.sampled_from(["p1", "p2"]),
    },
)
_history_customers = st.lists(
    st.fixed_dictionaries({"customer_id": _ids, "orders": st.lists(_history_order, min_size=1, max_size=6)}),
    min_size=1, max_size=4, unique_by=lambda c: c["customer_id"],
)


@settings(max_examples=150, deadline=None)
@given(customers=_history_customers)
def test_history_orders_equal_the_order_log_path(customers):
    """History requests skip the batch log's validator (the request models checked them): same orders."""
    from serving.online import history_log_orders, history_orders

    request = parse_request(json.dumps({"customers": customers, "as_of": "2024-06-30"}))
    pd.testing.assert_frame_equal(history_orders(request.customers), history_log_orders(request.customers), check_exact=True)


def test_small_feature_queries_equal_a_fresh_database(synth_orders, monkeypatch):
    """Small inputs run on a kept single-threaded DuckDB, from several threads at once: same features."""
    from concurrent.futures import ThreadPoolExecutor

    from features import pipeline

    ids = synth_orders["customer_id"].drop_duplicates().tolist()
    parts = [synth_orders[synth_orders["customer_id"].isin(ids[k:k + 3])] for k in range(0, 120, 3)]
    build = lambda part: pipeline.build_features(part, AS_OF, channel_values=["web"], category_values=["a", "b"])  # noqa: E731
    with ThreadPoolExecutor(4) as pool:
        small = list(pool.map(build, parts))
    monkeypatch.setattr(pipeline, "SMALL_INPUT_ROWS", 0)
    for part, got in zip(parts, small):
        pd.testing.assert_frame_equal(got, build(part), check_exact=True)


def test_concurrent_history_requests_are_batched_and_answered_alike(service, served):
    """Requests that arrive while a batch runs are scored together, each answered with its own rows."""
    ids = served["scores"]["customer_id"].tolist()[:24]
    bodies = [{"customers": [history(served["lines"], i)], "as_of": AS_OF} for i in ids]
    sizes = []
    score_items = service._score_items

    def spy(items):
        sizes.append(len(items))
        return score_items(items)

    async def all_at_once():
        requests = [ScoreRequest.model_validate_json(json.dumps(b)) for b in bodies]
        return await asyncio.gather(*(service.score(r) for r in requests))

    service._score_items = spy
    try:
        answers = asyncio.run(all_at_once())
    finally:
        del service._score_items
    assert [a["scores"][0]["customer_id"] for a in answers] == ids
    assert_same_scores(served["scores"], [a["scores"][0] for a in answers])
    assert max(sizes) > 1 and sum(sizes) == len(ids)
    assert service._batches_running == 0 and not service._waiting


# --------------------------------------------------------------------------- bad requests


def _order(**change):
    return {"order_ts": "2025-01-02", "amount": 9.5, **change}


def _customers(*orders, as_of=AS_OF):
    body = {"customers": [{"customer_id": "c1", "orders": list(orders) or [_order()]}]}
    if as_of is not None:
        body["as_of"] = as_of
    return json.dumps(body)


BAD = [
    ("{", 400, "not valid JSON"),
    ("", 400, "empty"),
    ("[1, 2]", 400, "JSON object"),
    ('"text"', 400, "JSON object"),
    ("{}", 400, "exactly one of"),
    ('{"customer_ids": ["a"], "customers": [{"customer_id": "a", "orders": [{"order_ts": "2025-01-01", "amount": 1}]}]}', 400, "exactly one of"),
    ('{"customer_ids": []}', 400, "must not be empty"),
    ('{"customer_ids": "a"}', 400, "customer_ids"),
    ('{"customer_ids": [true]}', 400, "customer_ids[0]"),
    ('{"customer_ids": [""]}', 400, "customer_ids[0]"),
    ('{"customer_ids": ["a"], "extra": 1}', 400, "extra: unknown field"),
    ('{"customers": []}', 400, "must not be empty"),
    ('{"customers": [{"customer_id": "c1", "orders": []}]}', 400, "orders: must not be empty"),
    ('{"customers": [{"customer_id": "c1"}]}', 400, "orders: is required"),
    (json.dumps({"customer_ids": [str(i) for i in range(MAX_CUSTOMERS + 1)]}), 413, "at most 1000"),
    (_customers(_order(order_ts="yesterday")), 400, "'yesterday' is not a date"),
    (_customers(_order(order_ts="2025-13-45")), 400, "is not a date"),
    (_customers(_order(order_ts=20250101)), 400, "order_ts"),
    (_customers(_order(amount=-5)), 400, "returns are not accepted online"),
    (_customers(_order(amount="9.5")), 400, "amount: must be a number"),
    (_customers(_order(amount=None)), 400, "amount"),
    ('{"customers": [{"customer_id": "c1", "orders": [{"order_ts": "2025-01-02", "amount": NaN}]}]}', 400, "finite"),
    ('{"customers": [{"customer_id": "c1", "orders": [{"order_ts": "2025-01-02", "amount": Infinity}]}]}', 400, "finite"),
    ('{"customers": [{"customer_id": "c1", "orders": [{"order_ts": "2025-01-02", "amount": 1e999}]}]}', 400, "finite"),
    (_customers(_order(quantity=0)), 400, "quantity"),
    (_customers(_order(order_ts="2025-07-01")), 400, "after as_of 2025-06-30"),
    (_customers(_order(order_ts="2150-01-01"), as_of=None), 400, "as_of defaults to today"),
    (_customers(as_of="2999-01-01"), 400, "after today"),
    (_customers(as_of="30/06/2025"), 400, "use YYYY-MM-DD"),
    (_customers(_order(unknown="x")), 400, "unknown field"),
    (
        json.dumps({"customers": [{"customer_id": "c1", "orders": [_order()]}, {"customer_id": "c1", "orders": [_order()]}]}),
        400,
        "appears twice",
    ),
    ('{"customer_ids": ["a"], "as_of": "2020-01-01"}', 400, "snapshot's date"),
]


@pytest.mark.parametrize("body, status, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_requests_get_4xx_with_one_line(service, body, status, message):
    got, answer = call(service, body)
    assert got == status, answer
    assert message in answer["error"]
    assert "\n" not in answer["error"]


def test_too_many_orders_is_413():
    orders = [_order() for _ in range(600)]
    body = {"customers": [{"customer_id": f"c{i}", "orders": orders} for i in range(170)], "as_of": AS_OF}
    with pytest.raises(RequestError, match="at most 100000") as caught:
        parse_request(json.dumps(body))
    assert caught.value.status == 413


def test_zoned_timestamps_keep_wall_clock_time():
    request = parse_request(_customers(_order(order_ts="2025-06-30T23:30:00-05:00")))
    assert request.customers[0].orders[0].ts.isoformat() == "2025-06-30T23:30:00"


# --------------------------------------------------------------------------- fuzzing

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_order_like = st.fixed_dictionaries(
    {"order_ts": st.one_of(st.text(max_size=25), st.dates().map(str), st.datetimes().map(lambda d: d.isoformat()), _json),
     "amount": st.one_of(st.floats(), st.integers(), _json)},
    optional={"quantity": st.one_of(st.floats(), _json), "category": _json, "order_id": _json},
)
_payload = st.one_of(
    _json,
    st.fixed_dictionaries({"customer_ids": st.one_of(st.lists(st.one_of(st.text(max_size=10), _json), max_size=5), _json)}),
    st.fixed_dictionaries(
        {"customers": st.lists(st.fixed_dictionaries({"customer_id": st.one_of(st.text(max_size=6), _json), "orders": st.lists(_order_like, max_size=3)}), max_size=3)},
        optional={"as_of": st.one_of(st.dates().map(str), st.text(max_size=12), _json)},
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=_payload)
def test_fuzzed_requests_never_raise_anything_but_a_4xx(payload):
    try:
        text = json.dumps(payload)
    except ValueError:
        return
    try:
        request = parse_request(text)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and str(exc) and "\n" not in str(exc)
        return
    assert (request.customer_ids is None) != (request.customers is None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=_payload)
def test_fuzzed_requests_through_the_endpoint(service, payload):
    try:
        text = json.dumps(payload)
    except ValueError:
        return
    status, answer = call(service, text)
    assert status == 200 or (400 <= status < 500 and "\n" not in answer["error"]), answer


# --------------------------------------------------------------------------- over HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.slow
def test_http_end_to_end(served):
    import bentoml

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": served["uri"], "PYTHONUNBUFFERED": "1"}
    code = (
        "from pathlib import Path; from serving.launch import serve_command; "
        f"serve_command('models:/repurchase@champion', {port}, Path(r'{served['snapshot']}'), "
        f"tiers=Path(r'{served['tiers']}'))"
    )
    log = open(served["root"] / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parent.parent,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while _get(f"{base}/readyz") != 200:
            assert server.poll() is None, (served["root"] / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not ready in 300 s"
            time.sleep(1)
        assert _get(f"{base}/healthz") == 200
        ids = served["scores"]["customer_id"].tolist()[:5]
        with bentoml.SyncHTTPClient(base, timeout=60) as client:
            answer = client.score({"customer_ids": [*ids, "nobody"]})
            assert [r["customer_id"] for r in answer["scores"]] == ids
            assert answer["unknown_ids"] == ["nobody"] and answer["model_version"] == served["version"]
            assert_same_scores(served["scores"], answer["scores"])
            customers = [history(served["lines"], i) for i in ids]
            targeted = client.target({"customers": customers, "as_of": AS_OF})
            assert [r["customer_id"] for r in targeted["scores"]] == ids
            assert all("action" in r and "reason" in r for r in targeted["scores"])
            assert_same_scores(served["scores"], targeted["scores"])
        # Concurrent history requests, more than BentoML's internal client serves before it
        # renews its session (100): every one answered, each with its own customer's scores.
        bodies = [json.dumps({"customers": [history(served["lines"], i)], "as_of": AS_OF}).encode() for i in ids] * 30

        def post(body: bytes) -> dict:
            request = urllib.request.Request(f"{base}/score", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, bodies))
        assert [a["scores"][0]["customer_id"] for a in answers] == ids * 30
        for k in range(0, len(answers), len(ids)):
            assert_same_scores(served["scores"], [a["scores"][0] for a in answers[k:k + len(ids)]])
        for body, status in ((b'{"customer_ids": [', 400), (b'{"customer_ids": []}', 400), (b'{"customer_ids": ["a"], "customers": []}', 400)):
            request = urllib.request.Request(f"{base}/score", data=body, headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=30)
            assert caught.value.code == status
            assert "error" in json.loads(caught.value.read())
    finally:
        for sig, wait in ((2, 30), (15, 10), (9, 10)):
            if server.poll() is not None:
                break
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()


def test_target_gives_reasons_in_the_language_asked_and_machine_names_in_english(service, served):
    ids = served["scores"]["customer_id"].tolist()[:60]
    status, english = call(service, {"customer_ids": ids, "lang": "en"}, target=True)
    assert status == 200
    status, chinese = call(service, {"customer_ids": ids, "lang": "zh"}, target=True)
    assert status == 200
    cjk = re.compile(r"[\u4e00-\u9fff]")
    pairs = [(e, c) for e, c in zip(english["scores"], chinese["scores"]) if e["reason"] is not None]
    assert pairs
    for e, c in pairs:
        assert {k: v for k, v in c.items() if k != "reason"} == {k: v for k, v in e.items() if k != "reason"}
        assert cjk.search(c["reason"]) and not cjk.search(e["reason"])
    history_ids = [e["customer_id"] for e, _c in pairs][:3]
    status, by_history = call(service, {"customers": [history(served["lines"], i) for i in history_ids],
                                        "as_of": AS_OF, "lang": "zh"}, target=True)
    assert status == 200, by_history
    assert all(cjk.search(r["reason"]) for r in by_history["scores"] if r["reason"] is not None)
    status, answer = call(service, {"customer_ids": ids[:1], "lang": "fr"}, target=True)
    assert status == 400 and "'fr' is not a language offered here; choose one of en, zh" in answer["error"]
