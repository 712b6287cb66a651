"""The guard in front of the online service: API key, body limits, read timeouts, bounded metrics.

BentoML 1.4 has no setting for an API key, a request-body limit or a body-read timeout
(its ``traffic.timeout`` only bounds the time to the first byte of the answer, 60 s here),
and its ``/metrics`` labels every series with the raw request path, so each distinct 404
path adds series for good. :class:`RequestGuard` is one ASGI middleware, added with
BentoML's ``Service.add_asgi_middleware`` (:mod:`serving.service`), that does all of it.
It runs inside BentoML's tracing, access log and request timeout, in front of the routes.
For every HTTP request, in this order:

1. ``/docs`` is redirected to ``/``: BentoML serves its Swagger UI at ``/`` and the
   OpenAPI document at ``/docs.json``. The UI page gets a Content-Security-Policy that lets
   it load only from this server, so the Google Tag Manager snippet BentoML ships in it
   does not run.
2. The API key. With ``REPURCHASE_API_KEY`` set, every path but the health probes
   (``/healthz``, ``/livez``, ``/readyz``) and the API documentation needs
   ``Authorization: Bearer <key>`` (401 otherwise). ``/metrics`` needs it too (it tells
   who calls how often; Prometheus sends a bearer token with ``authorization:`` in its
   scrape config). The documentation stays open: it describes the API, holds no data, and
   a browser cannot add the header to a page it opens. Keys are compared in constant time.
3. ``/metrics``, answered here (BentoML's own metrics are switched off in the service
   config): request counts, durations and requests in progress, labelled by route;
   every path that is not a route is counted under ``endpoint="other"``, so unknown
   paths add no series.
4. For ``POST`` to an API route (``/score``, ``/target``) only:

   * a ``Content-Length`` above :data:`serving.online.MAX_BODY_BYTES` is refused with 413
     before a byte of the body is read; a body sent without one (chunked) is counted as
     it arrives and refused as soon as it passes the limit, so the server never holds
     more than the limit and one chunk;
   * form and multipart bodies (which BentoML would parse as form fields, answering 500
     for a multipart body without a boundary) get 415: the API takes JSON;
   * at most :data:`MAX_CONCURRENCY` requests are read and answered at once (429 beyond;
     unauthenticated and refused requests never take a slot);
   * the body must arrive with no pause longer than :data:`BODY_IDLE_TIMEOUT` seconds and
     in full within :data:`BODY_TIMEOUT` seconds (408 otherwise), so clients that send
     headers and then stall or trickle give their slot back within seconds instead of
     holding all of them until BentoML's 60 s timeout.

Every refusal is ``{"error": "<one line>"}`` with ``Connection: close`` (the server stops
reading an unwanted body instead of draining it), and an exception escaping the service
is answered with a generic 500 line and logged, never with a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any, Awaitable, Callable

from serving.online import MAX_BODY_BYTES

logger = logging.getLogger("repurchase.guard")

MAX_CONCURRENCY = 64
"""API requests read and answered at once by the (single) worker; more get 429."""
BODY_IDLE_TIMEOUT = 10.0
"""Longest pause (seconds) allowed while a request body arrives."""
BODY_TIMEOUT = 30.0
"""Longest time (seconds) a request body may take to arrive in full (20 MB in 30 s is 5 Mbit/s)."""
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
DOCS_PATHS = ("/", "/docs", "/docs.json", "/schema.json")
DOCS_ASSETS = "/static_content/"
API_KEY_ENV = "REPURCHASE_API_KEY"
REFUSED_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle")
CLIENT_GONE = 499  # status label of requests whose client left before the answer (nginx's convention)
# Swagger UI needs its own scripts, inline styles and data: images; nothing else loads.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'none'; object-src 'none'; base-uri 'self'"
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Refused(Exception):
    """A request the guard answers itself with a 4xx and one line."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(message)
        self.status = status
        self.headers = headers


class _ClientGone(Exception):
    """The client disconnected while its body was being read."""


class HTTPMetrics:
    """Request counts, durations and requests in progress, labelled by a bounded ``endpoint``.

    In BentoML's server ``PROMETHEUS_MULTIPROC_DIR`` is set and the values live in its
    per-process files (as BentoML's own metrics do); elsewhere (tests) in a private registry.
    """

    def __init__(self) -> None:
        import prometheus_client as prom

        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            "repurchase_http_requests", "HTTP requests answered, by route and status", ["endpoint", "status"],
            registry=self.registry,
        )
        self.duration = prom.Histogram(
            "repurchase_http_request_duration_seconds", "Time to answer an HTTP request, by route", ["endpoint"],
            registry=self.registry,
        )
        self.in_progress = prom.Gauge(
            "repurchase_http_requests_in_progress", "HTTP requests being answered now, by route", ["endpoint"],
            registry=self.registry, multiprocess_mode="livesum",
        )

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        import prometheus_client as prom
        from prometheus_client import multiprocess

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return prom.generate_latest(registry)
        return prom.generate_latest(self.registry)


class RequestGuard:
    """ASGI middleware that checks, limits and counts requests before BentoML's routes (module docs).

    Parameters
    ----------
    app
        The ASGI application it guards (BentoML passes it).
    api_paths
        The service's API routes: the only paths whose bodies are read, limited and timed.
    api_key
        The key ``Authorization: Bearer`` must carry; default ``REPURCHASE_API_KEY`` from the
        environment when the server starts (unset or blank: no key needed).
    max_body_bytes, max_concurrency, body_idle_timeout, body_timeout
        The limits (module constants by default).
    """

    def __init__(
        self,
        app,
        api_paths: tuple[str, ...] = ("/score", "/target"),
        api_key: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_concurrency: int = MAX_CONCURRENCY,
        body_idle_timeout: float = BODY_IDLE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.api_paths = frozenset(api_paths)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        # h11 strips the blanks around header values, so a key with blanks around it could never match.
        self.api_key = key.strip().encode() or None
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.body_idle_timeout = body_idle_timeout
        self.body_timeout = body_timeout
        self.active = 0
        self.routes = frozenset((*self.api_paths, *HEALTH_PATHS, *DOCS_PATHS, "/metrics"))
        self.metrics = HTTPMetrics()

    def endpoint(self, path: str) -> str:
        """The metrics label of a path: the route it names, or one label for everything else."""
        if path in self.routes:
            return path
        if path.startswith(DOCS_ASSETS):
            return DOCS_ASSETS.rstrip("/")
        return "other"

    def is_open(self, path: str) -> bool:
        """Paths answered without the API key: health probes and the API documentation."""
        return path in HEALTH_PATHS or path in DOCS_PATHS or path.startswith(DOCS_ASSETS)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.endpoint(scope["path"])
        status = 0

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if scope["path"] == "/":
                    message = {**message, "headers": [*message.get("headers", []), (b"content-security-policy", DOCS_CSP.encode())]}
            await send(message)

        started = time.perf_counter()
        in_progress = self.metrics.in_progress.labels(endpoint)
        in_progress.inc()
        try:
            await self._guard(scope, receive, counted)
        except _Refused as refusal:
            await _answer(counted, refusal.status, {"error": str(refusal)}, refusal.headers)
        except _ClientGone:
            status = CLIENT_GONE
        except asyncio.CancelledError:
            status = status or 504  # BentoML's request timeout cancels the request, then answers 504
            raise
        except Exception:
            logger.exception("unexpected error answering %s %s", scope.get("method"), scope["path"])
            if status:  # the answer has started: nothing better to do than to end the connection
                raise
            await _answer(counted, 500, {"error": "an unexpected error occurred; the server log has the details"})
        finally:
            in_progress.dec()
            self.metrics.requests.labels(endpoint, str(status or CLIENT_GONE)).inc()
            self.metrics.duration.labels(endpoint).observe(time.perf_counter() - started)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/docs":
            await _answer(send, 307, None, ((b"location", b"/"),))
            return
        if self.api_key is not None and not self.is_open(path):
            self._check_key(scope)
        if path == "/metrics":
            await self._metrics(method, send)
            return
        if method != "POST" or path not in self.api_paths:
            await self.app(scope, receive, send)
            return
        self._check_headers(scope)
        if self.active >= self.max_concurrency:
            raise _Refused(429, f"too many requests at once (at most {self.max_concurrency}); retry shortly")
        self.active += 1
        try:
            body = await self._read_body(receive)
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.active -= 1

    def _check_key(self, scope: Scope) -> None:
        header = _header(scope, b"authorization")
        scheme, _, token = (header or b"").strip().partition(b" ")
        if header is None or scheme.lower() != b"bearer":
            raise _Refused(401, "this API needs a key: send the header 'Authorization: Bearer <key>'", ((b"www-authenticate", b"Bearer"),))
        if not hmac.compare_digest(token.strip(), self.api_key):
            raise _Refused(401, "the API key is not valid", ((b"www-authenticate", b'Bearer error="invalid_token"'),))

    def _check_headers(self, scope: Scope) -> None:
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise _Refused(400, "the Content-Length header is not a number") from None
            if declared > self.max_body_bytes:
                raise _Refused(413, f"the request body has {declared:,} bytes; at most {self.max_body_bytes:,}")
        media_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower().decode("latin-1")
        if media_type in REFUSED_MEDIA_TYPES:
            raise _Refused(415, f"the body is {media_type}; send JSON (Content-Type: application/json)")

    async def _read_body(self, receive: Receive) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            wait = min(self.body_idle_timeout, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except asyncio.TimeoutError:
                raise _Refused(
                    408,
                    f"the request body did not arrive in time (no pause over {self.body_idle_timeout:g} s, "
                    f"all of it within {self.body_timeout:g} s)",
                ) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(413, f"the request body has more than {self.max_body_bytes:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _metrics(self, method: str, send: Send) -> None:
        import anyio
        from prometheus_client import CONTENT_TYPE_LATEST

        if method not in ("GET", "HEAD"):
            raise _Refused(405, f"{method} /metrics: use GET")
        text = await anyio.to_thread.run_sync(self.metrics.exposition)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})
        await send({"type": "http.response.body", "body": text})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then the client's own (for disconnects)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer(send: Send, status: int, body: dict | None, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    content = b"" if body is None else json.dumps(body).encode()
    kind = [] if body is None else [(b"content-type", b"application/json")]
    length = (b"content-length", str(len(content)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*kind, length, (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": content})
