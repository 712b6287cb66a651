"""Batch scoring: every customer, in chunks, written atomically.

Features are computed once for the whole population by DuckDB (RFM scores rank each
customer within the population, so they cannot be computed chunk by chunk) and written as
the *feature snapshot* beside the scores (``<scores stem>.features.parquet``; the online
service looks customers up in it). Scoring then streams the snapshot in chunks of rows,
so the Python side holds one chunk at a time, and appends each chunk's scores to a
temporary Parquet file that replaces the output only when every chunk is done.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.common.errors import CutoffError, InputError
from features.common.outputs import atomic_paths, read_stamp, stamp, stamped_table
from features.orders import OrderLog, parse_date
from features.timecut import on_or_before
from training.contract import REASON_CODES, SCORE_COLUMNS, SCORE_DTYPES
from training.model import RepurchaseModel

CHUNK_ROWS = 100_000


@dataclass
class ScoreRun:
    scores_path: Path
    snapshot_path: Path
    n_customers: int
    n_future_orders_ignored: int
    defaults_used: dict[str, object] = field(default_factory=dict)
    """Optional columns the model was trained with that the log lacks, and the default each took."""


def snapshot_path_for(scores_path: Path) -> Path:
    """Where the feature snapshot of a scores file lives."""
    scores_path = Path(scores_path)
    return scores_path.with_name(f"{scores_path.stem}.features.parquet")


def score_schema(explain: bool = False, uplift_columns=()) -> pa.Schema:
    """The score contract as an Arrow schema, plus the model's uplift columns (floats) when it
    has an uplift part, plus ``reason_codes`` when explained."""
    empty = pd.DataFrame({c: pd.Series(dtype=SCORE_DTYPES[c]) for c in SCORE_COLUMNS})
    for column in uplift_columns:
        empty[column] = pd.Series(dtype="float64")
    if explain:
        empty[REASON_CODES] = pd.Series(dtype="str")
    return pa.Schema.from_pandas(empty, preserve_index=False)


def add_reason_codes(frame: pd.DataFrame, model: RepurchaseModel, features: pd.DataFrame, rows=None) -> pd.DataFrame:
    """``frame`` with a ``reason_codes`` column (the model's top feature contributions) for ``rows``.

    ``rows`` is a boolean mask over ``frame`` (default: all); other rows get no reason codes.
    ``features`` is a feature snapshot with ``customer_id`` (e.g. the batch run's).
    """
    mask = np.ones(len(frame), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    codes = pd.Series(pd.NA, index=frame.index, dtype="str")
    if mask.any():
        wanted = frame.loc[mask, "customer_id"].astype(str).to_numpy()
        table = features.set_index(features["customer_id"].astype(str))
        codes[mask] = model.reason_codes(table.loc[wanted].reset_index(drop=True))
    return frame.assign(**{REASON_CODES: codes})


def score_log(
    model: RepurchaseModel,
    log: OrderLog,
    as_of: pd.Timestamp,
    out_path: Path,
    *,
    model_version: str = "",
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int, int], None] | None = None,
    explain: bool = False,
) -> ScoreRun:
    """Score every customer with an order on or before ``as_of``; later orders are ignored.

    ``progress(done, total)`` is called after each chunk. A model with an uplift part adds
    ``uplift`` and ``uplift_<action>`` after the contract's columns. With ``explain``, the scores gain
    a ``reason_codes`` column (:meth:`RepurchaseModel.reason_codes`). Optional columns the
    model was trained with but the log lacks take the contract's defaults
    (:meth:`RepurchaseModel.missing_inputs`) and are reported in ``defaults_used``.
    """
    as_of = parse_date(as_of, "as_of")
    if as_of < log.first_order_date:
        raise CutoffError(
            f"--as-of {as_of.date()} is before the first order in {log.source} ({log.first_order_date.date()})"
        )
    orders = log.orders
    before = on_or_before(orders["order_ts"], as_of)
    n_future = int((~before).sum())
    past = orders.loc[before] if n_future else orders
    features = model.point_in_time_features(past, as_of)
    out_path = Path(out_path)
    snapshot = snapshot_path_for(out_path)
    # Scores and snapshot are one output: both are written in full under temporary names
    # and renamed together, and both carry the same stamp, which readers compare.
    pair = {"pair": uuid.uuid4().hex, "as_of": as_of.date().isoformat(), "model_version": model_version}
    total = len(features)
    uplift_columns = model.score_columns()[len(SCORE_COLUMNS):]
    schema = score_schema(explain, uplift_columns).with_metadata(stamp("scores", **pair))
    with atomic_paths([snapshot, out_path]) as (snapshot_tmp, scores_tmp):
        pq.write_table(stamped_table(features.assign(as_of=as_of), "snapshot", **pair), snapshot_tmp)
        del features
        source = pq.ParquetFile(snapshot_tmp)
        with pq.ParquetWriter(scores_tmp, schema) as writer:
            done = 0
            for batch in source.iter_batches(batch_size=chunk_rows):
                chunk = batch.to_pandas()
                features = chunk.drop(columns=["as_of"])
                scores = model.score_features(features, as_of, model_version)
                if explain:
                    scores[REASON_CODES] = model.reason_codes(features)
                writer.write_table(pa.Table.from_pandas(scores, schema=schema, preserve_index=False))
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    return ScoreRun(out_path, snapshot, total, n_future, model.missing_inputs(orders.columns))


def check_pair(scores_path: Path, snapshot_path: Path) -> None:
    """Refuse scores and a snapshot that were not written together by one ``score`` run."""
    scores_stamp, snapshot_stamp = read_stamp(scores_path), read_stamp(snapshot_path)
    if scores_stamp is None or snapshot_stamp is None:
        return  # written by an earlier version: compared by as-of date by the caller
    if scores_stamp.get("pair") != snapshot_stamp.get("pair"):
        raise InputError(
            f"{snapshot_path} does not belong to {scores_path}: the snapshot is as of {snapshot_stamp.get('as_of')} "
            f"(model version {snapshot_stamp.get('model_version') or '-'}), the scores as of {scores_stamp.get('as_of')} "
            f"(model version {scores_stamp.get('model_version') or '-'}); rerun `repurchase score` to write both again"
        )


def read_scored(scores_path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Scores written by :func:`score_log` and their feature snapshot (None when there is none), checked to match."""
    scores = read_parquet_input(scores_path, "--scores")
    snapshot = snapshot_path_for(scores_path)
    if not snapshot.exists():
        return scores, None
    check_pair(Path(scores_path), snapshot)
    features = read_parquet_input(snapshot, "snapshot")
    if "as_of" in features.columns and "as_of" in scores.columns and len(scores) and len(features):
        a, b = pd.Timestamp(features["as_of"].iloc[0]), pd.Timestamp(scores["as_of"].iloc[0])
        if a.normalize() != b.normalize():
            raise InputError(
                f"{snapshot} is as of {a.date()} but {scores_path} as of {b.date()}: they are not one run; "
                "rerun `repurchase score` to write both again"
            )
    return scores, features


def read_parquet_input(path: Path, flag: str) -> pd.DataFrame:
    """A Parquet input (a file, or a folder of part files as Spark writes them), or one line naming
    the flag and the file when it cannot be read."""
    if not Path(path).exists():
        raise InputError(f"{flag} {path}: no such file")
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{flag} {path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
