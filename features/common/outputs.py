"""Writing outputs so that nothing is lost (shared by every layer).

The rules (``DESIGN.md``, "Outputs lose nothing"):

* An output path names one file, or for ``target`` and ``quickstart`` one folder the tool
  owns. ``.``, an empty path, the current folder, a folder where a file is expected, a
  device, a FIFO, anything under ``/proc``, ``/sys`` or ``/dev`` are refused with an
  :class:`~features.common.errors.InputError` (exit 2) before anything is written.
* A command replaces only its own previous output. Files are recognised by their content
  (Parquet written here carries a ``repurchase`` stamp in its key-value metadata; the
  backtest and measure JSON, the report and the plots by their shape); a folder by the marker file
  :data:`OWNER_MARK`, which lists the names the tool wrote. Anything else is refused, and
  files a user added to an owned folder are kept when the folder is replaced.
* Everything is written under a hidden temporary name in the target's folder
  (``.NAME.<pid>-<random>.tmp``) and renamed onto the target only when complete; a failure
  removes the temporary. Temporaries left by a killed run (their process is gone) are
  removed by the next write beside them.
* Outputs that belong together (scores and their feature snapshot) are committed together
  by :func:`atomic_paths`: both are complete before either is renamed, and a commit journal
  lets the next run finish a commit that a kill interrupted between the renames; readers
  check the pair's stamps (:func:`read_stamp`) and refuse a pair that does not match.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from features.common.errors import InputError

OWNER_MARK = ".repurchase-output"
STAMP_KEY = b"repurchase"
FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?:tmp|old)$")
_JOURNAL_SUFFIX = ".commit"


# --------------------------------------------------------------------------- where outputs may go


def check_output_path(target: str | os.PathLike, *, folder: bool = False) -> Path:
    """The output path as a :class:`~pathlib.Path`, or :class:`InputError` when it must not be written.

    ``folder`` says whether the command writes a folder (``target``, ``quickstart``, Spark
    outputs) or one file.
    """
    raw = os.fspath(target)
    if raw.strip() == "":
        raise InputError("output path is empty; give a file or folder name such as out/scores.parquet")
    path = Path(raw)
    resolved = path.resolve()
    if any(resolved == root or root in resolved.parents for root in FORBIDDEN_ROOTS):
        raise InputError(f"output '{raw}': is under {resolved.parts[0]}{resolved.parts[1]}, which is not a place for outputs")
    if resolved == Path.cwd().resolve() or resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise InputError(
            f"output '{raw}': is the current, root or home folder; name a new file or folder inside it"
        )
    if path.is_symlink() and not path.exists():
        raise InputError(f"output '{raw}': is a broken link")
    parent = resolved.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"output '{raw}': '{parent}' is a file, not a folder")
    if not path.exists():
        return path
    mode = os.stat(path).st_mode
    if folder:
        if not stat.S_ISDIR(mode):
            raise InputError(f"output '{raw}': is a file; give a folder (new, or one repurchase wrote before)")
        if not folder_is_ours(path):
            raise InputError(
                f"output '{raw}': is a folder repurchase did not write (it has other files); "
                "give a new or empty folder, or one repurchase wrote before"
            )
        return path
    if stat.S_ISDIR(mode):
        raise InputError(f"output '{raw}': is a folder; give a file path such as {Path(raw) / 'out.parquet'}")
    if not stat.S_ISREG(mode):
        raise InputError(f"output '{raw}': is a device, pipe or socket, not a file; give a file path")
    if not file_is_ours(path):
        raise InputError(
            f"output '{raw}': exists and was not written by repurchase; remove it yourself or choose another path"
        )
    return path


# --------------------------------------------------------------------------- what is ours


def _kind(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def read_stamp(path: str | os.PathLike) -> dict | None:
    """The ``repurchase`` stamp of a Parquet file written here (None when it has none or is no Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (pa.ArrowException, OSError):
        return None
    if STAMP_KEY not in metadata:
        return None
    try:
        return json.loads(metadata[STAMP_KEY])
    except ValueError:
        return None


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(n)


def file_is_ours(path: Path) -> bool:
    """Whether ``path`` is a file this tool wrote (by content; see the module docs), or listed by its owned folder."""
    path = Path(path)
    if path.stat().st_size == 0:
        return True
    marker = path.parent / OWNER_MARK
    if marker.exists() and path.name in _manifest(path.parent):
        return True
    head = _head(path)
    if head.startswith(b"PAR1"):
        return read_stamp(path) is not None
    if head.startswith(b"\x89PNG"):
        return b"matplotlib" in head[:512]
    if head.lstrip().startswith(b"{"):
        try:
            report = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(report, dict) and (
            ("cutoff" in report and "horizon_days" in report)  # backtest
            or ("window_days" in report and "actions" in report and "overall" in report)  # measure
        )
    text = head.decode("utf-8", "ignore")
    return '<meta name="generator" content="repurchase' in text or "<title>Repurchase report" in text


def _manifest(folder: Path) -> list[str]:
    try:
        names = json.loads((folder / OWNER_MARK).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in names if isinstance(n, str)]


def folder_is_ours(folder: Path) -> bool:
    """An empty folder, one with the owner mark, or an output folder of an earlier version (Spark's
    ``_SUCCESS`` + part files, or audiences: CSV files with ``summary.csv``)."""
    entries = [e for e in os.listdir(folder) if not _TMP.match(e)]
    if not entries or OWNER_MARK in entries:
        return True
    names = set(entries)
    if "_SUCCESS" in names and all(
        n.startswith(("part-", "_", ".part-")) or ("=" in n and (folder / n).is_dir()) for n in names
    ):
        return True
    return "summary.csv" in names and all(n.endswith(".csv") for n in names)


def mark_folder(folder: Path, names: Sequence[str], *, add: bool = False) -> None:
    """Write the owner mark of ``folder``, listing ``names`` (added to the listed ones with ``add``)."""
    folder = Path(folder)
    listed = _manifest(folder) if add else []
    files = sorted(set(listed) | {str(n) for n in names})
    (folder / OWNER_MARK).write_text(json.dumps({"writer": "repurchase", "files": files}) + "\n")


def claim_folder(target: str | os.PathLike) -> Path:
    """Make ``target`` a folder this tool owns (create it, or check an existing one is ours); for
    commands that write several outputs into one folder one by one (quickstart)."""
    folder = check_output_path(target, folder=True)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / OWNER_MARK).exists():
        mark_folder(folder, [e for e in os.listdir(folder) if not _TMP.match(e)])
    return folder


# --------------------------------------------------------------------------- temporaries


def temporary_name(target: Path, suffix: str = "tmp") -> Path:
    """A hidden name beside ``target`` that names this process (so a later run knows it is stale)."""
    return target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.{suffix}"


def process_alive(pid: int) -> bool:
    """Whether a process of this machine is still running (this one always is)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(target: Path) -> None:
    """Finish an interrupted commit journal for ``target``, then remove temporaries of dead processes beside it."""
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        return
    for entry in os.listdir(parent):
        if entry.endswith(_JOURNAL_SUFFIX) and entry.startswith("."):
            _replay_journal(parent / entry)
    for entry in os.listdir(parent):
        match = _TMP.match(entry)
        if match and match["name"] == target.name and not process_alive(int(match["pid"])):
            _remove(parent / entry)


def _replay_journal(journal: Path) -> None:
    """Roll a commit forward: every temporary still present was complete when the journal was written."""
    try:
        moves = json.loads(journal.read_text())
    except (OSError, ValueError):
        moves = []
    match = re.search(r"\.(\d+)-[0-9a-f]{8}\.commit$", journal.name)
    if match and process_alive(int(match.group(1))):
        return
    for tmp, target in moves:
        if Path(tmp).exists():
            os.replace(tmp, target)
    journal.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


# --------------------------------------------------------------------------- commits


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def _carry_over(old: Path, new: Path) -> None:
    """Keep what a user added to an owned folder: link every entry not in the old manifest into ``new``.

    A folder of an earlier version (no owner mark) was all the tool's."""
    if not (old / OWNER_MARK).exists():
        return
    ours = set(_manifest(old)) | {OWNER_MARK}
    for entry in os.listdir(old):
        if entry in ours or _TMP.match(entry):
            continue
        if (new / entry).exists():
            raise InputError(
                f"output '{old}': '{entry}' was not written by repurchase and the new output has the same name; move it away"
            )
        source = old / entry
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, new / entry, symlinks=True, copy_function=os.link)
        else:
            os.link(source, new / entry, follow_symlinks=False)


def commit_folder(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target`` (checked by :func:`check_output_path`), keeping what a
    user added to the old one; the swap is atomic where the kernel can exchange two paths."""
    mark_folder(tmp, [e for e in os.listdir(tmp) if e != OWNER_MARK])
    if not target.exists():
        os.rename(tmp, target)
        return
    if not any(True for _ in os.scandir(target)):
        os.rmdir(target)
        os.rename(tmp, target)
        return
    _carry_over(target, tmp)
    if _exchange(tmp, target):
        shutil.rmtree(tmp)
        return
    old = temporary_name(target, "old")
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_paths(targets: Sequence[str | os.PathLike], *, folder: bool = False) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``targets``; move them onto the targets only when the block succeeds.

    Files (or, with ``folder``, folders the caller creates at the yielded paths). Several
    targets are committed together: all are complete before the first rename, and a journal
    beside the first target lets the next write finish the renames if a kill interrupts them.
    """
    paths = [check_output_path(t, folder=folder) for t in targets]
    for path in paths:
        parent = path.parent if str(path.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"output '{path}': cannot create its folder ({exc.strerror})") from None
        clean_stale(path)
    tmps = [temporary_name(p) for p in paths]
    try:
        yield tmps
        if folder:
            for tmp, path in zip(tmps, paths):
                commit_folder(tmp, path)
        elif len(paths) == 1:
            os.replace(tmps[0], paths[0])
        else:
            for tmp in tmps:
                _fsync(tmp)
            journal = temporary_name(paths[0], _JOURNAL_SUFFIX.lstrip("."))
            journal.write_text(json.dumps([[str(t), str(p)] for t, p in zip(tmps, paths)]))
            _fsync(journal)
            for tmp, path in zip(tmps, paths):
                os.replace(tmp, path)
            journal.unlink()
    except PermissionError as exc:
        raise InputError(f"output '{paths[0]}': permission denied ({exc.filename})") from None
    finally:
        for tmp in tmps:
            _remove(tmp)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only on success (see :func:`atomic_paths`)."""
    with atomic_paths([target], folder=folder) as (tmp,):
        yield tmp


# --------------------------------------------------------------------------- Parquet


def stamped_table(frame: pd.DataFrame, kind: str, **info):
    """``frame`` as an Arrow table carrying the ``repurchase`` stamp (kind and ``info``) in its metadata."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **stamp(kind, **info)})


def stamp(kind: str, **info) -> dict[bytes, bytes]:
    """The key-value metadata that marks a Parquet file as this tool's output."""
    return {STAMP_KEY: json.dumps({"kind": kind, **{k: str(v) for k, v in info.items()}}).encode()}


def write_parquet(frame: pd.DataFrame, target: str | os.PathLike, *, kind: str = "table", **info) -> Path:
    """Write ``frame`` to Parquet atomically (temporary file, then rename), stamped as this tool's output."""
    import pyarrow.parquet as pq

    table = stamped_table(frame, kind, **info)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return Path(target)
