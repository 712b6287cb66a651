"""Languages (DESIGN.md, "Languages"): the catalog covers every message, English stays as it was."""

from __future__ import annotations

import datetime as dt
import re
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.i18n import LOCALE_DIR, Language, language, resolve_language
from training.segments import LIFECYCLE_STAGES, RFM_SEGMENTS, SEGMENT_MEANINGS

ROOT = Path(__file__).resolve().parents[1]
ZH_PO = LOCALE_DIR / "zh" / "LC_MESSAGES" / "repurchase.po"


def test_the_language_comes_from_the_flag_then_the_environment_then_english(monkeypatch):
    monkeypatch.delenv("REPURCHASE_LANG", raising=False)
    assert resolve_language(None) == "en"
    monkeypatch.setenv("REPURCHASE_LANG", "zh_CN.UTF-8")
    assert resolve_language(None) == "zh"
    assert language().code == "zh"  # read at each call, not once
    assert resolve_language("en") == "en"
    monkeypatch.setenv("REPURCHASE_LANG", "de")
    with pytest.raises(ValueError, match=r"REPURCHASE_LANG: 'de' is not a language offered here; choose one of en, zh"):
        resolve_language(None)
    with pytest.raises(ValueError, match=r"--lang: 'fr' is not"):
        resolve_language("fr")


FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@given(FINITE)
def test_english_numbers_are_what_python_formatting_gave(value):
    en = Language("en")
    assert en.count(value) == f"{value:,.0f}"
    assert en.decimal(value) == f"{value:,.3f}"
    assert en.decimal(value, 1) == f"{value:,.1f}"
    assert en.percent(value) == f"{100 * value:,.1f}%"
    assert en.signed_percent(value, 0) == f"{100 * value:+,.0f}%"
    assert en.signed(value) == f"{value:+,.3f}"


def test_missing_numbers_are_a_dash_and_dates_follow_the_locale():
    zh, en = Language("zh"), Language("en")
    assert [zh.count(None), zh.percent(float("nan")), en.decimal("x")] == ["–", "–", "–"]
    day = dt.date(2025, 6, 30)
    assert (en.date(day), zh.date(day)) == ("2025-06-30", "2025年6月30日")
    assert zh.count(1234567) == "1,234,567" and zh.percent(0.341) == "34.1%"


def test_labels_of_machine_names_in_chinese_and_english():
    zh, en = Language("zh"), Language("en")
    assert [zh.label("lifecycle_stage", s) for s in LIFECYCLE_STAGES] == ["新客", "稳定期", "衰退期", "睡眠期", "流失"]
    assert [zh.label("member_tier", t) for t in ("silver", "gold", "diamond")] == ["银卡", "金卡", "钻石"]
    assert all(re.search(r"[\u4e00-\u9fff]", zh.label("rfm_segment", s)) for s in RFM_SEGMENTS)
    assert all(zh.gettext(meaning) != meaning for meaning in SEGMENT_MEANINGS.values())
    assert en.label("rfm_segment", "potential_loyalist") == "potential loyalist"
    # a user's own action has no label: it shows as its words, in any language
    assert zh.label("action", "birthday_coupon") == "birthday coupon"


def _fields(message: str) -> set[str]:
    named = {field for _, field, _, _ in string.Formatter().parse(message) if field}
    return named | set(re.findall(r"%\((\w+)\)s", message))


def test_every_message_of_the_code_has_a_chinese_translation_with_the_same_placeholders():
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    method_map = [("serving/**.py", "python"), ("training/**.py", "python"),
                  ("serving/templates/**.j2", "jinja2")]
    options = {"serving/templates/**.j2": {"extensions": "jinja2.ext.i18n"}}
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2), "N_": None,
                "NC_": ((1, "c"), 2)}
    used = {(context, message) for _file, _line, message, _comments, context in
            extract_from_dir(str(ROOT), method_map, options, keywords=keywords)}
    assert len(used) > 150  # the extraction saw the report, the plots and the CLI
    with ZH_PO.open("rb") as source:
        catalog = read_po(source)
    assert {(c, m) for c, m in used if c} >= {("lifecycle_stage", "churned"), ("member_tier", "diamond")}
    missing = []
    for context, message in used:
        entry = catalog.get(message, context=context)
        translation = entry.string if entry is not None else None
        if not translation or (isinstance(translation, tuple) and not all(translation)):
            missing.append(message)
            continue
        source_text = message[0] if isinstance(message, tuple) else message
        for text in translation if isinstance(translation, tuple) else (translation,):
            assert _fields(text) == _fields(source_text), (message, text)
    assert missing == []


def test_no_compiled_catalog_is_kept_in_the_repository():
    assert list(LOCALE_DIR.rglob("*.mo")) == []
