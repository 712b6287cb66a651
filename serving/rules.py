"""Targeting rules: turn score rows into audiences, one action per customer, with reasons.

A rules file is YAML::

    rules:
      - name: win_back                      # unique; shown in the ``rule`` column
        description: lapsed but still valuable   # optional, for people
        when: lifecycle_stage == 'lapsed' and clv_pct >= 0.7
        action: win_back                    # audience name, also the CSV file name
        reason:                             # one clause, or a list of clauses
          - "no order for {days_since_last:.0f} days"
          - "lifetime value {clv:,.0f}"
        holdout: 0.1                        # share kept back to measure the action (default 0.1; 0.0 = none)
        cooldown_days: 30                   # optional: skip customers in a campaign within 30 days
    budget:                                 # optional
      max_contacts: 5000                    # optional; no cap when left out
      contact_cost: 0.5                     # default 0
      rank_by: expected_value               # default; or uplift (needs scores with uplift)
    contact_cap: {days: 30, contacts: 2}    # optional: at most 2 contacts per customer in 30 days

Evaluation
----------
Rules are tried in file order on every score row; the first rule whose ``when`` is true
gives the customer its ``action``, ``reason`` and ``rule`` (name). A customer no rule
matches gets NaN in all three.

``when`` is an expression over columns, evaluated with :meth:`pandas.DataFrame.eval`
(python engine) after a check of its syntax tree: only column names, numbers, 'text',
lists of those, arithmetic (``+ - * / // %``), comparisons (``< <= == != >= >`` and
``in`` / ``not in``, chained as in ``1.5 <= overdue_ratio <= 3``), and ``and`` / ``or`` /
``not`` (or ``& | ~``) are allowed; no calls, attributes, indexing or powers. Line breaks
count as spaces. The result must be
true/false per row. A comparison with a missing value (NaN) is false, so
``next_order_days_p50 <= 14`` never picks a customer with no expected next order; note
that ``not`` turns that false into true, so prefer positive conditions.

Columns a condition can use
---------------------------
* the score contract (:data:`training.contract.SCORE_COLUMNS`);
* the feature snapshot's columns (``features=``, joined on ``customer_id``; a score
  column wins over a feature column of the same name);
* derived helper columns, computed before any rule runs:

  ``clv_pct``
      percentile of ``clv`` (0-1, 1 = highest). With ``clv_reference`` (the model's CLV
      distribution at training, ``model.spec_.clv_reference``) it is the share of that
      reference below the customer's CLV, so one customer scored alone gets the same
      value as in a batch; without it, the rank among the rows passed in (ties share
      their average rank).
  ``expected_order_value``
      ``expected_revenue / expected_orders`` where ``expected_orders > 0``, else the
      feature ``avg_order_value`` when the snapshot has it, else NaN.
  ``expected_value``
      ``p_repurchase * expected_order_value - contact_cost`` (``budget.contact_cost``,
      0 without a budget): the value of contacting the customer.
  ``uplift``
      the change in P(an order within the window) that contacting with **the rule's own
      action** causes: in a rule for ``win_back``, the scores' ``uplift_win_back``. Scores
      from a model trained with ``repurchase train --uplift`` carry ``uplift_<action>`` for
      every action it learned (and ``uplift``, the largest of them); for an action it did
      not learn, ``uplift`` is NaN. Scores with only an ``uplift`` column use it for every
      action. Without any uplift in the scores it is NaN, so a rule on it matches nobody.
      In reasons and in the output, ``uplift`` is that of the action the customer got.
  ``incremental_value``
      ``uplift * expected_order_value - contact_cost``: what contacting adds, in money,
      minus what it costs (per rule's action, as ``uplift``).
  ``replenish_category``, ``replenish_days_p50``, ``replenish_p_within_horizon``,
  ``replenish_remind_on``, ``replenish_days_since_last``, ``replenish_gap_days``
      from the product-level replenishment frame (``replenishment=``), for each customer
      the most urgent category: the smallest ``next_purchase_days_p50`` (categories
      with no expected purchase within the horizon last), ties broken by the higher
      ``p_within_horizon``. ``replenish_days_since_last`` is days from
      ``last_purchase`` to ``as_of``; ``replenish_gap_days`` is the frame's
      ``gap_days`` column when it has one, else the predicted cycle
      ``replenish_days_since_last + replenish_days_p50``. All NaN without the frame,
      so a rule on them simply matches nobody.

Reasons
-------
``reason`` is a template in words, or a list of templates (clauses) joined with "; ".
Placeholders name columns and may carry a format spec: ``{gap_mean:.0f}``,
``{p_repurchase:.0%}``, ``{replenish_remind_on:%Y-%m-%d}``. Missing values read
sensibly: a clause that names a missing value (NaN, or a feature column the snapshot
does not have, e.g. no snapshot was given) is left out; only when every clause would be
left out are the clauses kept with "unknown" in place of the missing values. Without a
format spec whole numbers print without ".0" and midnight timestamps as dates.

Budget
------
With ``budget``, customers who got an action are ranked by ``expected_value``; those
with ``expected_value > 0`` are kept, highest first, up to ``max_contacts``; all others
lose their action, reason and rule (NaN), so the audiences are the contacts worth paying
for. ``rank_by: uplift`` ranks by ``incremental_value`` instead (the uplift of the
action each customer got): the contacts that add most, not the customers who would buy
anyway; customers whose action has no learned uplift are not kept. It needs scores with
uplift (a :class:`RulesError` otherwise, rather than empty audiences).

Holdouts and contact hygiene
----------------------------
Every action keeps a random holdout (``DESIGN.md``, "Campaigns"). Applied with a
:class:`Campaign` (as ``repurchase target``, quickstart and ``/target`` do), each customer
given an action gets ``group`` ``treatment`` or ``holdout`` by
:func:`features.contacts.holdout_draw` of (customer id, action, campaign date), below the
rule's ``holdout`` share (default :data:`~features.contacts.DEFAULT_HOLDOUT_SHARE`, 10%)
meaning holdout. The draw is a hash, so it is the same on every rerun of the same day,
uniform, and independent of every score. The campaign date is each score row's ``as_of``
unless ``Campaign.date`` is given (``repurchase target --campaign-date``). Audience rows
carry ``group``, ``campaign_date`` and ``holdout_share``: with ``customer_id`` and
``action`` they are the rows of the contacts file that ``repurchase measure`` reads
(``contacted_at`` = ``campaign_date``). Without a campaign, only the decisions are made.

With past contacts (``Campaign.contacts``, :func:`features.contacts.load_contacts`), two
rules hold customers back; a held-back customer keeps the action in its audience file,
with ``held_back`` saying why, and is not sent (nor counted in the holdout: record only rows
without ``held_back`` as contacts, so both groups lose the same customers):

* ``cooldown_days`` on a rule: not when the customer was in any campaign (sent, or held
  out: a later message would spoil that measurement) fewer than that many days before the
  campaign date: "contacted 3 days ago for replenishment_reminder (cooldown 14 days)",
  "in the holdout of win_back 3 days ago (cooldown 30 days)";
* ``contact_cap: {days: D, contacts: N}`` for the file: not when the customer was sent N
  messages or more in the D days before the campaign date (holdouts were sent nothing and
  do not count): "contacted 2 times in the last 30 days (cap 2)".

Contacts dated after the campaign date are ignored. A budget ranks only customers who are
not held back; the holdout is drawn from the customers the budget keeps.

Limits
------
A rules file is read by people and written by people, so anything far beyond what a
person writes is refused when the file is loaded, before any value is computed: a
hostile or mistaken file must not take the machine's memory (a format width of
``99999999`` on a million rows is tens of gigabytes). The limits:

* the file: at most 1 MB (:data:`MAX_RULES_FILE_BYTES`), YAML nested at most 32 levels
  deep and at most 20,000 values once aliases are expanded (a rules file has about 5
  levels and a few hundred values; the bounds stop deep nesting and alias bombs),
  at most 200 rules;
* ``when``: at most 2,000 characters, 500 terms (names, numbers, texts, operators) and
  50 levels of nesting; arithmetic (``+ - * / // % & |``) only on numbers: text and
  lists can be compared (``==``, ``in``) but not repeated, joined or %-formatted
  (``'a' * 1000000000`` would build a gigabyte). Text constants are refused at load,
  text columns when the rules are applied;
* ``reason``: at most 1,000 characters and 20 placeholders over all clauses; a format
  spec has at most 50 characters, a width of at most 50 and a precision of at most 20,
  and no nested placeholders; a date spec (``%Y-%m-%d``) has directives without widths.

Errors
------
Every problem with a rules file raises :class:`RulesError` with one line naming the
file, the rule (position from 1 and name) and the field, e.g.
``rules.yaml: rule 2 'win_back': when: unknown column 'clv_rank'; columns: ...``.
Syntax, limits, placeholders and format specs are checked when the file is loaded;
column names, arithmetic on text columns and true/false results when the rules are
applied, before any rule runs.
"""

from __future__ import annotations

import ast
import csv
import difflib
import math
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from features.contacts import DEFAULT_HOLDOUT_SHARE, TREATMENT, assign_groups
from features.errors import InputError
from features.io import atomic_paths
from features.pipeline import FEATURES
from serving.migration import PREVIOUS_COLUMNS
from training.contract import REASON_CODES, SCORE_COLUMNS, UPLIFT, UPLIFT_PREFIX, uplift_column, uplift_columns

__all__ = [
    "CAMPAIGN_COLUMNS",
    "DERIVED_COLUMNS",
    "REPLENISH_COLUMNS",
    "Budget",
    "Campaign",
    "ContactCap",
    "Rule",
    "RuleSet",
    "RulesError",
    "apply_rules",
    "load_rules",
    "spreadsheet_safe",
    "write_audiences",
]

DEFAULT_RULES = "default_rules.yaml"
REPLENISH_COLUMNS = (
    "replenish_category",
    "replenish_days_p50",
    "replenish_p_within_horizon",
    "replenish_remind_on",
    "replenish_days_since_last",
    "replenish_gap_days",
)
DERIVED_COLUMNS = ("clv_pct", "expected_order_value", "expected_value", UPLIFT, "incremental_value", *REPLENISH_COLUMNS)
REPLENISHMENT_REQUIRED = ("customer_id", "category", "last_purchase", "next_purchase_days_p50", "p_within_horizon", "remind_on")
CAMPAIGN_COLUMNS = ("group", "campaign_date", "holdout_share")
HELD_BACK = "held_back"
SEND_FOLDER = "send"
SUMMARY_COLUMNS = ("action", "customers", "share_of_scored", "expected_revenue_sum", "clv_sum", "p_repurchase_mean")
MISSING_TEXT = "unknown"

MAX_RULES_FILE_BYTES = 1_000_000
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 20_000
MAX_RULES = 200
MAX_WHEN_CHARS = 2_000
MAX_WHEN_TERMS = 500
MAX_WHEN_DEPTH = 50  # pandas' evaluator recurses a few frames per level: 50 stays far from the recursion limit
MAX_REASON_CHARS = 1_000
MAX_REASON_PLACEHOLDERS = 20
MAX_SPEC_CHARS = 50
MAX_SPEC_WIDTH = 50
MAX_SPEC_PRECISION = 20
# Spreadsheets read a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.BitAnd,
    ast.BitOr,
    ast.UnaryOp,
    ast.Not,
    ast.Invert,
    ast.USub,
    ast.UAdd,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
)
_OPERATORS = {
    ast.Pow: "**",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitXor: "^",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_FEATURE_PATTERNS = tuple(
    re.compile("^" + re.escape(name).replace(re.escape("<value>"), ".+") + "$") for name in FEATURES if "<value>" in name
)


@dataclass(frozen=True)
class Campaign:
    """What :func:`apply_rules` needs to plan a campaign: the date of the holdout draw (each
    score row's ``as_of`` when None) and the past contacts for cooldowns and the cap (none when None)."""

    date: pd.Timestamp | str | None = None
    contacts: pd.DataFrame | None = None


class RulesError(InputError):
    """A rules file (or rule set) that cannot be loaded or applied as it is."""


def _as_clauses(value: object) -> object:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError("give a text or a list of texts (clauses)")
    return value


Name = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=100)]
Text = Annotated[str, StringConstraints(strict=True, min_length=1)]


class ContactCap(BaseModel):
    """At most ``contacts`` messages per customer in any ``days`` days (``contact_cap`` in a rules file)."""

    model_config = ConfigDict(extra="forbid")

    days: int = Field(ge=1, le=3650)
    contacts: int = Field(ge=1)


class Budget(BaseModel):
    """Budget-aware selection: keep the contacts with the highest positive expected value."""

    model_config = ConfigDict(extra="forbid")

    max_contacts: int | None = Field(default=None, ge=0)
    contact_cost: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    rank_by: Literal["expected_value", "uplift"] = "expected_value"


class Rule(BaseModel):
    """One targeting rule: when ``when`` is true for a customer, give ``action`` with ``reason``."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    when: Text
    action: Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    reason: Annotated[list[Text], BeforeValidator(_as_clauses)]
    description: str | None = None
    holdout: float = Field(default=DEFAULT_HOLDOUT_SHARE, ge=0, lt=1, allow_inf_nan=False)
    cooldown_days: int | None = Field(default=None, ge=1, le=3650)

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: str) -> str:
        _condition_columns(when)
        return when

    @field_validator("action")
    @classmethod
    def _check_action(cls, action: str) -> str:
        if action == "summary":
            raise ValueError("'summary' is taken by summary.csv; choose another action name")
        return action

    @field_validator("reason")
    @classmethod
    def _check_reason(cls, reason: list[str]) -> list[str]:
        if not reason:
            raise ValueError("give a text or a list of clauses")
        size = sum(len(clause) for clause in reason)
        if size > MAX_REASON_CHARS:
            raise ValueError(f"{size:,} characters; a reason has at most {MAX_REASON_CHARS:,} over all its clauses")
        placeholders = sum(field is not None for clause in reason for _, field, _ in _parse_template(clause))
        if placeholders > MAX_REASON_PLACEHOLDERS:
            raise ValueError(f"{placeholders} placeholders; a reason has at most {MAX_REASON_PLACEHOLDERS}")
        return reason

    @property
    def clauses(self) -> list[str]:
        """The reason's clauses (a single text is one clause)."""
        return list(self.reason)

    def columns(self) -> list[str]:
        """Columns the condition and the reason name, in order of appearance."""
        names = _condition_columns(self.when)
        for clause in self.clauses:
            names += [field for _, field, _ in _parse_template(clause) if field is not None]
        return list(dict.fromkeys(names))


class RuleSet(BaseModel):
    """An ordered list of rules (first match wins) and an optional budget."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(min_length=1, max_length=MAX_RULES)
    budget: Budget | None = None
    contact_cap: ContactCap | None = None
    _source: str = PrivateAttr(default="rules")

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen: dict[str, int] = {}
        for position, rule in enumerate(self.rules, start=1):
            if rule.name in seen:
                raise ValueError(
                    f"rule {position} '{rule.name}': name: same name as rule {seen[rule.name]}; names must be unique"
                )
            seen[rule.name] = position
        return self

    @property
    def source(self) -> str:
        """Where the rules came from (the file, in messages)."""
        return self._source

    @property
    def contact_cost(self) -> float:
        return self.budget.contact_cost if self.budget is not None else 0.0


# --------------------------------------------------------------------------- loading


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load and check a rules YAML file; ``None`` loads the shipped default rules.

    Raises
    ------
    RulesError
        One line naming the file, the rule and the field, for any problem.
    """
    if path is None:
        origin = DEFAULT_RULES
        text = resources.files("serving").joinpath(DEFAULT_RULES).read_text(encoding="utf-8")
    else:
        origin = str(path)
        path = Path(path)
        if not path.exists():
            raise RulesError(f"{origin}: no such file")
        if path.is_dir():
            raise RulesError(f"{origin}: is a folder, not a rules file")
        try:
            with path.open("rb") as handle:  # a bounded read: the path may be a device such as /dev/zero
                raw = handle.read(MAX_RULES_FILE_BYTES + 1)
        except OSError as exc:
            raise RulesError(f"{origin}: cannot be read ({exc.strerror or exc})") from None
        if len(raw) > MAX_RULES_FILE_BYTES:
            raise RulesError(f"{origin}: larger than {MAX_RULES_FILE_BYTES // 1_000_000} MB; a rules file is a few kilobytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RulesError(f"{origin}: is not UTF-8 text; save the rules as UTF-8 YAML") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader with limits
    except _YamlTooLarge as exc:
        mark = exc.problem_mark
        raise RulesError(f"{origin}: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}") from None
    except RecursionError:
        raise RulesError(f"{origin}: YAML nested too deeply to read; a rules file needs about 5 levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RulesError(f"{origin}: not valid YAML ({where}{problem})") from None
    if data is None:
        raise RulesError(f"{origin}: the file is empty; expected 'rules:' with a list of rules")
    if not isinstance(data, dict):
        raise RulesError(f"{origin}: expected a mapping with 'rules:' at the top, got {_kind(data)}")
    try:
        ruleset = RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RulesError(f"{origin}: {_validation_message(exc, data)}") from None
    ruleset._source = origin
    return ruleset


class _YamlTooLarge(yaml.MarkedYAMLError):
    """YAML beyond what a rules file needs: too deep, or aliases that expand too far."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing nesting deeper than :data:`MAX_YAML_DEPTH` and
    documents over :data:`MAX_YAML_VALUES` values once aliases are expanded.

    The composer builds nodes recursively, so 10,000 nested ``[`` would end in a
    RecursionError; it stops at the depth limit instead. An alias reuses its anchor's
    node, so a few lines of aliases of aliases ("billion laughs") describe billions of
    values; every node's expanded size and depth is counted as it is composed, and an
    alias that refers to the node it is inside (a loop) is refused.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nesting = 0
        self._values = 0  # values composed so far, each alias counted as the values it stands for
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        is_alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        self._nesting += 1
        try:
            if self._nesting > MAX_YAML_DEPTH:
                raise _YamlTooLarge(problem=f"YAML nested more than {MAX_YAML_DEPTH} levels deep; a rules file needs about 5",
                                    problem_mark=mark)
            node = super().compose_node(parent, index)
        finally:
            self._nesting -= 1
        if is_alias:
            if id(node) not in self._expanded:
                raise _YamlTooLarge(problem="YAML alias refers to the anchor it is inside (a loop)", problem_mark=mark)
            values, depth = self._expanded[id(node)]
            self._values += values
        else:
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = []
            sizes = [self._expanded[id(child)] for child in children]
            values = 1 + sum(size for size, _ in sizes)
            depth = 1 + max((deep for _, deep in sizes), default=0)
            self._expanded[id(node)] = (values, depth)
            self._values += 1
        if self._values > MAX_YAML_VALUES:
            raise _YamlTooLarge(problem=f"YAML has more than {MAX_YAML_VALUES:,} values once aliases are expanded; "
                                "a rules file has a few hundred", problem_mark=mark)
        if self._nesting + depth > MAX_YAML_DEPTH:
            raise _YamlTooLarge(problem=f"YAML nested more than {MAX_YAML_DEPTH} levels deep once aliases are expanded; "
                                "a rules file needs about 5", problem_mark=mark)
        return node


def _kind(value: object) -> str:
    kinds = {list: "a list", str: "text", int: "a number", float: "a number", bool: "true/false"}
    return kinds.get(type(value), type(value).__name__)


def _validation_message(exc: ValidationError, data: dict) -> str:
    """The first pydantic error as '<rule N 'name'>: <field>: <problem>' (one line)."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc = list(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        if len(loc) == 3 and loc[0] == "rules":
            message = "missing; every rule needs name, when, action and reason"
        elif loc == ["rules"]:
            message = "missing; give 'rules:' with a list of rules"
        else:
            message = "missing"
    elif error["type"] == "extra_forbidden":
        message = f"unknown field '{loc[-1]}'"
        loc = loc[:-1]
    where: list[str] = []
    if loc[:1] == ["rules"] and len(loc) >= 2 and isinstance(loc[1], int):
        position = loc[1] + 1
        raw = data.get("rules")
        raw_rule = raw[loc[1]] if isinstance(raw, list) and loc[1] < len(raw) else None
        name = raw_rule.get("name") if isinstance(raw_rule, dict) else None
        where.append(f"rule {position}" + (f" '{name}'" if isinstance(name, str) else ""))
        if len(loc) >= 3:
            where.append(str(loc[2]) + "".join(f" item {part + 1}" if isinstance(part, int) else f".{part}" for part in loc[3:]))
    elif loc:
        where.append(".".join(str(part) for part in loc))
    if error["type"] == "list_type" and loc == ["rules"]:
        message = "expected a list of rules"
    elif error["type"] == "model_type" and len(loc) == 2 and loc[0] == "rules":
        message = "expected a mapping with name, when, action and reason"
    elif error["type"] == "too_short" and loc == ["rules"]:
        message = "no rules; give at least one"
    elif error["type"] == "too_long" and loc == ["rules"]:
        message = f"more than {MAX_RULES} rules; a rules file has at most {MAX_RULES}"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ": ".join([*where, message]).replace("\n", " ") + more


def _expression(when: str) -> str:
    """A condition on one line: pandas would read a line break as a new statement."""
    return " ".join(when.splitlines()).strip()


def _condition_columns(when: str) -> list[str]:
    """Column names in a condition, after checking it only uses the allowed syntax."""
    return list(dict.fromkeys(node.id for node in ast.walk(_condition_tree(when)) if isinstance(node, ast.Name)))


def _condition_tree(when: str) -> ast.Expression:
    """The syntax tree of a condition, checked: size, allowed syntax, no arithmetic on text constants."""
    when = _expression(when)
    if len(when) > MAX_WHEN_CHARS:
        raise ValueError(f"{len(when):,} characters; a condition has at most {MAX_WHEN_CHARS:,}")
    try:
        tree = ast.parse(when, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ValueError(f"invalid syntax{where} in '{when}' ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"nested too deeply to read; a condition has at most {MAX_WHEN_DEPTH} levels") from None
    _check_condition_size(tree)
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            shown = ast.unparse(node) if isinstance(node, ast.expr) else _OPERATORS.get(type(node), type(node).__name__)
            raise ValueError(
                f"'{shown}' is not allowed; use column names, numbers, 'text', lists, + - * / // %, "
                "comparisons, in, and, or, not"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, bool)):
            raise ValueError(f"constant {node.value!r} is not allowed; use numbers, 'text', True or False")
    _check_arithmetic(tree.body, lambda name: "unknown")
    return tree


def _check_condition_size(tree: ast.Expression) -> None:
    """Refuse conditions with more terms or deeper nesting than the limits (iteratively: no recursion)."""
    terms = 0
    stack = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        terms += 1
        if terms > MAX_WHEN_TERMS:
            raise ValueError(f"more than {MAX_WHEN_TERMS} terms (names, numbers, texts, operators); "
                             f"a condition has at most {MAX_WHEN_TERMS}")
        if depth > MAX_WHEN_DEPTH:
            raise ValueError(f"nested more than {MAX_WHEN_DEPTH} levels deep (as in 'not not not ...' or a long chain "
                             f"of + or |); a condition has at most {MAX_WHEN_DEPTH}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))


def _check_arithmetic(node: ast.expr, column_kind: Callable[[str], str]) -> str:
    """The kind of value ``node`` gives ('number', 'text', 'list' or 'unknown'); raise on arithmetic on text or lists.

    Repetition (``'a' * 1000000000``, ``[0] * 10**9``, ``customer_id * 1000``) and
    %-formatting (``'%.999999999f' % 1``) build values as large as a number in the
    condition says, so arithmetic is only for numbers. ``column_kind`` tells a column's
    kind; 'unknown' (at load time, before the data is known) lets a column through.
    """
    if isinstance(node, ast.Constant):
        return "text" if isinstance(node.value, str) else "number"
    if isinstance(node, ast.Name):
        return column_kind(node.id)
    if isinstance(node, ast.BinOp):
        kinds = {_check_arithmetic(node.left, column_kind), _check_arithmetic(node.right, column_kind)}
        if kinds & {"text", "list"}:
            raise ValueError(
                f"'{ast.unparse(node)}' is arithmetic on {' and '.join(sorted(kinds & {'text', 'list'}))}, which could "
                "build huge values; arithmetic is for numbers, text and lists can only be compared (==, !=, in)"
            )
        return "unknown" if "unknown" in kinds else "number"
    if isinstance(node, ast.UnaryOp):
        kind = _check_arithmetic(node.operand, column_kind)
        return "number" if isinstance(node.op, ast.Not) else kind
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            _check_arithmetic(child, column_kind)
    return "list" if isinstance(node, (ast.List, ast.Tuple)) else "number"


def _column_kind(column: pd.Series) -> str:
    """'number' for numbers, true/false, dates and durations; 'text' for anything else."""
    dtype = column.dtype
    if (
        pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_numeric_dtype(dtype)
        or pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_timedelta64_dtype(dtype)
    ):
        return "number"
    if dtype == object and pd.api.types.infer_dtype(column, skipna=True) in (
        "integer", "floating", "mixed-integer-float", "decimal", "boolean", "empty",
    ):
        return "number"
    return "text"


def _parse_template(clause: str) -> list[tuple[str, str | None, str]]:
    """(literal text, column or None, format spec) parts of one reason clause, checked."""
    try:
        parts = list(string.Formatter().parse(clause))
    except ValueError as exc:
        raise ValueError(f"bad template '{clause}' ({exc}; write {{{{ and }}}} for literal braces)") from None
    out = []
    for literal, field, spec, conversion in parts:
        if field is None:
            out.append((literal, None, ""))
            continue
        shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not field.isidentifier():
            raise ValueError(f"placeholder {shown} must name a column, as in {{gap_mean:.0f}}")
        if conversion:
            raise ValueError(f"placeholder {shown}: conversions (!{conversion}) are not supported; use a format spec")
        if "{" in spec:
            raise ValueError(f"placeholder {shown}: nested placeholders are not supported")
        problem = _spec_problem(spec) if spec else None
        if problem:
            raise ValueError(f"placeholder {shown}: {problem}")
        out.append((literal, field, spec))
    return out


# Python's format spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_NUMBER_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?", re.DOTALL
)
# A date spec goes to strftime: text and %-directives (with an optional glibc flag such as
# %-d), but no field widths (%1000000000Y).
_DATE_SPEC = re.compile(r"(?:[^%]|%[-_0^#]?[A-Za-z%])*", re.DOTALL)


def _spec_problem(spec: str) -> str | None:
    """Why a placeholder's format spec cannot be used, or None; checked without formatting anything large."""
    bad = f"bad format spec '{spec}' (e.g. '.0f', '.0%', ',.2f', '%Y-%m-%d')"
    if len(spec) > MAX_SPEC_CHARS:
        return f"format spec of {len(spec):,} characters; at most {MAX_SPEC_CHARS}"
    number = _NUMBER_SPEC.fullmatch(spec)
    if number is not None:
        width, precision = number["width"], number["precision"]
        if width and int(width) > MAX_SPEC_WIDTH:
            return f"width {int(width)} in format spec '{spec}' is too large; at most {MAX_SPEC_WIDTH}"
        if precision and int(precision) > MAX_SPEC_PRECISION:
            return f"precision {int(precision)} in format spec '{spec}' is too large; at most {MAX_SPEC_PRECISION}"
    elif "%" not in spec or _DATE_SPEC.fullmatch(spec) is None:
        return bad
    return None if _spec_works(spec) else bad


def _spec_works(spec: str) -> bool:
    # datetime.__format__ hands any spec to strftime, which accepts any text, so only a
    # spec with a % directive counts as a date format.
    samples = (1.5, 1, "text", pd.Timestamp("2025-01-01")) if "%" in spec else (1.5, 1, "text")
    for sample in samples:
        try:
            format(sample, spec)
            return True
        except (ValueError, TypeError):
            continue
    return False


# --------------------------------------------------------------------------- applying


def apply_rules(
    scores: pd.DataFrame,
    rules: RuleSet,
    features: pd.DataFrame | None = None,
    replenishment: pd.DataFrame | None = None,
    *,
    clv_reference: np.ndarray | None = None,
    campaign: Campaign | None = None,
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
        the module docs). Without it, only the decisions are made.

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
    frame = _join_features(frame, features)
    for column in PREVIOUS_COLUMNS.values():  # no previous run (`target --previous`): nothing known
        if column not in frame.columns:
            frame[column] = pd.Series(MISSING_TEXT, index=frame.index, dtype="str")
    frame = _add_derived(frame, rules.contact_cost, clv_reference)
    frame = _add_replenishment(frame, replenishment)
    uplift_of = _uplift_by_action(frame)

    n = len(frame)
    chosen = np.full(n, -1)
    for index, rule in enumerate(rules.rules):  # one true/false array at a time, not one per rule at once
        if {UPLIFT, "incremental_value"} & set(rule.columns()):
            _set_uplift(frame, uplift_of(rule.action), rules.contact_cost)
        matches = _evaluate_when(frame, rule, index + 1, rules.source)
        chosen[(chosen < 0) & matches] = index
    _set_uplift(frame, _chosen_uplift(chosen, rules, uplift_of), rules.contact_cost)
    for position, rule in enumerate(rules.rules, start=1):
        _check_reason_columns(frame, rule, position, rules.source)
    held_back = np.full(n, None, dtype=object)
    if campaign is not None:
        dates = _campaign_dates(frame, campaign.date)
        if campaign.contacts is not None:
            held_back = _held_back(frame["customer_id"].astype(str).to_numpy(), chosen, dates, rules, campaign.contacts)
    if rules.budget is not None:
        held = np.array([h is not None for h in held_back], dtype=bool)
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
        reason[rows] = _render_reasons(frame.iloc[rows], rule, index + 1, rules.source)

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
            out[HELD_BACK] = pd.Series(np.where(acted, held_back, None), dtype="str")
    out.index = scores.index
    return out


def _uplift_by_action(frame: pd.DataFrame) -> Callable[[str | None], np.ndarray]:
    """``uplift_of(action)``: each row's uplift for that action (see ``uplift`` in the module docs);
    ``uplift_of(None)`` is the scores' own ``uplift`` (NaN without one)."""
    n = len(frame)
    given = frame[UPLIFT].to_numpy(dtype=float).copy() if UPLIFT in frame.columns else np.full(n, np.nan)
    per_action = any(c.startswith(UPLIFT_PREFIX) for c in frame.columns)

    def uplift_of(action: str | None) -> np.ndarray:
        if action is None:
            return given
        column = uplift_column(action)
        if column in frame.columns:
            return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        return np.full(n, np.nan) if per_action else given

    return uplift_of


def _chosen_uplift(chosen: np.ndarray, rules: RuleSet, uplift_of) -> np.ndarray:
    """Each row's uplift for the action its rule gives (NaN where no rule fired)."""
    out = np.full(len(chosen), np.nan)
    for index in np.unique(chosen[chosen >= 0]):
        rows = chosen == index
        out[rows] = uplift_of(rules.rules[index].action)[rows]
    return out


def _set_uplift(frame: pd.DataFrame, uplift: np.ndarray, contact_cost: float) -> None:
    """Put ``uplift`` and ``incremental_value`` for one action (per row) into the frame, in place."""
    frame[UPLIFT] = uplift
    frame["incremental_value"] = uplift * frame["expected_order_value"].to_numpy(dtype=float) - contact_cost


def _campaign_dates(frame: pd.DataFrame, campaign_date) -> np.ndarray:
    """The campaign date of every row: ``campaign_date`` when given, else the row's ``as_of`` (midnight)."""
    if campaign_date is not None:
        day = pd.Timestamp(campaign_date).normalize()
        return np.full(len(frame), day.to_datetime64().astype("datetime64[ns]"))
    as_of = pd.to_datetime(frame["as_of"], errors="coerce").astype("datetime64[ns]").dt.normalize()
    if as_of.isna().any():
        raise InputError(f"scores: as_of is empty in row {int(np.flatnonzero(as_of.isna().to_numpy())[0]) + 1}; "
                         "give a campaign date")
    return as_of.to_numpy()


def _days_text(days: int) -> str:
    return "today" if days == 0 else f"{days} day{'s' if days != 1 else ''} ago"


def _held_back(
    customer_ids: np.ndarray, chosen: np.ndarray, dates: np.ndarray, rules: RuleSet, contacts: pd.DataFrame
) -> np.ndarray:
    """Why each customer with an action is not sent (None when sent): cooldowns and the contact cap."""
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
        when = _days_text(int(record.days_ago))
        text = (f"contacted {when} for {record.action}" if record.group == TREATMENT
                else f"in the holdout of {record.action} {when}")
        reasons.setdefault(int(record.row), []).append(f"{text} (cooldown {int(record.cooldown)} days)")
    if cap is not None:
        sent = pairs[(pairs["group"] == TREATMENT) & (pairs["days_ago"] < cap.days)]
        counts = sent.groupby("row").size()
        for row, count in counts[counts >= cap.contacts].items():
            reasons.setdefault(int(row), []).append(
                f"contacted {int(count)} time{'s' if count != 1 else ''} in the last {cap.days} days (cap {cap.contacts})"
            )
    for row, texts in reasons.items():
        out[row] = "; ".join(texts)
    return out


def _join_features(frame: pd.DataFrame, features: pd.DataFrame | None) -> pd.DataFrame:
    if features is None:
        return frame
    if "customer_id" not in features.columns:
        raise InputError("features: missing column customer_id")
    keys = features["customer_id"].astype(str)
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        raise InputError(f"features: customer_id '{duplicated.iloc[0]}' has more than one row; give one snapshot row per customer")
    extra = [c for c in features.columns if c not in frame.columns and c not in DERIVED_COLUMNS]
    right = features[extra].set_axis(keys.to_numpy(), axis=0)
    joined = right.reindex(frame["customer_id"].astype(str).to_numpy()).reset_index(drop=True)
    return pd.concat([frame, joined], axis=1)


def _add_derived(frame: pd.DataFrame, contact_cost: float, clv_reference: np.ndarray | None = None) -> pd.DataFrame:
    clv = pd.to_numeric(frame["clv"], errors="coerce").astype(float)
    if clv_reference is not None and len(clv_reference):
        reference = np.asarray(clv_reference, dtype=float)
        clv_pct = pd.Series(np.searchsorted(reference, clv.to_numpy(), side="right") / len(reference), index=clv.index)
        clv_pct = clv_pct.where(clv.notna())
    else:
        clv_pct = clv.rank(pct=True, method="average")
    revenue = pd.to_numeric(frame["expected_revenue"], errors="coerce").astype(float).to_numpy()
    orders = pd.to_numeric(frame["expected_orders"], errors="coerce").astype(float).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        per_order = np.where(orders > 0, revenue / orders, np.nan)
    if "avg_order_value" in frame.columns:
        fallback = pd.to_numeric(frame["avg_order_value"], errors="coerce").astype(float).to_numpy()
        per_order = np.where(orders > 0, per_order, fallback)
    p = pd.to_numeric(frame["p_repurchase"], errors="coerce").astype(float).to_numpy()
    return frame.assign(
        clv_pct=clv_pct,
        expected_order_value=per_order,
        expected_value=p * per_order - contact_cost,
    )


def _add_replenishment(frame: pd.DataFrame, replenishment: pd.DataFrame | None) -> pd.DataFrame:
    n = len(frame)
    empty = {c: np.full(n, np.nan) for c in REPLENISH_COLUMNS}
    empty["replenish_category"] = pd.Series(np.full(n, None, dtype=object), dtype="str")
    empty["replenish_remind_on"] = pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns]")
    if replenishment is None:
        return frame.assign(**empty)
    missing = [c for c in REPLENISHMENT_REQUIRED if c not in replenishment.columns]
    if missing:
        raise InputError(f"replenishment: missing column(s) {', '.join(missing)}; expected the replenish output")
    table = pd.DataFrame(
        {
            "customer_id": replenishment["customer_id"].astype(str),
            "replenish_category": replenishment["category"].astype(str),
            "replenish_days_p50": pd.to_numeric(replenishment["next_purchase_days_p50"], errors="coerce").astype(float),
            "replenish_p_within_horizon": pd.to_numeric(replenishment["p_within_horizon"], errors="coerce").astype(float),
            "replenish_remind_on": pd.to_datetime(replenishment["remind_on"], errors="coerce").astype("datetime64[ns]"),
            "last_purchase": pd.to_datetime(replenishment["last_purchase"], errors="coerce").astype("datetime64[ns]"),
            "gap_days": (
                pd.to_numeric(replenishment["gap_days"], errors="coerce").astype(float)
                if "gap_days" in replenishment.columns
                else np.nan
            ),
        }
    )
    # One category per customer: among the ones likely to be bought again within the horizon
    # (p >= 0.5) if any, the soonest due, then the likelier; a long-abandoned category that is
    # "overdue" must not hide one that is really due. Stable sort keeps file order on ties.
    table = table.assign(_unlikely=~(table["replenish_p_within_horizon"] >= 0.5)).sort_values(
        ["_unlikely", "replenish_days_p50", "replenish_p_within_horizon"],
        ascending=[True, True, False],
        na_position="last",
        kind="mergesort",
    )
    urgent = table.drop_duplicates("customer_id", keep="first").drop(columns="_unlikely").set_index("customer_id")
    picked = urgent.reindex(frame["customer_id"].astype(str).to_numpy()).reset_index(drop=True)
    as_of = pd.to_datetime(frame["as_of"]).astype("datetime64[ns]")
    since = (as_of - picked["last_purchase"]).dt.days.astype(float)
    gap = picked["gap_days"].where(picked["gap_days"].notna(), since + picked["replenish_days_p50"])
    return frame.assign(
        replenish_category=picked["replenish_category"],
        replenish_days_p50=picked["replenish_days_p50"],
        replenish_p_within_horizon=picked["replenish_p_within_horizon"],
        replenish_remind_on=picked["replenish_remind_on"],
        replenish_days_since_last=since,
        replenish_gap_days=gap,
    )


def _is_feature_name(name: str) -> bool:
    return name in FEATURES or any(p.match(name) for p in _FEATURE_PATTERNS)


def _unknown_column(frame: pd.DataFrame, name: str, label: str) -> str:
    """Why ``name`` (shown as ``label``) cannot be used, with the nearest column names."""
    if _is_feature_name(name):
        return f"{label} is a feature column the data does not have; give the feature snapshot (features=) that has it"
    columns = list(frame.columns)
    close = difflib.get_close_matches(name, columns, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {label}{hint}; columns: {', '.join(columns)}"


def _evaluate_when(frame: pd.DataFrame, rule: Rule, position: int, source: str) -> np.ndarray:
    where = f"{source}: rule {position} '{rule.name}': when"
    tree = _condition_tree(rule.when)
    for name in dict.fromkeys(node.id for node in ast.walk(tree) if isinstance(node, ast.Name)):
        if name not in frame.columns:
            raise RulesError(f"{where}: " + _unknown_column(frame, name, f"column '{name}'"))
    try:
        _check_arithmetic(tree.body, lambda name: _column_kind(frame[name]))
    except ValueError as exc:
        raise RulesError(f"{where}: {exc}") from None
    if frame.empty:
        return np.zeros(0, dtype=bool)
    try:
        result = frame.eval(_expression(rule.when), engine="python", local_dict={}, global_dict={})
    except Exception as exc:  # pandas raises many types for bad operand combinations
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RulesError(f"{where}: cannot be evaluated ({detail})") from None
    if isinstance(result, (bool, np.bool_)):
        return np.full(len(frame), bool(result))
    if isinstance(result, pd.Series) and (pd.api.types.is_bool_dtype(result.dtype)):
        return result.fillna(False).to_numpy(dtype=bool)
    kind = getattr(result, "dtype", type(result).__name__)
    raise RulesError(f"{where}: gives {kind} values, not true/false; write a comparison such as 'clv_pct >= 0.9'")


def _check_reason_columns(frame: pd.DataFrame, rule: Rule, position: int, source: str) -> None:
    for clause in rule.clauses:
        for _, field, spec in _parse_template(clause):
            if field is not None and field not in frame.columns and not _is_feature_name(field):
                shown = "{" + field + (f":{spec}" if spec else "") + "}"
                problem = _unknown_column(frame, field, f"placeholder {shown}")
                raise RulesError(f"{source}: rule {position} '{rule.name}': reason: {problem}")


def _within_budget(chosen: np.ndarray, expected_value: np.ndarray, budget: Budget) -> np.ndarray:
    candidates = np.flatnonzero((chosen >= 0) & (expected_value > 0))
    order = candidates[np.argsort(-expected_value[candidates], kind="stable")]
    keep = order if budget.max_contacts is None else order[: budget.max_contacts]
    out = np.full_like(chosen, -1)
    out[keep] = chosen[keep]
    return out


def _is_missing(value: object) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _format_value(value: object, spec: str) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if not spec:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return str(int(value))
        if isinstance(value, pd.Timestamp) and value == value.normalize():
            return value.date().isoformat()
        return str(value)
    return format(value, spec)


def _render_reasons(rows: pd.DataFrame, rule: Rule, position: int, source: str) -> list[str]:
    """One reason per row: clauses with a missing value are left out (see module docstring)."""
    parsed = [_parse_template(clause) for clause in rule.clauses]
    rendered: list[list[tuple[str, bool]]] = [[] for _ in range(len(rows))]
    for parts in parsed:
        pieces: list[list[str]] = [[] for _ in range(len(rows))]
        complete = np.ones(len(rows), dtype=bool)
        for literal, field, spec in parts:
            for piece in pieces:
                piece.append(literal)
            if field is None:
                continue
            values = rows[field].tolist() if field in rows.columns else [None] * len(rows)
            for i, value in enumerate(values):
                if _is_missing(value):
                    complete[i] = False
                    pieces[i].append(MISSING_TEXT)
                    continue
                try:
                    pieces[i].append(_format_value(value, spec))
                except (ValueError, TypeError) as exc:
                    raise RulesError(
                        f"{source}: rule {position} '{rule.name}': reason: cannot format {{{field}:{spec}}} "
                        f"with value {value!r} ({exc})"
                    ) from None
        for i, piece in enumerate(pieces):
            rendered[i].append(("".join(piece), bool(complete[i])))
    out = []
    for clauses in rendered:
        kept = [text for text, complete in clauses if complete]
        out.append("; ".join(kept if kept else [text for text, _ in clauses]))
    return out


# --------------------------------------------------------------------------- writing


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
    bad = sorted({a for a in actions.unique() if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", a) or a == "summary"})
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
        _write_csv(summary, tmps[0] / "summary.csv")
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
