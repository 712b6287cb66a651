"""The HTTP API under abuse: API key, body limits, stalled clients, bounded metrics, docs, tracking, kill -9.

One real server (``repurchase serve``'s :func:`serving.launch.serve_command`, on loopback,
with an API key) serves the module; the last test kills its launcher with SIGKILL and
checks that the server goes with it. A few tests drive :class:`serving.guard.RequestGuard`
in-process.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from serving.guard import BODY_IDLE_TIMEOUT, MAX_CONCURRENCY, RequestGuard
from serving.online import MAX_BODY_BYTES

KEY = "test-key-" + "x" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json"}
HISTORY = json.dumps(
    {"customers": [{"customer_id": "c1", "orders": [{"order_ts": "2025-01-02", "amount": 9.5}]}], "as_of": "2025-06-30"}
).encode()


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) of one request on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _status(port: int, path: str, headers: dict | None = None) -> int:
    try:
        return _request(port, "GET", path, headers=headers, timeout=5)[0]
    except OSError:
        return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory, fitted_model, champion_store):
    """``repurchase serve`` on a registered model (no snapshot), with ``REPURCHASE_API_KEY`` set."""
    root = tmp_path_factory.mktemp("hardening")
    uri, _ = champion_store(root, fitted_model, {"cutoff": "2025-06-30", "horizon_days": 60, "model": {"auc": 0.7}})

    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BENTOML_", "REPURCHASE_"))}
    # A private BentoML home: BentoML empties its Prometheus folder at every start, so servers
    # of other test runs on this machine would otherwise share and wipe our metrics.
    env.update(MLFLOW_TRACKING_URI=uri, REPURCHASE_API_KEY=KEY, BENTOML_HOME=str(root / "bentoml"), PYTHONUNBUFFERED="1")
    code = f"from serving.launch import serve_command; serve_command('models:/repurchase@champion', {port}, None)"
    log_path = root / "server.log"
    log = open(log_path, "wb")
    launcher = subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parent.parent,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while _status(port, "/readyz") != 200:
            assert launcher.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "server not ready in 240 s"
            time.sleep(0.5)
        yield {"port": port, "launcher": launcher, "log": log_path}
    finally:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(launcher.pid, sig)  # the launcher's session: the server too, if it outlived it
            except ProcessLookupError:
                break
            try:
                launcher.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not [p for p in psutil.process_iter() if _in_group(p, launcher.pid)]:
                break
            time.sleep(1)
        log.close()


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, psutil.Error):
        return False


def _server_processes(server) -> tuple[psutil.Process, psutil.Process]:
    """BentoML's supervisor (``bentoml serve``) and its worker, below the launcher."""
    children = psutil.Process(server["launcher"].pid).children(recursive=True)
    arbiter = next(p for p in children if "serve" in p.cmdline() and "_bentoml_impl.worker.service" not in p.cmdline())
    worker = next(p for p in children if "_bentoml_impl.worker.service" in p.cmdline())
    return arbiter, worker


# --------------------------------------------------------------------------- API key


@pytest.mark.slow
def test_api_key_guards_the_api_and_metrics_not_the_probes_or_docs(server):
    port = server["port"]
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer wrong-key"}, 401),
        ({"Authorization": f"Basic {KEY}"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Bearer {KEY}x"}, 401),
        (AUTH, 200),
        ({"Authorization": f"bearer {KEY}"}, 200),
    ):
        for path in ("/score", "/target"):
            got, answer_headers, body = _request(port, "POST", path, HISTORY, {**JSON, **headers})
            assert got == status, (headers, path, body)
            if status == 401:
                assert list(json.loads(body)) == ["error"] and "\n" not in json.loads(body)["error"]
                assert answer_headers.get("www-authenticate", "").startswith("Bearer")
    for path in ("/healthz", "/livez", "/readyz", "/", "/docs.json"):
        assert _status(port, path) == 200, path
    import bentoml  # its own client sends the key as a bearer token

    with bentoml.SyncHTTPClient(f"http://127.0.0.1:{port}", token=KEY, timeout=30) as client:
        assert client.score(json.loads(HISTORY))["scores"][0]["customer_id"] == "c1"
    assert _status(port, "/metrics") == 401
    assert _status(port, "/metrics", AUTH) == 200


def test_the_key_is_compared_in_constant_time(monkeypatch):
    import hmac

    import serving.guard

    compared, compare = [], hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(serving.guard.hmac, "compare_digest", spy)
    statuses = [_drive(RequestGuard(_ok_app, api_key=KEY), headers=h) for h in (AUTH, {"Authorization": "Bearer nope"})]
    assert [s for s, _ in statuses] == [200, 401]
    assert compared == [(KEY.encode(), KEY.encode()), (b"nope", KEY.encode())]


# --------------------------------------------------------------------------- bodies and slow clients


@pytest.mark.slow
def test_a_declared_oversized_body_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
        s.sendall(
            f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100_000_000}\r\n\r\n".encode()
        )
        started = time.monotonic()
        answer = _read_answer(s)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5
    assert b"at most 20,000,000" in answer and b"connection: close" in answer.lower()


@pytest.mark.slow
def test_a_streamed_oversized_body_is_cut_off_and_memory_stays_flat(server):
    """100 MB sent chunked (no Content-Length): refused once past 20 MB, never buffered whole."""
    _, worker = _server_processes(server)
    before = worker.memory_info().rss
    sent, answer = 0, b""
    chunk = b"[" * 1_000_000
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as s:
        s.sendall(
            f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < 100_000_000:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            s.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection: what we want
            pass
        answer = _read_answer(s)
    grown = worker.memory_info().rss - before
    assert sent < 60_000_000, f"the server read {sent:,} bytes before refusing"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert grown < 50_000_000, f"worker RSS grew {grown / 1e6:.0f} MB"
    assert _request(server["port"], "POST", "/score", HISTORY, {**JSON, **AUTH})[0] == 200


@pytest.mark.slow
def test_stalled_clients_lose_their_slots_within_the_read_timeout(server):
    """64 clients send headers and one byte of a 100-byte body, then nothing: real requests get through again."""
    port = server["port"]
    started = time.monotonic()
    stalled = []
    try:
        for _ in range(MAX_CONCURRENCY):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(
                f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n{".encode()
            )
            stalled.append(s)
        # Every slot is taken once the server has seen all of them.
        status = 200
        while status != 429 and time.monotonic() - started < 5:
            status = _request(port, "POST", "/score", HISTORY, {**JSON, **AUTH})[0]
        assert status == 429, "the stalled clients did not fill the slots: the test proves nothing"
        while status != 200:
            assert time.monotonic() - started < BODY_IDLE_TIMEOUT + 10, "stalled clients still hold the slots"
            time.sleep(0.5)
            status = _request(port, "POST", "/score", HISTORY, {**JSON, **AUTH})[0]
        answers = [_read_answer(s) for s in stalled]
    finally:
        for s in stalled:
            s.close()
    assert time.monotonic() - started < BODY_IDLE_TIMEOUT + 10
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}


# --------------------------------------------------------------------------- metrics, odd requests, docs


@pytest.mark.slow
def test_metrics_do_not_grow_with_unknown_paths(server):
    port = server["port"]

    def metrics() -> bytes:
        status, _, body = _request(port, "GET", "/metrics", headers=AUTH)
        assert status == 200
        return body

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        statuses = set()
        for k in range(3001):
            if k == 1:
                before = metrics()
            connection.request("GET", f"/nope-{uuid.uuid4().hex}", headers=AUTH)
            response = connection.getresponse()
            response.read()
            statuses.add(response.status)
    finally:
        connection.close()
    after = metrics()
    assert statuses == {404}
    assert b"nope-" not in after
    assert len(after) - len(before) < 1_000, f"/metrics grew from {len(before):,} to {len(after):,} bytes"
    assert b'repurchase_http_requests_total{endpoint="other",status="404"} 3001.0' in after


ODD = [
    ("GET", "/score", {}, None, 405),
    ("POST", "/score", {"Content-Type": "multipart/form-data"}, b"garbage", 415),
    ("POST", "/score", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n\r\n--x--\r\n", 415),
    ("POST", "/score", {"Content-Type": "application/x-www-form-urlencoded"}, b"customer_ids=a", 415),
    ("POST", "/score", {"Content-Type": "application/vnd.bentoml+pickle"}, b"\x80\x04K\x01.", 415),
    ("POST", "/target", JSON, b"\xff\xfe{", 400),
    ("POST", "/target", JSON, b"[" * 100_000, 400),
    ("POST", "/score", JSON, b"", 400),
]


@pytest.mark.slow
def test_odd_requests_get_a_4xx_with_one_line_never_a_500(server):
    for method, path, headers, body, status in ODD:
        got, _, answer = _request(server["port"], method, path, body, {**headers, **AUTH})
        assert got == status, (method, path, headers, answer[:200])
        assert b"Traceback" not in answer
        if got != 405:  # Starlette's own plain-text "Method Not Allowed"
            error = json.loads(answer)["error"]
            assert error and "\n" not in error


@pytest.mark.slow
def test_docs_are_where_the_readme_says(server):
    port = server["port"]
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    serving = readme.split("## Serving", 1)[1].split("\n## ", 1)[0]
    assert "Swagger UI at `/`" in serving and "`/docs.json`" in serving
    status, headers, body = _request(port, "GET", "/")
    assert status == 200 and b"swagger-ui" in body
    # BentoML's page embeds Google Tag Manager; the policy keeps inline scripts from running.
    policy = headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy.split("script-src", 1)[1].split(";")[0]
    status, _, body = _request(port, "GET", "/docs.json")
    assert status == 200 and {"/score", "/target"} <= set(json.loads(body)["paths"])
    status, headers, _ = _request(port, "GET", "/docs")
    assert status in (301, 302, 307, 308) and headers["location"] == "/"


# --------------------------------------------------------------------------- the server process


@pytest.mark.slow
def test_usage_tracking_is_off_in_the_server(server):
    for process in _server_processes(server):
        assert process.environ().get("BENTOML_DO_NOT_TRACK") == "True", process.cmdline()


@pytest.mark.slow
def test_kill_9_of_the_launcher_takes_the_server_down(server):
    """Runs last: it ends the module's server."""
    port = server["port"]
    processes = [*_server_processes(server), *psutil.Process(server["launcher"].pid).children(recursive=True)]
    server["launcher"].send_signal(signal.SIGKILL)
    server["launcher"].wait(timeout=10)
    started = time.monotonic()
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"still running 30 s after the launcher was killed: {[p.cmdline()[:3] for p in alive]}"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert time.monotonic() - started < 30


# --------------------------------------------------------------------------- helpers


def _read_answer(s: socket.socket, timeout: float = 20) -> bytes:
    """What the server answers on a socket until it closes (b"" if it only reset the connection)."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            part = s.recv(65536)
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    break
    except (ConnectionResetError, socket.timeout):
        pass
    return data


async def _ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _drive(guard: RequestGuard, method: str = "POST", path: str = "/score", headers: dict | None = None, body: bytes = b"{}"):
    """(status, body) of one request through the guard, in-process."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_blank_api_key_is_refused_before_the_server_starts(monkeypatch):
    from features.common.errors import InputError
    from serving.launch import serve_command

    monkeypatch.setenv("REPURCHASE_API_KEY", "  ")
    with pytest.raises(InputError, match="REPURCHASE_API_KEY is set but empty"):
        serve_command("models:/nothing@here", _free_port(), None)


def test_every_path_that_is_not_a_route_is_one_metrics_label():
    guard = RequestGuard(_ok_app, api_key="")
    for path in ("/score", "/target", "/healthz", "/readyz", "/livez", "/metrics", "/", "/docs", "/docs.json"):
        assert guard.endpoint(path) == path
    assert guard.endpoint("/static_content/swagger-ui.css") == "/static_content"
    assert {guard.endpoint(p) for p in ("/x", "/score/", "/score/x", "//score", "/SCORE", "/metrics2", "")} == {"other"}


def test_the_body_limit_counts_streamed_bytes_in_process():
    guard = RequestGuard(_ok_app, api_key="", max_body_bytes=10)
    assert _drive(guard, body=b"x" * 10)[0] == 200
    status, body = _drive(guard, body=b"x" * 11)
    assert status == 413 and b"more than 10 bytes" in body
    status, body = _drive(guard, headers={"Content-Length": str(MAX_BODY_BYTES + 1)}, body=b"")
    assert status == 413
