"""Applying a rule set to score rows: first match wins, then the budget, the campaign plan and the reasons."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pandas as pd

from features.contacts import assign_groups
from features.common.errors import InputError
from serving.targeting.campaigns import HELD_BACK, Campaign, campaign_dates, held_back
from serving.targeting.columns import (
    REPLENISH_COLUMNS,
    add_derived,
    add_previous_defaults,
    add_replenishment,
    join_features,
    set_uplift,
    uplift_by_action,
)
from serving.targeting.expressions import evaluate_condition
from serving.targeting.reasons import check_placeholder_columns, render_reasons
from serving.targeting.schema import Budget, RuleSet, RulesError
from training.contract import REASON_CODES, SCORE_COLUMNS, UPLIFT, uplift_columns
from training.i18n import language


def apply_rules(
    scores: pd.DataFrame,
    rules: RuleSet,
    features: pd.DataFrame | None = None,
    replenishment: pd.DataFrame | None = None,
    *,
    clv_reference: np.ndarray | None = None,
    campaign: Campaign | None = None,
    lang: str | None = None,
) -> pd.DataFrame:
    """Give every scored customer at most one action (first matching rule wins) with a reason.

    Parameters
    ----------
    scores
        Score rows (the score contract), one per customer.
    rules
        From :func:`load_rules`.
    features
        Optional feature snapshot (one row per ``customer_id``) whose columns the rules
        may use.
    replenishment
        Optional product-level replenishment frame; feeds the ``replenish_*`` columns.
    clv_reference
        Sorted CLV values of a reference population (the model's), for ``clv_pct``.
    campaign
        Plan a campaign: draw each action's holdout and, with past contacts, hold back
        customers by cooldowns and the contact cap (see "Holdouts and contact hygiene" in
        the package docs). Without it, only the decisions are made.
    lang
        Language of the ``reason`` texts (``en``, ``zh``; default ``$REPURCHASE_LANG``, else
        English): a rule's ``reason_<lang>`` when it has one, else its ``reason``; in Chinese,
        labels of stages, segments, tiers and actions in place of their machine names. Every
        other column keeps its English values.

    Returns
    -------
    pandas.DataFrame
        The score columns in contract order, then ``action``, ``reason``, ``rule`` (NaN
        where no rule matched or the budget dropped the customer), ``reason_codes`` when
        the scores have them (``repurchase score --explain``), then the other columns
        the rules name (``replenish_*`` only when a replenishment frame is given;
        ``expected_value`` always with a budget, ``uplift`` and ``incremental_value`` with
        ``rank_by: uplift``); same rows, order and index as ``scores``. Scores with uplift
        keep their uplift columns right after the contract's, ``uplift`` then being that of
        the action chosen (the scores' own where no rule fired).
        With ``campaign``, last: ``group`` (``treatment`` or ``holdout``),
        ``campaign_date`` and ``holdout_share`` (missing without an action), and with its
        contacts ``held_back`` (why a customer is not sent, missing when sent).
    """
    if not isinstance(rules, RuleSet):
        raise TypeError("rules must be a RuleSet (see load_rules)")
    try:
        reason_language = language(lang)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise InputError(f"scores: missing column(s) {', '.join(missing)}; expected the score contract")
    scored_uplift = uplift_columns(scores.columns)
    if rules.budget is not None and rules.budget.rank_by == UPLIFT and not scored_uplift:
        raise RulesError(
            f"{rules.source}: budget: rank_by: uplift needs scores with an uplift column; score with a model "
            "trained with `repurchase train --uplift --contacts FILE`, or rank by expected_value"
        )
    kept_columns = [*SCORE_COLUMNS, *([REASON_CODES] if REASON_CODES in scores.columns else []), *scored_uplift]
    frame = scores[kept_columns].reset_index(drop=True)
    frame = join_features(frame, features)
    frame = add_previous_defaults(frame)
    frame = add_derived(frame, rules.contact_cost, clv_reference)
    frame = add_replenishment(frame, replenishment)
    uplift_of = uplift_by_action(frame)

    n = len(frame)
    chosen = np.full(n, -1)
    for index, rule in enumerate(rules.rules):  # one true/false array at a time, not one per rule at once
        if {UPLIFT, "incremental_value"} & set(rule.columns()):
            set_uplift(frame, uplift_of(rule.action), rules.contact_cost)
        with _located(rules, index + 1, "when"):
            matches = evaluate_condition(frame, rule.when)
        chosen[(chosen < 0) & matches] = index
    set_uplift(frame, _chosen_uplift(chosen, rules, uplift_of), rules.contact_cost)
    for position, rule in enumerate(rules.rules, start=1):
        with _located(rules, position, "reason"):
            check_placeholder_columns(frame, rule.clauses_in(reason_language.code))
    why_held = np.full(n, None, dtype=object)
    if campaign is not None:
        dates = campaign_dates(frame, campaign.date)
        if campaign.contacts is not None:
            why_held = held_back(frame["customer_id"].astype(str).to_numpy(), chosen, dates, rules, campaign.contacts,
                                 reason_language)
    if rules.budget is not None:
        held = np.array([h is not None for h in why_held], dtype=bool)
        ranked_by = "incremental_value" if rules.budget.rank_by == UPLIFT else "expected_value"
        kept = _within_budget(np.where(held, -1, chosen), frame[ranked_by].to_numpy(dtype=float), rules.budget)
        chosen = np.where(held, chosen, kept)

    action = np.full(n, None, dtype=object)
    reason = np.full(n, None, dtype=object)
    rule_name = np.full(n, None, dtype=object)
    for index, rule in enumerate(rules.rules):
        rows = np.flatnonzero(chosen == index)
        if rows.size == 0:
            continue
        action[rows] = rule.action
        rule_name[rows] = rule.name
        with _located(rules, index + 1, "reason"):
            reason[rows] = render_reasons(frame.iloc[rows], rule.clauses_in(reason_language.code), reason_language)

    hidden = set(SCORE_COLUMNS) | set(scored_uplift) | (set(REPLENISH_COLUMNS) if replenishment is None else set())
    used = [c for rule in rules.rules for c in rule.columns() if c in frame.columns and c not in hidden]
    if rules.budget is not None:
        used.append("expected_value")
        if rules.budget.rank_by == UPLIFT:
            used += [UPLIFT, "incremental_value"]
    used = [c for c in used if c not in hidden]
    if scored_uplift:  # rows without an action keep the scores' own uplift (the best action's)
        frame[UPLIFT] = np.where(chosen >= 0, frame[UPLIFT].to_numpy(dtype=float), uplift_of(None))
    out = frame[[*SCORE_COLUMNS, *scored_uplift]].copy()
    out["action"] = pd.Series(action, dtype="str")
    out["reason"] = pd.Series(reason, dtype="str")
    out["rule"] = pd.Series(rule_name, dtype="str")
    if REASON_CODES in frame.columns:  # the model's own explanation, when the scores carry it
        out[REASON_CODES] = frame[REASON_CODES].to_numpy()
    for column in dict.fromkeys(used):
        out[column] = frame[column]
    if campaign is not None:
        shares = np.array([rules.rules[i].holdout if i >= 0 else np.nan for i in chosen], dtype=float)
        acted = chosen >= 0
        out["group"] = pd.Series(assign_groups(frame["customer_id"].to_numpy(), action, dates, shares), dtype="str")
        out["campaign_date"] = pd.Series(dates, dtype="datetime64[ns]").where(acted)
        out["holdout_share"] = shares
        if campaign.contacts is not None:
            out[HELD_BACK] = pd.Series(np.where(acted, why_held, None), dtype="str")
    out.index = scores.index
    return out


def _chosen_uplift(chosen: np.ndarray, rules: RuleSet, uplift_of) -> np.ndarray:
    """Each row's uplift for the action its rule gives (NaN where no rule fired)."""
    out = np.full(len(chosen), np.nan)
    for index in np.unique(chosen[chosen >= 0]):
        rows = chosen == index
        out[rows] = uplift_of(rules.rules[index].action)[rows]
    return out


def _within_budget(chosen: np.ndarray, expected_value: np.ndarray, budget: Budget) -> np.ndarray:
    candidates = np.flatnonzero((chosen >= 0) & (expected_value > 0))
    order = candidates[np.argsort(-expected_value[candidates], kind="stable")]
    keep = order if budget.max_contacts is None else order[: budget.max_contacts]
    out = np.full_like(chosen, -1)
    out[keep] = chosen[keep]
    return out


@contextmanager
def _located(rules: RuleSet, position: int, field: str) -> Iterator[None]:
    """Turn a ValueError from checking or applying one rule's ``field`` into a RulesError naming the rule."""
    try:
        yield
    except ValueError as exc:
        raise RulesError(f"{rules.where(position)}: {field}: {exc}") from None
