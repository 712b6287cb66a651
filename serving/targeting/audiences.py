"""Writing audiences: a CSV per action, summary.csv and send/, every text cell safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from features.contacts import TREATMENT
from features.common.errors import InputError
from features.common.outputs import atomic_paths
from serving.targeting.campaigns import HELD_BACK
from serving.targeting.schema import ACTION_PATTERN, SUMMARY

SEND_FOLDER = "send"
SUMMARY_COLUMNS = ("action", "customers", "share_of_scored", "expected_revenue_sum", "clv_sum", "p_repurchase_mean")
# Spreadsheets read a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def write_audiences(targeted: pd.DataFrame, out_dir: Path, *, send_dir: Path | None = None) -> pd.DataFrame:
    """Write ``<action>.csv`` per action, ``summary.csv`` and ``send/<action>.csv`` into ``out_dir``, atomically.

    Each audience file has ``customer_id``, ``action``, ``reason``, ``rule``, ``group``
    (and ``held_back`` when contacts were applied), then the other score columns and the
    columns the rules used: both groups, and the customers held back. When the rows carry
    ``group`` (rules applied with a campaign), ``send/`` holds what goes to the messaging
    tool: per action, the ``treatment`` rows that are not held back, in the same columns
    (a file with the header only when nobody is to be sent).
    ``send_dir`` puts that folder elsewhere (quickstart: beside ``audiences/``); both
    folders are then complete before either replaces its old version. ``summary.csv`` has one row per
    action (most customers first): ``customers``, ``share_of_scored`` (of all rows in
    ``targeted``), ``expected_revenue_sum``, ``clv_sum`` and ``p_repurchase_mean``. The
    folder is built under a temporary name and renamed onto ``out_dir`` only when every
    file is written, so a failure leaves an existing ``out_dir`` as it was.

    The files are opened in spreadsheets, so a text cell (customer id, reason, rule, any
    text column or header) that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return is written with a leading ``'`` (OWASP's advice against CSV
    injection): ``=cmd|' /C calc'!A0`` is written ``'=cmd|' /C calc'!A0`` and shows as
    text. Text cells are quoted, so a line break inside one cannot start a new row; number
    columns are written as they are, unquoted (``-3.5`` stays a number).

    Returns
    -------
    pandas.DataFrame
        The summary.
    """
    out_dir = Path(out_dir)
    needed = ("customer_id", "action", "reason", "expected_revenue", "clv", "p_repurchase")
    missing = [c for c in needed if c not in targeted.columns]
    if missing:
        raise InputError(f"targeted: missing column(s) {', '.join(missing)}; pass the output of apply_rules")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; give a folder for the audiences")
    acted = targeted[targeted["action"].notna()]
    actions = acted["action"].astype(str)
    bad = sorted({a for a in actions.unique() if not re.fullmatch(ACTION_PATTERN, a) or a == SUMMARY})
    if bad:
        raise InputError(f"targeted: action '{bad[0]}' cannot be a file name; use lower-case letters, digits, _ and -")

    first = ["customer_id", "action", "reason", "rule", "group", HELD_BACK]
    columns = [c for c in first if c in targeted.columns] + [c for c in targeted.columns if c not in first]
    grouped = acted.groupby(actions, sort=False)
    summary = pd.DataFrame(
        {
            "action": grouped.size().index.astype(str),
            "customers": grouped.size().to_numpy(dtype=np.int64),
            "share_of_scored": grouped.size().to_numpy(dtype=float) / max(len(targeted), 1),
            "expected_revenue_sum": grouped["expected_revenue"].sum().to_numpy(dtype=float),
            "clv_sum": grouped["clv"].sum().to_numpy(dtype=float),
            "p_repurchase_mean": grouped["p_repurchase"].mean().to_numpy(dtype=float),
        },
        columns=list(SUMMARY_COLUMNS),
    )
    summary = summary.sort_values(["customers", "action"], ascending=[False, True], kind="mergesort").reset_index(drop=True)

    planned = "group" in acted.columns
    if send_dir is not None and not planned:
        raise InputError("targeted: no group column to choose what to send; apply the rules with a campaign")
    sent = (acted["group"] == TREATMENT).to_numpy(dtype=bool) if planned else np.zeros(len(acted), dtype=bool)
    if HELD_BACK in acted.columns:
        sent = sent & acted[HELD_BACK].isna().to_numpy(dtype=bool)
    targets = [out_dir] if send_dir is None else [out_dir, Path(send_dir)]
    with atomic_paths(targets, folder=True) as tmps:
        tmps[0].mkdir()
        send = None
        if planned:
            send = tmps[0] / SEND_FOLDER if send_dir is None else tmps[1]
            send.mkdir()
        for action in summary["action"]:
            rows = (actions == action).to_numpy()
            _write_csv(acted.loc[rows, columns], tmps[0] / f"{action}.csv")
            if send is not None:
                _write_csv(acted.loc[rows & sent, columns], send / f"{action}.csv")
        _write_csv(summary, tmps[0] / f"{SUMMARY}.csv")
    return summary


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as CSV with every text cell safe to open in a spreadsheet."""
    safe = frame.copy()
    for column in safe.columns:
        if not (
            pd.api.types.is_numeric_dtype(safe[column].dtype)
            or pd.api.types.is_datetime64_any_dtype(safe[column].dtype)
            or pd.api.types.is_timedelta64_dtype(safe[column].dtype)
        ):
            safe[column] = safe[column].map(spreadsheet_safe)
    safe.columns = [spreadsheet_safe(column) for column in safe.columns]
    # Text cells quoted, numbers not (OWASP): a carriage return inside an unquoted cell would
    # start a new row in a spreadsheet, and that row could begin with a formula.
    safe.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)


def spreadsheet_safe(value: object) -> object:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula; anything else as it is.

    Follows OWASP's advice on CSV injection: text starting with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return is prefixed with a single quote, which spreadsheets
    show as text. Numbers are not text and are returned unchanged.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
