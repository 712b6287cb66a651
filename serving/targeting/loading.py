"""Reading a rules YAML file into a checked RuleSet, with bounds on its size, nesting and aliases."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from features.common.inputs import read_small_file
from serving.targeting.schema import RuleSet, RulesError, validation_message

DEFAULT_RULES = "default_rules.yaml"
MAX_RULES_FILE_BYTES = 1_000_000
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 20_000


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load and check a rules YAML file; ``None`` loads the shipped default rules.

    Raises
    ------
    RulesError
        One line naming the file, the rule and the field, for any problem.
    """
    if path is None:
        origin = DEFAULT_RULES
        text = resources.files("serving.targeting").joinpath(DEFAULT_RULES).read_text(encoding="utf-8")
    else:
        origin = str(path)
        raw = read_small_file(path, "rules", MAX_RULES_FILE_BYTES, error=RulesError,
                              too_large=f"larger than {MAX_RULES_FILE_BYTES // 1_000_000} MB; a rules file is a few kilobytes")
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
        raise RulesError(f"{origin}: {validation_message(exc, data)}") from None
    ruleset._source = origin
    return ruleset


def _kind(value: object) -> str:
    kinds = {list: "a list", str: "text", int: "a number", float: "a number", bool: "true/false"}
    return kinds.get(type(value), type(value).__name__)


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
