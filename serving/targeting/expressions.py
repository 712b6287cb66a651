"""The ``when`` language: a checked subset of Python that pandas evaluates on score rows."""

from __future__ import annotations

import ast
from typing import Callable

import numpy as np
import pandas as pd

from serving.targeting.columns import unknown_column
from training.segments import REMINDER

MAX_WHEN_CHARS = 2_000
MAX_WHEN_TERMS = 500
MAX_WHEN_DEPTH = 50  # pandas' evaluator recurses a few frames per level: 50 stays far from the recursion limit

THRESHOLDS = {
    "REMIND_WITHIN_DAYS": REMINDER.within_days,
    "MIN_P_WITHIN_HORIZON": REMINDER.min_p_within_horizon,
}
"""Names a condition may use for the shipped cut points (:data:`training.segments.REMINDER`), so
that the default rules and the code that counts due reminders share one number."""

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


def condition_columns(when: str) -> list[str]:
    """Column names in a condition (not the :data:`THRESHOLDS`), after checking it only uses the allowed syntax."""
    return _column_names(condition_tree(when))


def condition_tree(when: str) -> ast.Expression:
    """The syntax tree of a condition, checked: size, allowed syntax, no arithmetic on text constants."""
    when = _one_line(when)
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
    _check_arithmetic(tree.body, lambda name: "number" if name in THRESHOLDS else "unknown")
    return tree


def evaluate_condition(frame: pd.DataFrame, when: str) -> np.ndarray:
    """True/false per row of ``frame``; a ValueError (one line) names the first problem.

    Column names, arithmetic on text columns and a true/false result are checked here,
    against the frame, before pandas evaluates anything.
    """
    tree = condition_tree(when)
    for name in _column_names(tree):
        if name not in frame.columns:
            raise ValueError(unknown_column(frame, name, f"column '{name}'"))
    _check_arithmetic(tree.body, lambda name: "number" if name in THRESHOLDS else _column_kind(frame[name]))
    if frame.empty:
        return np.zeros(0, dtype=bool)
    try:
        result = frame.eval(_one_line(when), engine="python", local_dict={}, global_dict={}, resolvers=(THRESHOLDS,))
    except Exception as exc:  # pandas raises many types for bad operand combinations
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot be evaluated ({detail})") from None
    if isinstance(result, (bool, np.bool_)):
        return np.full(len(frame), bool(result))
    if isinstance(result, pd.Series) and (pd.api.types.is_bool_dtype(result.dtype)):
        return result.fillna(False).to_numpy(dtype=bool)
    kind = getattr(result, "dtype", type(result).__name__)
    raise ValueError(f"gives {kind} values, not true/false; write a comparison such as 'clv_pct >= 0.9'")


def _column_names(tree: ast.Expression) -> list[str]:
    names = (node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    return [name for name in dict.fromkeys(names) if name not in THRESHOLDS]


def _one_line(when: str) -> str:
    """A condition on one line: pandas would read a line break as a new statement."""
    return " ".join(when.splitlines()).strip()


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
