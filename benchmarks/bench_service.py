"""Online scoring speed: the real service against a do-nothing BentoML service, same run.

    python benchmarks/bench_service.py --snapshot out/quickstart/scores.features.parquet \
        [--tracking-uri sqlite:///mlruns/mlflow.db] [--model models:/repurchase@champion]

Starts both servers on 127.0.0.1 (free ports), waits for /readyz, then measures
single-customer latency by id and by history (sequential requests after warm-up; a
history has 5-20 orders over two years), and throughput with concurrent clients
(customers/s): batches of ids, and one-customer histories (which the service gathers
into batches). Prints ratios against the echo floor, and the load average before and
after: other work on the machine moves both columns, the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(target: str, port: int, env: dict, log: Path) -> subprocess.Popen:
    bentoml = Path(sys.executable).with_name("bentoml")
    return subprocess.Popen(
        [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    for sig, wait in ((2, 30), (15, 10), (9, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server at {base} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {base} not ready in {timeout:.0f} s")


def post(base: str, path: str, body: bytes) -> float:
    request = urllib.request.Request(f"{base}{path}", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - start


def latencies(base: str, bodies: list[bytes], warmup: int = 20) -> np.ndarray:
    for body in bodies[:warmup]:
        post(base, "/score", body)
    return np.array([post(base, "/score", body) for body in bodies]) * 1000


def throughput(base: str, bodies: list[bytes], per_request: int, threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: post(base, "/score", b), bodies))
    return len(bodies) * per_request / (time.perf_counter() - start)


def history_body(rng: random.Random, customer_id: str, as_of: str) -> bytes:
    """One customer with 5-20 orders on distinct days of the two years before ``as_of``."""
    end = pd.Timestamp(as_of)
    days = sorted(rng.sample(range(1, 730), rng.randint(5, 20)))
    orders = [{"order_ts": (end - pd.Timedelta(days=d)).date().isoformat(), "amount": round(rng.uniform(5, 120), 2)} for d in days]
    return json.dumps({"customers": [{"customer_id": customer_id, "orders": orders}], "as_of": as_of}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, default=ROOT / "out/quickstart/scores.features.parquet")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlruns/mlflow.db'}"))
    parser.add_argument("--model", default="models:/repurchase@champion")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--history-requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--batched-requests", type=int, default=400)
    args = parser.parse_args()

    snapshot = pd.read_parquet(args.snapshot, columns=["customer_id", "as_of"])
    ids = snapshot["customer_id"].astype(str).tolist()
    as_of = pd.Timestamp(snapshot["as_of"].iloc[0]).date().isoformat()
    rng = random.Random(0)
    by_id = [json.dumps({"customer_ids": [rng.choice(ids)]}).encode() for _ in range(args.requests)]
    history = [history_body(rng, f"h{i}", as_of) for i in range(args.history_requests)]
    batched = [json.dumps({"customer_ids": rng.sample(ids, args.batch)}).encode() for _ in range(args.batched_requests)]

    env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking_uri, "REPURCHASE_MODEL_URI": args.model,
           "REPURCHASE_SNAPSHOT": str(args.snapshot.resolve()), "PYTHONPATH": str(ROOT)}
    ports = {"echo": free_port(), "service": free_port()}
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    servers = {
        "echo": start("benchmarks.echo_service:EchoService", ports["echo"], env, logs / "bench_echo.log"),
        "service": start("serving.service:RepurchaseService", ports["service"], env, logs / "bench_service.log"),
    }
    try:
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        for name, process in servers.items():
            wait_ready(f"http://127.0.0.1:{ports[name]}", process)
        print(f"both servers ready after {time.perf_counter() - t0:.1f} s ({len(ids):,} customers in the snapshot)")
        echo, svc = (f"http://127.0.0.1:{ports[n]}" for n in ("echo", "service"))
        results = {}
        for name, base in (("echo", echo), ("service", svc)):
            results[name, "id"] = latencies(base, by_id)
            results[name, "history"] = latencies(base, history, warmup=5)
            results[name, "batched"] = throughput(base, batched, args.batch, args.threads)
            results[name, "concurrent"] = throughput(base, history, 1, args.threads)
        print(f"{'':28}{'echo':>10}{'service':>10}{'ratio':>8}")
        for kind in ("id", "history"):
            for q in (50, 99):
                e, s = (np.percentile(results[n, kind], q) for n in ("echo", "service"))
                print(f"{f'by {kind}: p{q} ms':28}{e:10.2f}{s:10.2f}{s / e:8.2f}")
        e, s = results["echo", "batched"], results["service", "batched"]
        print(f"{f'batched ({args.threads} threads x {args.batch} ids) cust/s':28}{e:10.0f}{s:10.0f}{s / e:8.2f}")
        e, s = results["echo", "concurrent"], results["service", "concurrent"]
        print(f"{f'histories ({args.threads} threads x 1) cust/s':28}{e:10.0f}{s:10.0f}{s / e:8.2f}")
        load_after = os.getloadavg()
        print(f"load average (1, 5, 15 min): before {' '.join(f'{x:.2f}' for x in load_before)}, "
              f"after {' '.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} cores")
    finally:
        for process in servers.values():
            stop(process)


if __name__ == "__main__":
    main()
