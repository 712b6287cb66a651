"""Movement since the previous run: lifecycle-stage and RFM-segment transitions.

``repurchase target --previous OLD_SCORES.parquet`` joins each customer's
``lifecycle_stage`` and ``rfm_segment`` of the previous run by ``customer_id`` as
``previous_lifecycle_stage`` and ``previous_rfm_segment``, which rule conditions can use
("moved from active to at_risk": ``previous_lifecycle_stage == 'active' and
lifecycle_stage == 'at_risk'``). Customers who had no row then read ``acquired_since``
(not ``new``, a lifecycle stage they may have had then); without ``--previous`` every customer reads ``unknown``, so rules that name the
columns still run. The transitions are counted as matrices (previous -> current), written
as ``transitions.json`` beside the audiences and shown in the report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.common.errors import InputError

PREVIOUS_COLUMNS = {"lifecycle_stage": "previous_lifecycle_stage", "rfm_segment": "previous_rfm_segment"}
# Not "new": that is a lifecycle stage the customer may have had at the previous run.
NEW = "acquired_since"
UNKNOWN = "unknown"


def read_previous(path: Path) -> pd.DataFrame:
    """The previous run's scores (``customer_id``, ``as_of``, ``lifecycle_stage``, ``rfm_segment``), checked."""
    from serving.batch import read_parquet_input

    frame = read_parquet_input(path, "--previous")
    missing = [c for c in ("customer_id", *PREVIOUS_COLUMNS) if c not in frame.columns]
    if missing:
        raise InputError(f"--previous {path}: missing column(s) {', '.join(missing)}; give a scores file from `repurchase score`")
    ids = frame["customer_id"].astype(str)
    if ids.duplicated().any():
        raise InputError(f"--previous {path}: customer_id '{ids[ids.duplicated()].iloc[0]}' has more than one row")
    return frame


def check_order(previous: pd.DataFrame, scores: pd.DataFrame, path: Path) -> None:
    """Refuse a previous run that is not earlier than the scores (a swapped pair reads as movement backwards)."""
    if "as_of" not in previous.columns or "as_of" not in scores.columns or previous.empty or scores.empty:
        return
    before, now = pd.Timestamp(previous["as_of"].iloc[0]), pd.Timestamp(scores["as_of"].iloc[0])
    if before >= now:
        raise InputError(f"--previous {path}: is as of {before.date()}, not before the scores ({now.date()}); "
                         "give the scores of an earlier run")


def add_previous(frame: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with ``previous_lifecycle_stage`` and ``previous_rfm_segment`` (``acquired_since`` for customers
    without a previous row, ``unknown`` for everyone when there is no previous run)."""
    out = frame.copy()
    if previous is None:
        for column in PREVIOUS_COLUMNS.values():
            out[column] = pd.Series(UNKNOWN, index=out.index, dtype="str")
        return out
    table = previous.set_index(previous["customer_id"].astype(str))
    ids = out["customer_id"].astype(str).to_numpy()
    for source, column in PREVIOUS_COLUMNS.items():
        values = table[source].astype("str").reindex(ids).fillna(NEW).to_numpy()
        out[column] = pd.Series(values, index=out.index, dtype="str")
    return out


def transitions(frame: pd.DataFrame, previous: pd.DataFrame | None = None) -> dict:
    """Counts of customers by (previous, current) lifecycle stage and RFM segment, as nested mappings.

    ``frame`` has the current columns and those of :func:`add_previous`. ``gone`` counts the
    previous run's customers without a row now.
    """
    out = {"n_customers": int(len(frame))}
    for source, column in PREVIOUS_COLUMNS.items():
        table = pd.crosstab(frame[column].astype(str), frame[source].astype(str))
        out[source] = {
            "from": [str(v) for v in table.index],
            "to": [str(v) for v in table.columns],
            "counts": table.to_numpy().astype(int).tolist(),
        }
    out["acquired_since"] = int((frame[PREVIOUS_COLUMNS["lifecycle_stage"]] == NEW).sum())
    moved = frame[PREVIOUS_COLUMNS["lifecycle_stage"]].astype(str) != frame["lifecycle_stage"].astype(str)
    out["moved_lifecycle"] = int((moved & (frame[PREVIOUS_COLUMNS["lifecycle_stage"]] != NEW)).sum())
    out["active_to_at_risk"] = int(((frame[PREVIOUS_COLUMNS["lifecycle_stage"]] == "active")
                                    & (frame["lifecycle_stage"] == "at_risk")).sum())
    if previous is not None:
        current = set(frame["customer_id"].astype(str))
        out["gone"] = int((~previous["customer_id"].astype(str).isin(current)).sum())
        if "as_of" in previous.columns and len(previous):
            out["previous_as_of"] = pd.Timestamp(previous["as_of"].iloc[0]).date().isoformat()
    if "as_of" in frame.columns and len(frame):
        out["as_of"] = pd.Timestamp(frame["as_of"].iloc[0]).date().isoformat()
    return out


def write_transitions(moves: dict, path: Path) -> Path:
    """Write ``transitions.json`` atomically and list it as the tool's own in its folder."""
    import json

    from features.common.outputs import atomic_path, mark_folder

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(moves, indent=2) + "\n")
    mark_folder(path.parent, [path.name], add=True)
    return path
