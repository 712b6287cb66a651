"""The rules file's schema: Rule, RuleSet, Budget and ContactCap as pydantic models, and RulesError."""

from __future__ import annotations

from typing import Annotated, Literal

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

from features.contacts import DEFAULT_HOLDOUT_SHARE
from features.common.errors import InputError
from serving.targeting.expressions import condition_columns
from serving.targeting.reasons import check_clauses, placeholder_columns

MAX_RULES = 200
ACTION_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
"""An action names its audience file: lower-case letters, digits, _ and -."""
SUMMARY = "summary"
"""The name of summary.csv beside the audience files, so no action may take it."""


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
    action: Annotated[str, StringConstraints(strict=True, pattern=f"^{ACTION_PATTERN}$")]
    reason: Annotated[list[Text], BeforeValidator(_as_clauses)]
    reason_zh: Annotated[list[Text], BeforeValidator(_as_clauses)] | None = None
    description: str | None = None
    holdout: float = Field(default=DEFAULT_HOLDOUT_SHARE, ge=0, lt=1, allow_inf_nan=False)
    cooldown_days: int | None = Field(default=None, ge=1, le=3650)

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: str) -> str:
        condition_columns(when)
        return when

    @field_validator("action")
    @classmethod
    def _check_action(cls, action: str) -> str:
        if action == SUMMARY:
            raise ValueError(f"'{SUMMARY}' is taken by {SUMMARY}.csv; choose another action name")
        return action

    @field_validator("reason", "reason_zh")
    @classmethod
    def _check_reason(cls, reason: list[str] | None) -> list[str] | None:
        return None if reason is None else check_clauses(reason)

    @property
    def clauses(self) -> list[str]:
        """The reason's clauses (a single text is one clause)."""
        return list(self.reason)

    def clauses_in(self, lang: str) -> list[str]:
        """The reason's clauses in ``lang``: ``reason_<lang>`` when the rule has one, else ``reason``."""
        translated = getattr(self, f"reason_{lang}", None) if lang != "en" else None
        return list(translated) if translated else self.clauses

    def columns(self) -> list[str]:
        """Columns the condition and the reasons (in every language) name, in order of appearance."""
        translated = placeholder_columns(self.reason_zh) if self.reason_zh else []
        return list(dict.fromkeys(condition_columns(self.when) + placeholder_columns(self.clauses) + translated))


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

    def where(self, position: int) -> str:
        """How messages name the rule at ``position`` (from 1): the file, the position and the name."""
        return f"{self.source}: rule {position} '{self.rules[position - 1].name}'"


def validation_message(exc: ValidationError, data: dict) -> str:
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
