"""Outputs lose nothing: paths that never delete, commits that are all or nothing, kills that leave
the previous outputs and the registry usable, one champion under concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from features.common.errors import InputError
from features.common.outputs import (
    OWNER_MARK,
    atomic_path,
    atomic_paths,
    check_output_path,
    read_stamp,
    temporary_name,
    write_parquet,
)

REPURCHASE = str(Path(sys.executable).with_name("repurchase"))


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (the state a command must not change)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[str(path.relative_to(folder)) + "/"] = ""
    return out


def run(args, cwd, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([REPURCHASE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def one_error_line(proc) -> str:
    """The one stderr line of a refused command (a subprocess or a CliRunner result)."""
    code = proc.returncode if hasattr(proc, "returncode") else proc.exit_code
    assert code == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def invoke(args, cwd, monkeypatch):
    """The CLI in this process (as a subprocess would run it, minus the start-up cost)."""
    from typer.testing import CliRunner

    from serving.cli import app

    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, args)


@pytest.fixture()
def user_folder(tmp_path):
    """A folder with a user's files and subfolders, as `cd somewhere` finds it."""
    home = tmp_path / "work"
    (home / "sub").mkdir(parents=True)
    (home / "notes.txt").write_text("my notes\n")
    (home / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return home


# --------------------------------------------------------------------------- paths that are refused


@pytest.mark.parametrize(
    "out, message",
    [
        (".", "current, root or home folder"),
        ("", "current, root or home folder"),
        ("sub", "is a folder"),
        ("notes.txt", "was not written by repurchase"),
        ("/dev/null", "under /dev"),
        ("/proc/self/repurchase.parquet", "under /proc"),
        ("notes.txt/x.parquet", "is a file, not a folder"),
    ],
)
def test_synth_refuses_outputs_that_are_not_its_own_and_changes_nothing(user_folder, out, message, monkeypatch):
    before = tree(user_folder)
    null_before = os.stat("/dev/null")
    proc = invoke(["synth", "--customers", "10", "--out", out], user_folder, monkeypatch)
    assert message in one_error_line(proc)
    assert tree(user_folder) == before
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_rdev) == (null_before.st_mode, null_before.st_rdev)


def test_target_refuses_the_current_folder_and_a_folder_it_did_not_write(user_folder, tmp_path, monkeypatch):
    scores = tmp_path / "scores.parquet"
    write_parquet(pd.DataFrame({"customer_id": ["a"]}), scores, kind="scores")
    before = tree(user_folder)
    for out in (".", "", "sub"):
        proc = invoke(["target", "--scores", str(scores), "--out", out], user_folder, monkeypatch)
        assert "repurchase did not write" in one_error_line(proc) or "current, root or home" in proc.stderr
    assert tree(user_folder) == before


def test_check_output_path_refuses_a_fifo_and_a_broken_link(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="device, pipe or socket"):
        check_output_path(fifo)
    link = tmp_path / "link.parquet"
    link.symlink_to(tmp_path / "missing" / "x.parquet")
    with pytest.raises(InputError, match="broken link"):
        check_output_path(link)


def test_outputs_written_before_are_replaced_and_foreign_parquet_is_not(tmp_path):
    target = tmp_path / "features.parquet"
    write_parquet(pd.DataFrame({"x": [1]}), target, kind="features")
    write_parquet(pd.DataFrame({"x": [2]}), target, kind="features")
    assert pd.read_parquet(target)["x"].tolist() == [2]
    assert read_stamp(target)["kind"] == "features"
    foreign = tmp_path / "orders.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(foreign)
    with pytest.raises(InputError, match="not written by repurchase"):
        write_parquet(pd.DataFrame({"x": [2]}), foreign)
    assert pd.read_parquet(foreign)["x"].tolist() == [1]


# --------------------------------------------------------------------------- folders the tool owns


def test_an_owned_folder_keeps_what_the_user_added_and_drops_what_the_tool_wrote_before(tmp_path):
    out = tmp_path / "audiences"
    with atomic_path(out, folder=True) as tmp:
        tmp.mkdir()
        (tmp / "win_back.csv").write_text("old\n")
        (tmp / "summary.csv").write_text("old\n")
    (out / "my_notes.txt").write_text("keep me\n")
    (out / "mine").mkdir()
    (out / "mine" / "x.txt").write_text("keep me too\n")
    with atomic_path(out, folder=True) as tmp:
        tmp.mkdir()
        (tmp / "vip_care.csv").write_text("new\n")
        (tmp / "summary.csv").write_text("new\n")
    names = {p.name for p in out.iterdir()}
    assert names == {"vip_care.csv", "summary.csv", "my_notes.txt", "mine", OWNER_MARK}
    assert (out / "my_notes.txt").read_text() == "keep me\n"
    assert (out / "mine" / "x.txt").read_text() == "keep me too\n"
    assert (out / "summary.csv").read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["audiences"]  # nothing temporary left


def test_a_failed_folder_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "audiences"
    with atomic_path(out, folder=True) as tmp:
        tmp.mkdir()
        (tmp / "summary.csv").write_text("old\n")
    before = tree(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_path(out, folder=True) as tmp:
            tmp.mkdir()
            (tmp / "summary.csv").write_text("new\n")
            raise RuntimeError("disk full")
    assert tree(tmp_path) == before


def test_quickstart_refuses_a_folder_it_does_not_own(user_folder, monkeypatch):
    before = tree(user_folder)
    proc = invoke(["quickstart", "--out", "sub"], user_folder, monkeypatch)
    assert "repurchase did not write" in one_error_line(proc)
    assert tree(user_folder) == before


# --------------------------------------------------------------------------- temporaries and commits


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_a_killed_run_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
    target = tmp_path / "scores.parquet"
    stale = tmp_path / f".scores.parquet.{dead_pid()}-0123abcd.tmp"
    stale.write_text("half written")
    live = temporary_name(target)  # this process: still running
    live.write_text("being written")
    write_parquet(pd.DataFrame({"x": [1]}), target)
    assert not stale.exists()
    assert live.exists()


def test_a_commit_interrupted_between_its_renames_is_finished_by_the_next_write(tmp_path):
    first, second = tmp_path / "scores.features.parquet", tmp_path / "scores.parquet"
    pid = dead_pid()
    tmps = [tmp_path / f".{p.name}.{pid}-0000000{i}.tmp" for i, p in enumerate((first, second))]
    for tmp in tmps:
        write_parquet(pd.DataFrame({"x": [7]}), tmp.with_name(tmp.name.lstrip(".") + ".parquet"))
        os.rename(tmp.with_name(tmp.name.lstrip(".") + ".parquet"), tmp)
    os.replace(tmps[0], first)  # the kill came after the first rename
    journal = tmp_path / f".{first.name}.{pid}-00000009.commit"
    journal.write_text(json.dumps([[str(tmps[0]), str(first)], [str(tmps[1]), str(second)]]))
    with atomic_paths([first, second]) as (a, b):
        assert second.exists()  # rolled forward before anything new is written
        assert not journal.exists()
        write_parquet(pd.DataFrame({"x": [8]}), a.with_suffix(".x"))
        os.rename(a.with_suffix(".x"), a)
        write_parquet(pd.DataFrame({"x": [8]}), b.with_suffix(".x"))
        os.rename(b.with_suffix(".x"), b)
    assert pd.read_parquet(second)["x"].tolist() == [8]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])


# --------------------------------------------------------------------------- the CLI, killed at any moment


@pytest.fixture(scope="module")
def scored_shop(tmp_path_factory, fitted_model, synth_orders, champion_store):
    """A registered champion, a log, and a first complete `score` + `target` run."""
    root = tmp_path_factory.mktemp("shop")
    report = {"cutoff": "2025-03-31", "horizon_days": 60, "n_customers": 1, "model": {"auc": 0.8, "brier": 0.1}}
    uri, _ = champion_store(root, fitted_model, report, example_features=None)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    orders = root / "orders.parquet"
    synth_orders.to_parquet(orders)
    out = root / "out"
    first = run(["score", "--orders", str(orders), "--as-of", "2025-06-30", "--out", str(out / "scores.parquet")], root, env)
    assert first.returncode == 0, first.stderr
    done = run(["target", "--scores", str(out / "scores.parquet"), "--out", str(out / "audiences")], root, env)
    assert done.returncode == 0, done.stderr
    return root, orders, out, env


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old", ".commit"))]


@pytest.mark.slow
def test_kill_9_at_any_moment_of_score_leaves_the_previous_pair(scored_shop):
    from serving.batch import read_scored

    root, orders, out, env = scored_shop
    before = tree(out)
    args = ["score", "--orders", str(orders), "--as-of", "2025-05-31", "--out", str(out / "scores.parquet")]
    moments = {
        "snapshot being written": lambda: any(p.name.startswith(".scores.features") for p in out.iterdir()),
        "scores being written": lambda: any(p.name.startswith(".scores.parquet.") for p in out.iterdir()),
    }
    for moment, ready in moments.items():
        proc = subprocess.Popen([REPURCHASE, *args], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert kill_when(proc, ready), f"score ended before the moment '{moment}'"
        visible = {k: v for k, v in tree(out).items() if not Path(k).name.startswith(".")}
        assert visible == {k: v for k, v in before.items() if not Path(k).name.startswith(".")}, moment
        scores, features = read_scored(out / "scores.parquet")  # still a matching pair
        assert scores["as_of"].iloc[0] == pd.Timestamp("2025-06-30")
    # the next run cleans what the kills left and commits a new pair
    done = run(args, root, env)
    assert done.returncode == 0, done.stderr
    assert temporaries(out) == []
    assert read_stamp(out / "scores.parquet")["pair"] == read_stamp(out / "scores.features.parquet")["pair"]
    target = run(["target", "--scores", str(out / "scores.parquet"), "--out", str(out / "audiences")], root, env)
    assert target.returncode == 0, target.stderr


@pytest.mark.slow
def test_kill_9_of_target_leaves_the_previous_audiences(scored_shop):
    root, _, out, env = scored_shop
    audiences = out / "audiences"
    before = tree(audiences)
    proc = subprocess.Popen(
        [REPURCHASE, "target", "--scores", str(out / "scores.parquet"), "--out", str(audiences)],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    assert kill_when(proc, lambda: any(p.name.startswith(".audiences.") for p in out.iterdir()))
    assert tree(audiences) == before
    done = run(["target", "--scores", str(out / "scores.parquet"), "--out", str(audiences)], root, env)
    assert done.returncode == 0, done.stderr
    assert temporaries(out) == []


def test_target_refuses_scores_and_a_snapshot_from_different_runs(tmp_path, monkeypatch):
    scores = pd.DataFrame({"customer_id": ["a"], "as_of": [pd.Timestamp("2025-06-30")]})
    write_parquet(scores, tmp_path / "scores.parquet", kind="scores", pair="1", as_of="2025-06-30", model_version="3")
    write_parquet(scores.assign(as_of=pd.Timestamp("2025-07-31")), tmp_path / "scores.features.parquet",
                  kind="snapshot", pair="2", as_of="2025-07-31", model_version="3")
    proc = invoke(["target", "--scores", "scores.parquet", "--out", "audiences"], tmp_path, monkeypatch)
    assert "does not belong to" in one_error_line(proc)
    assert not (tmp_path / "audiences").exists()


# --------------------------------------------------------------------------- the registry


def _first_use(uri: str, barrier) -> None:
    from training.registry import configure_tracking

    barrier.wait()
    configure_tracking(uri)


def test_two_first_uses_of_a_new_store_do_not_collide(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    procs = [context.Process(target=_first_use, args=(uri, barrier)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]


def _register(uri: str, model_path: str, barrier, results) -> None:
    import pickle

    from training.registry import configure_tracking, log_run

    configure_tracking(uri)
    with open(model_path, "rb") as handle:
        model = pickle.load(handle)
    report = {"cutoff": "2025-03-31", "horizon_days": 60, "n_customers": 1, "model": {"auc": 0.8, "brier": 0.1}}
    barrier.wait()
    logged = log_run(model, report, params={}, register=True)
    results.put((logged.version, logged.alias))


@pytest.mark.slow
def test_concurrent_registrations_leave_exactly_one_champion(tmp_path, fitted_model):
    import pickle

    import mlflow

    from training.registry import CHAMPION, REGISTERED_MODEL, configure_tracking

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    model_path = tmp_path / "model.pkl"
    model_path.write_bytes(pickle.dumps(fitted_model))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_register, args=(uri, str(model_path), barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    said = sorted(results.get(timeout=5) for _ in procs)
    assert sorted(alias for _, alias in said) == ["challenger", "champion"]
    configure_tracking(uri)
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version
    assert [v for v, a in said if a == "champion"] == [str(champion)]
    for version, _ in said:  # every version holds the alias it announced
        assert client.get_model_version(REGISTERED_MODEL, version).aliases
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_kill_9_of_train_register_leaves_the_registry_usable_and_its_run_ended(scored_shop, synth_orders):
    import mlflow

    from training.registry import EXPERIMENT, configure_tracking, load_scorer

    root, _, _, env = scored_shop
    small = root / "small.parquet"
    keep = synth_orders["customer_id"].drop_duplicates().iloc[:800]
    synth_orders[synth_orders["customer_id"].isin(keep)].to_parquet(small)
    uri = env["MLFLOW_TRACKING_URI"]
    configure_tracking(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    known = {r.info.run_id for r in client.search_runs([experiment])}
    proc = subprocess.Popen(
        [REPURCHASE, "train", "--orders", str(small), "--cutoff", "2025-06-30", "--register"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    started = lambda: any(r.info.run_id not in known for r in client.search_runs([experiment]))  # noqa: E731
    assert kill_when(proc, started, timeout=240)
    configure_tracking(uri)  # the next command ends the killed run
    statuses = {r.info.run_id: r.info.status for r in client.search_runs([experiment]) if r.info.run_id not in known}
    assert set(statuses.values()) == {"KILLED"}
    model, version = load_scorer()  # the registry still serves its champion
    assert version and model.spec_ is not None
    mlflow.set_tracking_uri(None)


def test_serve_refuses_a_snapshot_written_with_another_model_version(tmp_path):
    from serving.online import check_snapshot_model

    snapshot = tmp_path / "scores.features.parquet"
    write_parquet(pd.DataFrame({"customer_id": ["a"]}), snapshot, kind="snapshot", pair="1", model_version="3")
    check_snapshot_model(snapshot, "3")
    check_snapshot_model(snapshot, "")  # an unregistered model URI: nothing to compare
    with pytest.raises(InputError, match="written with model version 3, but version 4 is served"):
        check_snapshot_model(snapshot, "4")
