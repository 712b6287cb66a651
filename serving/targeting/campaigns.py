"""Planning a campaign: the date of the holdout draw, and the customers held back by cooldowns and the contact cap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.contacts import TREATMENT
from features.common.errors import InputError
from training.i18n import Language, language

if TYPE_CHECKING:
    from serving.targeting.schema import RuleSet

CAMPAIGN_COLUMNS = ("group", "campaign_date", "holdout_share")
HELD_BACK = "held_back"


@dataclass(frozen=True)
class Campaign:
    """What :func:`~serving.targeting.apply_rules` needs to plan a campaign: the date of the holdout draw
    (each score row's ``as_of`` when None) and the past contacts for cooldowns and the cap (none when None)."""

    date: pd.Timestamp | str | None = None
    contacts: pd.DataFrame | None = None


def campaign_dates(frame: pd.DataFrame, campaign_date) -> np.ndarray:
    """The campaign date of every row: ``campaign_date`` when given, else the row's ``as_of`` (midnight)."""
    if campaign_date is not None:
        day = pd.Timestamp(campaign_date).normalize()
        return np.full(len(frame), day.to_datetime64().astype("datetime64[ns]"))
    as_of = pd.to_datetime(frame["as_of"], errors="coerce").astype("datetime64[ns]").dt.normalize()
    if as_of.isna().any():
        raise InputError(f"scores: as_of is empty in row {int(np.flatnonzero(as_of.isna().to_numpy())[0]) + 1}; "
                         "give a campaign date")
    return as_of.to_numpy()


def _days_text(days: int, lang: Language) -> str:
    if days == 0:
        return lang.gettext("today")
    return lang.ngettext("{days} day ago", "{days} days ago", days).format(days=days)


def held_back(
    customer_ids: np.ndarray, chosen: np.ndarray, dates: np.ndarray, rules: RuleSet, contacts: pd.DataFrame,
    lang: Language | None = None,
) -> np.ndarray:
    """Why each customer with an action is not sent (None when sent): cooldowns and the contact cap, in ``lang``."""
    lang = lang or language("en")
    _ = lang.gettext
    out = np.full(len(chosen), None, dtype=object)
    cooldown = np.array([rules.rules[i].cooldown_days or 0 if i >= 0 else 0 for i in chosen], dtype=np.int64)
    cap = rules.contact_cap
    candidates = (chosen >= 0) & ((cooldown > 0) | (cap is not None))
    if not candidates.any() or contacts.empty:
        return out
    rows = pd.DataFrame(
        {"row": np.flatnonzero(candidates), "customer_id": customer_ids[candidates], "day": dates[candidates],
         "cooldown": cooldown[candidates]}
    )
    past = contacts[["customer_id", "action", "contacted_at", "group"]].astype({"customer_id": "str"})
    pairs = rows.merge(past, on="customer_id", how="inner")
    pairs["days_ago"] = (pairs["day"] - pairs["contacted_at"]).dt.days
    pairs = pairs[pairs["days_ago"] >= 0]  # contacts after the campaign date do not count

    reasons: dict[int, list[str]] = {}
    cooling = pairs[pairs["days_ago"] < pairs["cooldown"]].sort_values(["row", "days_ago"], kind="mergesort")
    for record in cooling.drop_duplicates("row").itertuples(index=False):
        when = _days_text(int(record.days_ago), lang)
        action = lang.name_or_label("action", record.action)
        text = (_("contacted {when} for {action}") if record.group == TREATMENT
                else _("in the holdout of {action} {when}")).format(when=when, action=action)
        reasons.setdefault(int(record.row), []).append(
            _("{why} (cooldown {days} days)").format(why=text, days=int(record.cooldown)))
    if cap is not None:
        sent = pairs[(pairs["group"] == TREATMENT) & (pairs["days_ago"] < cap.days)]
        counts = sent.groupby("row").size()
        for row, count in counts[counts >= cap.contacts].items():
            reasons.setdefault(int(row), []).append(lang.ngettext(
                "contacted {count} time in the last {days} days (cap {cap})",
                "contacted {count} times in the last {days} days (cap {cap})", int(count),
            ).format(count=int(count), days=cap.days, cap=cap.contacts))
    for row, texts in reasons.items():
        out[row] = _("; ").join(texts)
    return out
