"""Entry-point side of serving: start BentoML's server for ``repurchase serve`` and stop it.

Library modules (:mod:`serving.online`, :mod:`serving.service`) have no process handling
and no import side effects; what a process needs before it starts (the OpenMP wait policy,
the tracking URI, signal handlers) is set here and in :func:`serving.cli.main`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path

from features.common.errors import InputError


def passive_openmp_waits(env: MutableMapping[str, str] = os.environ) -> None:
    """Make OpenMP threads wait passively, unless the user chose a policy (``OMP_WAIT_POLICY``).

    LightGBM's OpenMP threads spin while they wait for each other. When anything else holds
    one of the cores (a test server, a second job), a spinning thread is descheduled and
    every boosting round stalls: measured, 740 ms instead of 28 ms a round with two threads
    on two busy cores. Passive waiting costs nothing on an idle machine. The runtime reads
    the variable when it loads, so an entry point sets it before LightGBM is imported (or
    in the environment of the process it starts).
    """
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def check_model(model_uri: str, tracking_uri: str | None = None) -> str:
    """Load the model once, so that a bad URI fails here with one line; returns its version."""
    from training.registry import configure_tracking, load_scorer

    configure_tracking(tracking_uri)
    _, version = load_scorer(model_uri)
    return version


def serve_command(model_uri: str, port: int, snapshot: Path | None, host: str = "127.0.0.1",
                  tiers: Path | None = None) -> None:
    """Run BentoML's server for :class:`serving.service.RepurchaseService` until Ctrl-C.

    Checks first that the model loads and the snapshot reads (an :class:`InputError` with
    one line if not), then runs ``bentoml serve serving.service:RepurchaseService`` with
    ``REPURCHASE_MODEL_URI``, ``REPURCHASE_SNAPSHOT``, ``REPURCHASE_TIERS`` (``tiers``, a
    member tiers YAML, checked here first) and ``MLFLOW_TRACKING_URI`` set,
    ``REPURCHASE_API_KEY`` passed on, BentoML's usage tracking off
    (``BENTOML_DO_NOT_TRACK=True``) and OpenMP waiting passively (:func:`passive_openmp_waits`). On Linux the server dies with this process, even when
    this one is killed with SIGKILL (:data:`_DIE_WITH_PARENT`).
    """
    from training.registry import tracking_uri

    if not 1 <= int(port) <= 65535:
        raise InputError(f"--port {port}: give a port between 1 and 65535")
    api_key = os.environ.get("REPURCHASE_API_KEY")
    if api_key is not None and not api_key.strip():
        raise InputError("REPURCHASE_API_KEY is set but empty: set it to the key clients must send, or unset it")
    if tiers is not None:
        from training.tiers import load_tiers

        tier_set = load_tiers(tiers)
        tiers_note = f"; member tiers {', '.join(tier_set.names)} from {tiers}"
    else:
        tiers_note = ""
    if snapshot is not None:
        from serving.online import Snapshot

        loaded = Snapshot.load(snapshot)
        snapshot_note = f"snapshot {snapshot}: {len(loaded):,} customers as of {loaded.as_of.date()}"
        del loaded
    else:
        snapshot_note = "no snapshot: POST /score answers customer histories only (ids need --snapshot)"
    version = check_model(model_uri)
    if snapshot is not None:
        from serving.online import check_snapshot_model

        check_snapshot_model(snapshot, version)
    env = dict(os.environ)
    env["REPURCHASE_MODEL_URI"] = model_uri
    env["BENTOML_DO_NOT_TRACK"] = "True"  # BentoML otherwise reports each serve to t.bentoml.com
    env["MLFLOW_TRACKING_URI"] = tracking_uri(absolute=True)  # the server runs in the project folder
    passive_openmp_waits(env)
    if snapshot is not None:
        env["REPURCHASE_SNAPSHOT"] = str(Path(snapshot).resolve())
    else:
        env.pop("REPURCHASE_SNAPSHOT", None)
    if tiers is not None:
        env["REPURCHASE_TIERS"] = str(Path(tiers).resolve())
    else:
        env.pop("REPURCHASE_TIERS", None)  # the shipped tiers, as `repurchase score` without --tiers
    project = Path(__file__).resolve().parent.parent
    command = [
        str(Path(sys.executable).with_name("bentoml")) if Path(sys.executable).with_name("bentoml").exists() else "bentoml",
        "serve",
        "serving.service:RepurchaseService",
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(project),
    ]
    if sys.platform.startswith("linux"):
        command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
    print(f"model {model_uri} (version {version or '-'}); {snapshot_note}{tiers_note}", flush=True)
    if api_key is not None:
        print("API key required on /score, /target and /metrics (REPURCHASE_API_KEY)", flush=True)
    elif host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: no API key and listening on {host}: anyone who reaches the port can score; set REPURCHASE_API_KEY", flush=True)
    print(
        f"serving on http://{host}:{port} (POST /score, POST /target, GET /healthz, GET /readyz, "
        f"API docs at / and /docs.json); Ctrl-C stops",
        flush=True,
    )
    # Same process group as ours: Ctrl-C in the terminal reaches the server too.
    process = subprocess.Popen(command, env=env)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stop_server(process)
        signal.signal(signal.SIGTERM, previous)
    if code not in (0, -signal.SIGINT, -signal.SIGTERM, 130, 143):
        raise InputError(f"the server stopped with exit code {code}; see its messages above")


# Run as `python -c _DIE_WITH_PARENT <launcher pid> bentoml serve ...`: asks Linux to send
# the server SIGTERM (BentoML then stops its workers and frees the port) when the launcher
# dies, by any signal, then becomes the server (exec keeps the pid and the death signal).
# Done in a fresh process rather than in Popen's preexec_fn, which is unsafe in a process
# with threads (the launcher has MLflow's). If the launcher died before prctl, exit at once.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_server(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a server process: SIGINT (BentoML shuts down cleanly), then SIGTERM, then SIGKILL; bounded waits."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            process.send_signal(sig)
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
