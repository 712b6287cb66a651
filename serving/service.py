"""The online scoring service (BentoML 1.4): ``POST /score``, ``POST /target``, health probes.

Run it with ``repurchase serve`` (or ``bentoml serve serving.service:RepurchaseService``).
Request and answer formats, limits and error codes are in :mod:`serving.online`.

Configuration (environment, read when the service starts, not at import)
------------------------------------------------------------------------
``REPURCHASE_MODEL_URI``  MLflow model URI (default ``models:/repurchase@champion``)
``REPURCHASE_SNAPSHOT``   feature snapshot Parquet (``<scores>.features.parquet``); optional:
                          without it, ids get 409 "no snapshot loaded", histories still work
``MLFLOW_TRACKING_URI``   MLflow store (default ``sqlite:///mlruns/mlflow.db``)
``REPURCHASE_TIERS``      member tiers YAML (``repurchase serve --tiers FILE``); default the
                          shipped silver / gold / diamond. Tiers are read here, not stored
                          with the model, as ``repurchase score --tiers`` reads them, so the
                          service and batch give the same tier columns for the same file
``REPURCHASE_API_KEY``    when set, every path but the health probes and the API docs needs
                          ``Authorization: Bearer <key>`` (401 otherwise)

HTTP guard
----------
:class:`serving.guard.RequestGuard` stands in front of the routes: the API key, the body
limit enforced while the body is read (413), body-read timeouts (408) so that stalled
clients cannot hold the 64 request slots, 415 for form and multipart bodies, ``/metrics``
labelled by route, ``/docs`` redirected to BentoML's Swagger UI at ``/`` (the OpenAPI
document is ``/docs.json``). Started by hand (``bentoml serve``), set
``BENTOML_DO_NOT_TRACK=True`` to keep BentoML from sending usage statistics;
``repurchase serve`` sets it.

Start-up and probes
-------------------
The model, the snapshot and the snapshot's scores load in a background thread, so the
server answers at once: ``GET /healthz`` (BentoML's liveness probe; also ``/livez``) is 200
while the process is healthy and 503 if loading failed; ``GET /readyz`` is 503 until the
model is loaded and, when a snapshot is configured, the snapshot is loaded and scored,
then 200. Requests that arrive before then get 409 "still loading".

Id lookups are answered from scores computed once per (model, snapshot) when the
snapshot loads: every snapshot customer is scored in chunks by the served model, exactly
as batch scoring does, and the rows are kept; a lookup is then a hash probe (23,570 CDNOW
customers: about a second of scoring and some 30 MB). Histories are scored on request,
with the same feature code as batch.

Concurrency on a 2-core machine
-------------------------------
One worker (``workers=1``): the model, the snapshot and its scores live in memory once;
a second worker would hold a second copy and gain little, because the heavy work
(DuckDB feature queries, LightGBM) runs in native code that releases the GIL. Id lookups
are answered on the event loop directly (microseconds, no thread hop). ``threads=2`` is
BentoML's thread pool for synchronous APIs; this service has none left (every endpoint
is async), so it only bounds BentoML's own use.

History batching. A history request is scored at once in a worker thread when fewer
than :data:`HISTORY_BATCHES` (2, one per core) batches are running; otherwise it waits,
and when a batch ends, everything waiting (up to ``MAX_CUSTOMERS`` customers) is scored
as the next batch, in one feature query. So batching costs a lone request nothing (no
timer, no wait), and under load the batch size follows the load: the fixed cost of a call
(planning and running the DuckDB feature query, about 12 ms, and the frame handling
around it: nearly all of the ~25 ms that one customer takes) is paid once per batch (50
customers cost about what one does, 200 about twice that).
Scores do not depend on which other customers share a batch (RFM scores and the CLV
percentile use reference distributions stored at training), so batching changes speed,
not answers.

BentoML's own adaptive batching (a ``batchable`` API behind ``self.to_async``) was used
before and is not any more: it sent every history request through an in-process HTTP
call to the batch endpoint and a dispatcher that waits to gather requests (about 50 ms
added per request), and in BentoML 1.4.40 that in-process client renews its session
every 100 calls by closing it under the calls still in flight, which answered them 500
under concurrent load (BentoML issues #5540, #5544; tested in ``test_http_end_to_end``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from datetime import date

import anyio
import bentoml
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse

from serving.guard import RequestGuard
from serving.online import (
    DEFAULT_MODEL_URI,
    MAX_CUSTOMERS,
    CustomerIn,
    RequestError,
    ScoreRequest,
    Snapshot,
    apply_targeting,
    check_snapshot_model,
    dedupe,
    json_rows,
    parse_day,
    score_histories,
)
from training.contract import REASON_CODES

logger = logging.getLogger("repurchase.service")

HISTORY_BATCHES = 2
"""History batches scored at the same time (one per core); later requests wait and are gathered."""


class HistoryItem(BaseModel):
    """One customer of a history request, as a history batch holds it."""

    model_config = ConfigDict(extra="forbid")

    customer: CustomerIn
    as_of: str
    target: bool = False
    explain: bool = False
    lang: str | None = None


@bentoml.service(
    name="repurchase",
    workers=1,
    threads=2,
    # The concurrency limit (64) and the metrics are the guard's (serving.guard): it limits
    # after the key check, so unauthenticated requests take no slot, counts what it refuses,
    # and labels metrics by route where BentoML labels them by raw path.
    traffic={"timeout": 60},
    metrics={"enabled": False},
)
class RepurchaseService:
    """Repurchase scores online, from the feature snapshot (by id) or from order histories."""

    def __init__(self) -> None:
        self.model_uri = os.environ.get("REPURCHASE_MODEL_URI") or DEFAULT_MODEL_URI
        self.snapshot_path = os.environ.get("REPURCHASE_SNAPSHOT") or None
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        self.tiers_path = os.environ.get("REPURCHASE_TIERS") or None
        self.tiers = None
        self.model = None
        self.model_version = ""
        self.snapshot: Snapshot | None = None
        self.load_error: str | None = None
        self._waiting: collections.deque[tuple[list[HistoryItem], asyncio.Future]] = collections.deque()
        self._batches_running = 0
        self._batch_tasks: set[asyncio.Task] = set()
        self._loaded = threading.Event()
        self._loader = threading.Thread(target=self._load, name="repurchase-loader", daemon=True)
        self._loader.start()

    # ------------------------------------------------------------------ loading and probes

    def _load(self) -> None:
        try:
            from training.registry import configure_tracking, load_scorer
            from training.tiers import load_tiers

            self.tiers = load_tiers(self.tiers_path)
            configure_tracking(self.tracking_uri)
            model, version = load_scorer(self.model_uri)
            # The predicted tier's weights for these tiers, computed once here rather than by
            # whichever of two concurrent history batches comes first.
            model.tier_weights(self.tiers)
            self.model, self.model_version = model, version
            logger.info("model %s loaded (version %s)", self.model_uri, version or "-")
            if self.snapshot_path:
                check_snapshot_model(self.snapshot_path, version)
                snapshot = Snapshot.load(self.snapshot_path)
                snapshot.score_all(model, version, tiers=self.tiers)
                self.snapshot = snapshot
                logger.info("snapshot %s: %d customers as of %s", self.snapshot_path, len(snapshot), snapshot.as_of.date())
        except Exception as exc:  # the probes report it; the log has the details
            self.load_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            logger.exception("loading failed")
        finally:
            self._loaded.set()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading has finished (tests and scripts); True when ready."""
        self._loaded.wait(timeout)
        return self.__is_ready__()

    def __is_ready__(self) -> bool:
        return self._loaded.is_set() and self.load_error is None and self.model is not None

    def __is_alive__(self) -> bool:
        return self.load_error is None

    # ------------------------------------------------------------------ endpoints

    @bentoml.api(route="/score")
    async def score(self, request: ScoreRequest, /) -> dict:
        """Score customers: by id from the feature snapshot, or from order histories."""
        return await self._respond(request, target=False)

    @bentoml.api(route="/target")
    async def target(self, request: ScoreRequest, /) -> dict:
        """Score customers and pick each one's action (and why) with the default rules."""
        return await self._respond(request, target=True)

    # ------------------------------------------------------------------ logic

    async def _respond(self, request: ScoreRequest, *, target: bool):
        try:
            return await self.answer(request, target=target)
        except RequestError as exc:
            body = {"error": str(exc)}
            if self.model is not None:
                body["model_version"] = self.model_version
            return JSONResponse(body, status_code=exc.status)

    async def answer(self, request: ScoreRequest, *, target: bool) -> dict:
        """The answer to a request, or :class:`RequestError` (4xx) for a bad one."""
        request.check()
        if not self.__is_ready__():
            if self.load_error is not None:
                raise RequestError(f"the model could not be loaded ({self.load_error}); see the server log", 409)
            raise RequestError("the service is still loading the model and the snapshot; retry when GET /readyz is 200", 409)
        if request.customer_ids is not None:
            return self._answer_ids(request, target=target)
        return await self._answer_histories(request, target=target)

    def _answer_ids(self, request: ScoreRequest, *, target: bool) -> dict:
        snapshot = self.snapshot
        if snapshot is None:
            raise RequestError(
                "no snapshot loaded: start the service with REPURCHASE_SNAPSHOT (repurchase serve --snapshot) "
                "to score by id, or send customers with their orders",
                409,
            )
        if request.as_of is not None and parse_day(request.as_of) != snapshot.as_of.date():
            raise RequestError(
                f"as_of: ids are scored as of the snapshot's date {snapshot.as_of.date()}; "
                "leave as_of out, or send customers with their orders to score another date"
            )
        ids = dedupe(request.customer_ids)
        positions, unknown = snapshot.positions(ids)
        if target and len(positions):
            scores = snapshot.scores.iloc[positions]
            features = snapshot.features.iloc[positions]
            rows = json_rows(apply_targeting(self.model, scores, features, lang=request.lang))
        else:
            rows = snapshot.score_rows(self.model, positions, self.model_version)
        if request.explain and len(positions):
            codes = self.model.reason_codes(snapshot.features.iloc[positions])
            rows = [{**row, REASON_CODES: code} for row, code in zip(rows, codes)]
        return {"scores": rows, "unknown_ids": unknown, "model_version": self.model_version}

    async def _answer_histories(self, request: ScoreRequest, *, target: bool) -> dict:
        as_of = request.as_of_day().isoformat()
        items = [HistoryItem(customer=c, as_of=as_of, target=target, explain=request.explain, lang=request.lang)
                 for c in request.customers]
        rows = await self._score_gathered(items)
        return {"scores": rows, "unknown_ids": [], "model_version": self.model_version}

    # Batching of history requests (see the module docstring). All of its state changes on
    # the event loop only, so it needs no lock; the scoring itself runs in a worker thread.

    async def _score_gathered(self, items: list[HistoryItem]) -> list[dict]:
        """Rows for these items, scored at once if a batch slot is free, else with the next batch."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        while self._waiting and self._batches_running < HISTORY_BATCHES:
            batch, size = [], 0
            while self._waiting and (not batch or size + len(self._waiting[0][0]) <= MAX_CUSTOMERS):
                batch.append(self._waiting.popleft())
                size += len(batch[-1][0])
            self._batches_running += 1
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(self, batch: list[tuple[list[HistoryItem], asyncio.Future]]) -> None:
        try:
            rows = await anyio.to_thread.run_sync(self._score_items, [item for items, _ in batch for item in items])
            start = 0
            for items, future in batch:
                if not future.done():  # its client may have gone
                    future.set_result(rows[start:start + len(items)])
                start += len(items)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._batches_running -= 1
            self._start_batches()

    def _score_items(self, items: list[HistoryItem]) -> list[dict]:
        """Score history items, one feature-pipeline call per (as_of, target) group; rows in item order."""
        out: list[dict | None] = [None] * len(items)
        groups: dict[tuple[str, bool, bool, str | None], list[int]] = {}
        for position, item in enumerate(items):
            groups.setdefault((item.as_of, item.target, item.explain, item.lang), []).append(position)
        for (as_of, target, explain, lang), positions in groups.items():
            # Requests in one batch may share ids: score under unique keys, answer with theirs.
            customers = [
                CustomerIn.model_construct(customer_id=str(k), orders=items[p].customer.orders)
                for k, p in enumerate(positions)
            ]
            scores, features = score_histories(
                self.model, customers, date.fromisoformat(as_of), self.model_version, with_features=target or explain,
                tiers=self.tiers,
            )
            if target:
                real_ids = [items[p].customer.customer_id for p in positions]
                scores = apply_targeting(self.model, scores, features, customer_ids=real_ids, lang=lang)
            if explain:
                scores[REASON_CODES] = self.model.reason_codes(features)
            scores["customer_id"] = [items[p].customer.customer_id for p in positions]
            rows = json_rows(scores)
            for p, row in zip(positions, rows):
                out[p] = row
        return out


RepurchaseService.add_asgi_middleware(RequestGuard, api_paths=tuple(api.route for api in RepurchaseService.apis.values()))
