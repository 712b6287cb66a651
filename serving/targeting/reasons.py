"""Reason templates: checking placeholders and format specs when rules load, and rendering one reason per row."""

from __future__ import annotations

import math
import re
import string

import numpy as np
import pandas as pd

from serving.targeting.columns import is_feature_name, unknown_column
from training.i18n import N_, Language, language

MISSING_TEXT = N_("unknown")
# Columns whose values are machine names: a reason in another language shows their label
# (lifecycle_stage 'at_risk' -> 衰退期), under the label's context in the catalog.
LABELLED_COLUMNS = {"lifecycle_stage": "lifecycle_stage", "rfm_segment": "rfm_segment", "member_tier": "member_tier",
                    "predicted_tier": "member_tier", "action": "action"}
MAX_REASON_CHARS = 1_000
MAX_REASON_PLACEHOLDERS = 20
MAX_SPEC_CHARS = 50
MAX_SPEC_WIDTH = 50
MAX_SPEC_PRECISION = 20

# Python's format spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_NUMBER_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?", re.DOTALL
)
# A date spec goes to strftime: text and %-directives (with an optional glibc flag such as
# %-d), but no field widths (%1000000000Y).
_DATE_SPEC = re.compile(r"(?:[^%]|%[-_0^#]?[A-Za-z%])*", re.DOTALL)


def check_clauses(clauses: list[str]) -> list[str]:
    """``clauses`` when they are within the limits and every placeholder is well formed; else a ValueError."""
    if not clauses:
        raise ValueError("give a text or a list of clauses")
    size = sum(len(clause) for clause in clauses)
    if size > MAX_REASON_CHARS:
        raise ValueError(f"{size:,} characters; a reason has at most {MAX_REASON_CHARS:,} over all its clauses")
    placeholders = len(placeholder_columns(clauses))
    if placeholders > MAX_REASON_PLACEHOLDERS:
        raise ValueError(f"{placeholders} placeholders; a reason has at most {MAX_REASON_PLACEHOLDERS}")
    return clauses


def placeholder_columns(clauses: list[str]) -> list[str]:
    """The column of every placeholder in ``clauses``, in order (repeats kept)."""
    return [field for clause in clauses for _, field, _ in parse_template(clause) if field is not None]


def check_placeholder_columns(frame: pd.DataFrame, clauses: list[str]) -> None:
    """Raise a ValueError for the first placeholder naming neither a column of ``frame`` nor a feature column."""
    for clause in clauses:
        for _, field, spec in parse_template(clause):
            if field is not None and field not in frame.columns and not is_feature_name(field):
                shown = "{" + field + (f":{spec}" if spec else "") + "}"
                raise ValueError(unknown_column(frame, field, f"placeholder {shown}"))


def parse_template(clause: str) -> list[tuple[str, str | None, str]]:
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


def render_reasons(rows: pd.DataFrame, clauses: list[str], lang: Language | None = None) -> list[str]:
    """One reason per row: clauses with a missing value are left out (see the package docs); a ValueError
    names a value that its format spec cannot format.

    In a language other than English (``lang``), values of :data:`LABELLED_COLUMNS` without a format
    spec show as their labels, and a missing value as the word for "unknown".
    """
    lang = lang or language("en")
    missing_text = lang.gettext(MISSING_TEXT)
    parsed = [parse_template(clause) for clause in clauses]
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
                    pieces[i].append(missing_text)
                    continue
                if not spec and field in LABELLED_COLUMNS and not lang.is_default:
                    pieces[i].append(lang.label(LABELLED_COLUMNS[field], value))
                    continue
                try:
                    pieces[i].append(_format_value(value, spec))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"cannot format {{{field}:{spec}}} with value {value!r} ({exc})") from None
        for i, piece in enumerate(pieces):
            rendered[i].append(("".join(piece), bool(complete[i])))
    out = []
    for texts in rendered:
        kept = [text for text, complete in texts if complete]
        out.append(lang.gettext("; ").join(kept if kept else [text for text, _ in texts]))
    return out


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
