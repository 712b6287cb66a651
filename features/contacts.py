"""The contacts file: who was sent what and when, and who was held out; and the holdout draw.

Contract (``DESIGN.md``, "Campaigns"): one row per contact, CSV or Parquet, with

``customer_id``   the customer (text; the same ids as the order log)
``action``        the action of the campaign (``replenishment_reminder``, ...)
``contacted_at``  the campaign date, ``YYYY-MM-DD`` (a time of day is dropped)
``group``         ``treatment`` (the message was sent) or ``holdout`` (kept back on purpose)

Optional: ``holdout_share``, the share the campaign planned to hold out (between 0 and 1,
one value per action), used by the sample-ratio test of ``repurchase measure``. Other
columns are kept and ignored.

Checked once, here, with one line naming the file, the row and what is wrong
(:class:`ContactsError`, exit code 2): missing columns, empty files, empty ids or
actions, unparseable dates, group names other than ``treatment`` and ``holdout``, action
names that are not action names (or, given ``known_actions``, not among them), and the
same (customer, action, date) twice.

Holdout draw
------------
:func:`holdout_draw` maps (customer id, action, campaign date) to a number in [0, 1) with
BLAKE2b (8-byte digest of ``"{customer_id}|{action}|{YYYY-MM-DD}"``, read as an unsigned
integer over 2**64). A customer is in the holdout of a campaign when the number is below
the holdout share. The draw uses nothing but those three values, so it is the same on
every rerun of the same day, uniform, and independent of every score; a new campaign
date draws afresh.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from features.common.errors import InputError
from features.orders import _as_string, _parse_timestamps, _read_source

CONTACT_COLUMNS = ("customer_id", "action", "contacted_at", "group")
TREATMENT = "treatment"
HOLDOUT = "holdout"
GROUPS = (TREATMENT, HOLDOUT)
HOLDOUT_SHARE = "holdout_share"
DEFAULT_HOLDOUT_SHARE = 0.1
ACTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DIGEST_BYTES = 8


class ContactsError(InputError):
    """A contacts file that cannot be used as it is."""


# --------------------------------------------------------------------------- the holdout draw


def holdout_draw(customer_ids, action: str, campaign_date) -> np.ndarray:
    """The uniform number in [0, 1) of each customer for this action and campaign date (see module docs)."""
    day = pd.Timestamp(campaign_date).strftime("%Y-%m-%d")
    suffix = f"|{action}|{day}".encode()
    draws = np.empty(len(customer_ids), dtype=np.float64)
    for position, customer_id in enumerate(customer_ids):
        digest = hashlib.blake2b(str(customer_id).encode() + suffix, digest_size=_DIGEST_BYTES).digest()
        draws[position] = int.from_bytes(digest, "big") / 2.0**64
    return draws


def assign_groups(customer_ids, actions, campaign_dates, holdout_shares) -> np.ndarray:
    """``treatment`` or ``holdout`` per row (object array); rows without an action get None.

    ``actions``, ``campaign_dates`` and ``holdout_shares`` are per row (same length as the ids).
    """
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str).to_numpy()
    actions = np.asarray(actions, dtype=object)
    dates = pd.to_datetime(pd.Series(campaign_dates)).dt.strftime("%Y-%m-%d").to_numpy()
    shares = np.asarray(holdout_shares, dtype=float)
    out = np.full(len(ids), None, dtype=object)
    has_action = np.array([isinstance(a, str) and a != "" for a in actions], dtype=bool)
    keys = pd.DataFrame({"action": actions[has_action], "date": dates[has_action]})
    rows = np.flatnonzero(has_action)
    for (action, day), positions in keys.groupby(["action", "date"], sort=False).indices.items():
        where = rows[positions]
        draws = holdout_draw(ids[where], action, day)
        out[where] = np.where(draws < shares[where], HOLDOUT, TREATMENT)
    return out


# --------------------------------------------------------------------------- loading


def load_contacts(source: str | os.PathLike, known_actions=None) -> pd.DataFrame:
    """Read and check a contacts file (CSV or Parquet); see the module docs for the checks.

    Parameters
    ----------
    source
        Path of the file.
    known_actions
        When given, every action must be one of these (the rules' actions).

    Returns
    -------
    pandas.DataFrame
        ``customer_id`` (str), ``action`` (str), ``contacted_at`` (midnight ``datetime64[ns]``),
        ``group`` (str), ``holdout_share`` (float, NaN where not given), in file order.
    """
    path = Path(source)
    if not path.exists():
        raise ContactsError(f"{source}: no such contacts file")
    if path.is_dir():
        raise ContactsError(f"{source}: is a folder; give the contacts file (CSV or Parquet)")
    try:
        raw, origin, rows = _read_source(str(source))
    except InputError as exc:
        raise ContactsError(str(exc)) from None
    row_base, row_word = rows.base, rows.word
    frame = validate_contacts(raw, origin, known_actions=known_actions, row_base=row_base, row_word=row_word)
    frame.attrs.update(origin=origin, row_base=row_base, row_word=row_word)  # for later messages about rows
    return frame


def validate_contacts(
    raw: pd.DataFrame, origin: str = "contacts", *, known_actions=None, row_base: int = 1, row_word: str = "row"
) -> pd.DataFrame:
    """Check a raw contacts frame and return it in canonical form (see :func:`load_contacts`)."""
    columns = {str(c).strip(): c for c in raw.columns}
    missing = [c for c in CONTACT_COLUMNS if c not in columns]
    if missing:
        close = ", ".join(str(c) for c in raw.columns)
        raise ContactsError(
            f"{origin}: missing column(s) {', '.join(missing)}; a contacts file has "
            f"{', '.join(CONTACT_COLUMNS)} (found: {close or 'no columns'})"
        )
    if raw.empty:
        raise ContactsError(f"{origin}: has no rows; a contacts file has one row per contact")

    def fail(mask, column: str, what: str) -> None:
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        if positions.size:
            more = f" (and {positions.size - 1} more)" if positions.size > 1 else ""
            raise ContactsError(f"{origin}: {row_word} {positions[0] + row_base}{more}: {column}: {what(positions[0])}")

    customer = _as_string(raw[columns["customer_id"]]).str.strip()
    fail(customer.isna() | (customer == ""), "customer_id", lambda i: "empty; every contact names its customer")

    action = raw[columns["action"]].astype("str").str.strip().where(raw[columns["action"]].notna())
    fail(action.isna() | (action == ""), "action", lambda i: "empty; every contact names its action")
    bad_name = ~action.str.fullmatch(ACTION_NAME.pattern).fillna(False).astype(bool)
    fail(bad_name, "action", lambda i: f"'{action.iloc[i]}' is not an action name (lower-case letters, digits, _ and -)")
    if known_actions is not None:
        known = sorted(set(known_actions))
        fail(~action.isin(known), "action",
             lambda i: f"unknown action '{action.iloc[i]}'; the rules have {', '.join(known)} (give their --rules)")

    group = raw[columns["group"]].astype("str").str.strip().where(raw[columns["group"]].notna())
    fail(~group.isin(GROUPS), "group",
         lambda i: f"'{group.iloc[i]}' is not a group; use {TREATMENT} or {HOLDOUT}" if pd.notna(group.iloc[i])
         else f"empty; use {TREATMENT} or {HOLDOUT}")

    # The order log's date reader (any resolution, so far-off years can be named); a time of day is dropped.
    contacted_at = _parse_timestamps(raw[columns["contacted_at"]]).dt.normalize()
    source_dates = raw[columns["contacted_at"]]
    fail(contacted_at.isna() & source_dates.isna(), "contacted_at", lambda i: "empty; every contact has its date")
    fail(contacted_at.isna(), "contacted_at", lambda i: f"'{source_dates.iloc[i]}' is not a date; use YYYY-MM-DD")
    years = contacted_at.dt.year
    fail((years < 1900) | (years > 2200), "contacted_at", lambda i: f"'{source_dates.iloc[i]}' is out of range (years 1900-2200)")

    if HOLDOUT_SHARE in columns:
        given = raw[columns[HOLDOUT_SHARE]]
        share = pd.to_numeric(given.astype("str").str.strip().where(given.notna()), errors="coerce").astype(float)
        fail(given.notna() & ((share < 0) | (share >= 1) | share.isna()), HOLDOUT_SHARE,
             lambda i: f"'{given.iloc[i]}' is not a share from 0 up to (not including) 1")
    else:
        share = pd.Series(np.nan, index=raw.index)

    frame = pd.DataFrame(
        {
            "customer_id": customer.astype("str").to_numpy(),
            "action": action.astype("str").to_numpy(),
            "contacted_at": contacted_at.astype("datetime64[ns]").to_numpy(),
            "group": group.astype("str").to_numpy(),
            HOLDOUT_SHARE: share.to_numpy(dtype=float),
        }
    )
    key = ["customer_id", "action", "contacted_at"]
    duplicated = frame.duplicated(key, keep=False).to_numpy()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        row = frame.iloc[first]
        same = frame[key].eq(row[key]).all(axis=1).to_numpy()
        rows = [str(p + row_base) for p in np.flatnonzero(same)]
        raise ContactsError(
            f"{origin}: {row_word}s {' and '.join(rows[:2])}{' and more' if len(rows) > 2 else ''}: customer "
            f"'{row['customer_id']}' is listed twice for {row['action']} on {row['contacted_at'].date()}; "
            "keep one row per customer, action and date"
        )
    shares = frame.dropna(subset=[HOLDOUT_SHARE]).groupby("action")[HOLDOUT_SHARE].nunique()
    if (shares > 1).any():
        action_name = shares[shares > 1].index[0]
        raise ContactsError(f"{origin}: {HOLDOUT_SHARE}: action {action_name} has more than one planned share; give one per action")
    return frame
