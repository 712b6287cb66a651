"""Languages (DESIGN.md, "Languages"): the catalog covers every message, English stays as it was."""

from __future__ import annotations

import datetime as dt
import re
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from score_rows import experiment_rows
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

    method_map = [("features/**.py", "python"), ("serving/**.py", "python"), ("training/**.py", "python"),
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


def test_fit_status_labels_name_the_statuses_the_fits_give():
    from training import btyd

    assert set(btyd.FIT_STATUS_LABELS) == {btyd.INTERIOR, btyd.NO_DROPOUT, btyd.DROPOUT_NOT_IDENTIFIED,
                                           btyd.MEAN_SPEND, btyd.GAMMA_GAMMA_NOT_FITTED}


# --- Chinese output holds none of the English sentences it replaced --------------------------------

def _cjk(text: str) -> bool:
    return re.search(r"[\u4e00-\u9fff]", text) is not None


MESSY_SUMMARY = {
    "source": "orders.csv", "customers": 1, "orders": 1234, "first_order": "2024-01-01", "last_order": "2025-06-30",
    "revenue": 98765.4, "returns_dropped": 2, "columns": [], "ignored_columns": ["description", ""],
    "duplicate_rows_dropped": 3, "excluded_products": ["POST", "DOT"], "products_not_found": ["DOT"],
    "excluded_lines": 4, "excluded_amount": 21.0, "credit_invoices": 2, "credit_lines_netted": 5,
    "credit_lines_dropped": 1, "credit_amount_dropped": 42.0, "orders_reversed": 1, "outlier_orders": 1,
    "outlier_cap": 5000.0, "outlier_amount_capped": 1.0,
    "heavy_customers": {"w1": 300, "w2": 250, "w3": 200, "w4": 150},
}


def test_the_order_log_line_in_chinese_keeps_its_numbers_and_drops_the_english():
    from english import english_words
    from features.orders import describe_summary

    english = describe_summary(MESSY_SUMMARY)
    assert english == describe_summary(MESSY_SUMMARY, Language("en"))  # the same line, whoever says it
    assert english.startswith("order log orders.csv: 1 customer, 1,234 orders, 2024-01-01 to 2025-06-30")
    chinese = describe_summary(MESSY_SUMMARY, Language("zh"))
    assert chinese.startswith("订单日志 orders.csv：1 位客户、1,234 笔订单，2024年1月1日 至 2025年6月30日，销售额 98,765.40")
    for number in ("21.00", "42.00", "5,000.00", "w1（300 笔订单）", "POST", "description"):
        assert number in chinese, number
    assert english_words(chinese, kept={"POST", "DOT", "description"}) == [], chinese


def test_measure_verdicts_in_chinese_say_the_same_numbers():
    from english import english_words
    from training.measure import compare, verdict_summary

    rng = np.random.default_rng(3)

    def rows(*args):
        return experiment_rows(rng, *args)

    blocks = [compare(rows(*rates), contact_cost=0.5, planned_holdout=0.5)
              for rates in ((0.2, 0.2), (0.3, 0.2), (0.15, 0.25), (0.0, 0.0), (0.3, 0.2, 10, 10))]
    blocks.append(compare(rows(0.3, 0.2, 3000, 1000), contact_cost=0.5, planned_holdout=0.5))  # sample-ratio mismatch
    assert {b["verdict"] for b in blocks} == {"significant", "not_significant", "too_small"}
    assert blocks[-1]["srm"]["mismatch"]
    for block in blocks:
        assert verdict_summary(block) == block["summary"]  # the JSON's English sentence, as it was
        chinese = verdict_summary(block, "zh")
        assert _cjk(chinese) and english_words(chinese) == [], chinese
        low, high = block["rate_diff_ci95"] or (None, None)
        if block["verdict"] != "too_small":
            assert f"{100 * low:+.1f}" in chinese and f"{100 * high:+.1f}" in chinese


def test_model_explanations_in_chinese():
    from english import english_words
    from training.btyd import DROPOUT_NOT_IDENTIFIED, MEAN_SPEND, NO_DROPOUT, fit_status_label, fit_status_meaning
    from training.model import btyd_only_reason

    for status in ("interior", NO_DROPOUT, DROPOUT_NOT_IDENTIFIED, MEAN_SPEND, "penalized 0.01"):
        assert fit_status_label(status) == status
        for text in (fit_status_meaning(status, "zh"), fit_status_label(status, "zh")):
            assert _cjk(text) and english_words(text) == [], text
    assert "0.01" in fit_status_meaning("penalized 0.01", "zh")
    short = {"kind": "short_history", "days": 272, "cutoff": "1997-09-30", "history_days": 30, "horizon_days": 273,
             "unlock": "1998-03-30", "more_days": 181}
    few = {"kind": "few_repeat_buyers", "usable": 1, "origins": 3, "first": "2025-01-01", "last": "2025-03-01",
           "repeat_buyers": 20}
    assert btyd_only_reason(short) == (
        "BTYD-only: 272 days of orders before 1997-09-30; the LightGBM model needs two training origins, each with 30 "
        "days of history and a whole 273-day label window before the cutoff; a cutoff from 1998-03-30 (181 more days "
        "of orders) would unlock it")
    for why in (short, few):
        chinese = btyd_only_reason(why, "zh")
        assert _cjk(chinese) and english_words(chinese) == [], chinese
    assert "1998年3月30日" in btyd_only_reason(short, "zh") and "181" in btyd_only_reason(short, "zh")


def test_the_uplift_table_in_chinese(monkeypatch):
    from rich.console import Console

    import serving.cli as cli
    from english import english_words

    def block(value):
        return {"qini_auc": value, "uplift_at_10": value, "uplift_at_30": value, "incremental_buyers_at_30": 10 * value,
                "incremental_orders_at_30": 20 * value}

    span = {"first": "2025-01-03", "last": "2025-03-01", "contacts": 590, "holdout": 60}
    report = {"window_days": 30, "learn": span, "held_out": span, "ratio_at_30": 1.5,
              "final": {"contacts": 1052, "actions": ["win_back", "churn_warning"]},
              "rankings": {"uplift": block(0.12), "p_repurchase": block(0.08), "random": block(0.02)}}
    printed = {}
    for code in ("en", "zh"):
        console = Console(record=True, width=200)
        monkeypatch.setattr(cli, "out", console)
        cli._print_uplift(report, Language(code))
        printed[code] = console.export_text()
    assert "uplift@30%: 1.50x ranking by p_repurchase; learned from 590 contacts" in printed["en"]
    assert "+12.0 pts" in printed["en"] and "win_back, churn_warning" in printed["en"]
    assert "+12.0 个百分点" in printed["zh"] and "沉睡召回、流失预警" in printed["zh"]
    assert english_words(printed["zh"]) == [], printed["zh"]


def test_why_there_is_no_backtest_in_chinese():
    from english import english_words
    from training.backtest import backtest_note
    from training.btyd import thin_data_reason

    thin = {"customers": 50, "repeat_customers": 0, "needed": 20, "model": "BG/NBD"}
    assert thin_data_reason(thin) == ("all 50 customers are one-time buyers, so BG/NBD cannot estimate repeat buying or "
                                      "churn: use a later cutoff or a longer order history")
    for why in (thin, {**thin, "repeat_customers": 3}, {"kind": "truth_after_last_order", "last_order": "2025-12-31"}):
        report = {"backtest_note": "no backtest at 2025-10-02 (90 days before the cutoff): ...",
                  "backtest_note_why": {"cutoff": "2025-10-02", "horizon_days": 90, **why}}
        assert backtest_note(report) == report["backtest_note"]  # English: the line backtest.json keeps
        chinese = backtest_note(report, "zh")
        assert chinese.startswith("没有做 2025-10-02 的回测") and english_words(chinese) == [], chinese
    # a note without its numbers (an older backtest.json) is shown as it is
    assert backtest_note({"backtest_note": "no backtest at 2025-10-02: x"}, "zh") == "no backtest at 2025-10-02: x"


def test_why_replenishment_is_skipped_in_chinese():
    from english import english_words
    from training.replenish import replenishment_data_reason

    young = {"kind": "log_too_young", "cutoff": "2025-03-01", "first": "2025-01-01", "horizon_days": 90,
             "earliest": "2025-05-01"}
    short = {"kind": "too_little_history", "first_origin": "2024-06-01", "last_origin": "2024-12-01", "horizon_days": 90,
             "cutoff": "2025-03-01", "steps": 5, "step_days": 30}
    assert replenishment_data_reason(young).startswith("too few (customer, category) pairs to learn replenishment "
                                                       "from before 2025-03-01: the log starts 2025-01-01")
    for why in (young, short):
        chinese = replenishment_data_reason(why, "zh")
        assert english_words(chinese) == [] and why["cutoff"] in chinese, chinese
