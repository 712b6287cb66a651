"""The HTML report: sections in order, numbers for humans, self-contained, escaped, atomic; and in a real browser."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from serving.report import SECTIONS, render_report
from training.segments import SEGMENT_MEANINGS

CHROMIUM = Path("/usr/bin/chromium")
INJECTED = "<script>document.body.dataset.pwned = 'yes'</script>"


def _report() -> dict:
    """A backtest report shaped like ``run_backtest``'s, small and made by hand."""
    return {
        "source": "hand-made",
        "cutoff": "2025-03-31",
        "horizon_days": 60,
        "n_customers": 23570,
        "base_rate": 0.1772,
        "model": {
            "auc": 0.77538, "pr_auc": 0.5083, "brier": 0.1163, "log_loss": 0.3828, "ece": 0.0208,
            "lift_top10": 3.409, "capture_top10": 0.3409,
            "revenue": {"gini": 0.6799, "spearman": 0.3649, "decile_mape": 0.2539},
            "timing": {"p50_mae_days": 24.56, "coverage_p10_p90": 0.9103},
        },
        "bgnbd": {
            "auc": 0.7644, "pr_auc": 0.5026, "brier": 0.1174, "log_loss": 0.3877, "ece": 0.0252,
            "lift_top10": 3.3996, "capture_top10": 0.33996,
            "params": {"r": 0.2516, "alpha": 4.7889, "a": 0.7234, "b": 2.1611},
            "time_unit": "week", "log_likelihood": -95368.44,
            "revenue": {"gini": 0.6405, "spearman": 0.3492, "decile_mape": 0.2561},
            "timing": {"p50_mae_days": 26.30, "coverage_p10_p90": 0.9094},
        },
        "recency_only": {"auc": 0.7632, "pr_auc": 0.4474, "lift_top10": 3.136, "capture_top10": 0.3136},
        "holdout_orders": {"actual": 7710, "bgnbd": 6304.52, "model": 7724.1},
    }


def _png(path: Path, color: str) -> Path:
    fig = Figure(figsize=(1.2, 0.9))
    fig.add_subplot().plot([0, 1], [0, 1], color=color)
    fig.savefig(path, format="png", dpi=40)
    return path


@pytest.fixture(scope="module")
def plot_paths(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plots")
    return {"roc": _png(folder / "roc.png", "tab:blue"), "gain": _png(folder / "gain.png", "tab:orange")}


@pytest.fixture(scope="module")
def scores() -> pd.DataFrame:
    """50 scored customers with round numbers, so the page's totals are known."""
    n = 50
    return pd.DataFrame({
        "customer_id": [f"c{i:03d}" for i in range(n)],
        "as_of": pd.Timestamp("2025-06-30"),
        "horizon_days": 60,
        "p_alive": 0.9,
        "p_repurchase": [0.2] * 25 + [0.6] * 25,  # 20 expected repurchasers
        "expected_orders": 0.5,  # 25 orders
        "expected_revenue": 250.0,  # 12,500
        "clv": 1000.0 + np.arange(n),  # 51,225; the highest CLV is c049
        "next_order_days_p10": 5.0,
        "next_order_days_p50": [20.0] * 49 + [np.nan],
        "next_order_days_p90": np.nan,
        "churn_risk": 0.1,
        "rfm_segment": ["champions"] * 20 + ["lost"] * 30,
        "lifecycle_stage": ["churned"] * 10 + ["active"] * 30 + ["new"] * 10,
        "model_version": "7",
    })


@pytest.fixture(scope="module")
def targeted(scores) -> pd.DataFrame:
    """Rule output: 12 reminders whose reasons differ only in their numbers, 6 win-backs, the rest untouched."""
    frame = scores.assign(action=None, reason=None, rule=None)
    reminders = frame.index[:12]
    frame.loc[reminders, "action"] = "replenishment_reminder"
    frame.loc[reminders, "rule"] = "due_soon"
    frame.loc[reminders, "reason"] = [f"next order due in {d} days" for d in range(3, 15)]
    win_back = frame.index[40:46]
    frame.loc[win_back, "action"] = "win_back"
    frame.loc[win_back, "rule"] = "lapsed_valuable"
    frame.loc[win_back, "reason"] = f"lapsed but valuable {INJECTED}"
    return frame


class _Page(HTMLParser):
    """Sections (id, h2 text, text) and table rows (cell texts) of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[dict] = []
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._in_h2 = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append({"id": attrs.get("id"), "h2": "", "text": ""})
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self.sections:
            self.sections[-1]["text"] += data
            if self._in_h2:
                self.sections[-1]["h2"] += data
        if self._cell is not None:
            self._cell.append(data)

    def section(self, section_id: str) -> dict:
        return next(s for s in self.sections if s["id"] == section_id)

    def row(self, first_cell: str) -> list[str]:
        return next(r for r in self.rows if r and r[0] == first_cell)


def _render(tmp_path, report, plot_paths, scores, targeted, **kwargs) -> tuple[Path, str]:
    out = render_report(report, plot_paths, scores, targeted, tmp_path / "out" / "report.html", **kwargs)
    return out, out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, plot_paths, scores, targeted) -> str:
    """The page of the default inputs, rendered once for the tests that only read it."""
    _, text = _render(tmp_path_factory.mktemp("page"), _report(), plot_paths, scores, targeted)
    return text


def test_six_sections_in_order_each_with_a_heading(rendered):
    page = _Page(rendered)
    assert [s["id"] for s in page.sections] == list(SECTIONS)
    assert ["summary", "backtest", "segments", "lifecycle", "actions", "reasons"] == list(SECTIONS)
    assert all(s["h2"].strip() for s in page.sections)


def test_numbers_are_formatted_for_humans(rendered):
    page = _Page(rendered)
    summary = " ".join(page.section("summary")["text"].split())
    assert "50 customers were scored for the next 60 days" in summary
    assert "About 20 of them (40.0%)" in summary
    assert "25 orders worth 12,500" in summary
    assert "AUC 0.775 against 0.764 (+0.011)" in summary
    assert "34.1% of next-period buyers (lift 3.41×)" in summary
    assert "23,570 customers" in summary
    assert page.row("ROC AUC")[:4] == ["ROC AUC", "0.775", "0.764", "0.763"]
    assert page.row("capture at top 10%")[:4] == ["capture at top 10%", "34.1%", "34.0%", "31.4%"]
    assert page.row("p50 MAE (days, reorderers)")[1:3] == ["24.6", "26.3"]
    assert page.row("predicted: BG/NBD") == ["predicted: BG/NBD", "6,305", "-18.2%"]
    assert page.row("log-likelihood")[1] == "-95,368.4"
    # each segment's row says what the segment means, and the mean p_alive beside mean p_repurchase
    assert page.row("champions")[:8] == ["champions", SEGMENT_MEANINGS["champions"], "20", "40.0%", "0.200", "0.900",
                                         "5,000", "20,190"]
    assert page.row("all customers")[:8] == ["all customers", "", "50", "100.0%", "0.400", "0.900", "12,500", "51,225"]
    assert page.row("replenishment reminder")[:3] == ["replenishment reminder", "12", "24.0%"]


def test_lifecycle_stages_in_their_order_including_empty_ones(rendered):
    lifecycle = _Page(rendered.split('<section id="lifecycle">')[1].split("</section>")[0])
    stages = [r[0] for r in lifecycle.rows if r and r[0] in ("new", "active", "at risk", "lapsed", "churned")]
    assert stages == ["new", "active", "at risk", "lapsed", "churned"]
    assert lifecycle.row("at risk")[2:5] == ["0", "0.0%", "–"]


def test_images_are_embedded_and_nothing_is_fetched(rendered, plot_paths):
    page = _Page(rendered)
    # two backtest plots, then bar charts for segments, lifecycle stages and actions
    assert len(page.images) == 5
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert base64.b64decode(page.images[0].split(",", 1)[1]) == plot_paths["roc"].read_bytes()
    assert base64.b64decode(page.images[1].split(",", 1)[1]) == plot_paths["gain"].read_bytes()
    lowered = rendered.lower()
    for forbidden in ('src="http', "src='http", 'href="http', "file:", "url(", "@import", "<link", "<iframe"):
        assert forbidden not in lowered
    assert re.findall(r"<script[^>]*\bsrc=", lowered) == []


def test_text_from_data_is_escaped(tmp_path, plot_paths, scores, targeted):
    scores = scores.assign(rfm_segment=["champions"] * 49 + ["<b>bold</b>"])
    targeted = targeted.assign(rfm_segment=scores["rfm_segment"])
    _, text = _render(tmp_path, _report(), plot_paths, scores, targeted, title="Sales & <Marketing>")
    assert INJECTED not in text
    assert "&lt;script&gt;document.body.dataset.pwned" in text
    assert text.count("<script") == 1  # only the page's own image check
    assert "<title>Sales &amp; &lt;Marketing&gt;</title>" in text
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text


def test_missing_metrics_show_a_dash(tmp_path, plot_paths, scores, targeted):
    report = _report()
    del report["model"]["brier"]
    report["model"]["ece"] = None  # JSON null, as write_report stores NaN
    del report["bgnbd"]["timing"]
    _, text = _render(tmp_path, report, plot_paths, scores, targeted)
    page = _Page(text)
    assert page.row("Brier score")[1:4] == ["–", "0.117", "–"]  # recency-only has no probabilities
    assert page.row("calibration error (ECE)")[1] == "–"
    assert page.row("p50 MAE (days, reorderers)")[1:4] == ["24.6", "–", "–"]
    assert page.row("Gini (normalized)")[3] == "–"


def test_replenishment_backtest_shows_beside_its_baselines(tmp_path, plot_paths, scores, targeted):
    report = _report()
    report["replenishment"] = {
        "n_pairs": 9609, "n_customers": 2800, "base_rate": 0.144,
        "model": {"p50_mae_days": 15.29, "coverage_p10_p90": 0.812, "auc": 0.882},
        "own_last_gap": {"p50_mae_days": 30.73, "coverage_p10_p90": 0.697, "auc": 0.802},
        "category_median": {"p50_mae_days": 28.92, "coverage_p10_p90": 0.722, "auc": 0.823},
    }
    _, text = _render(tmp_path, report, plot_paths, scores, targeted)
    page = _Page(text)
    assert page.row("p50 MAE (days, pairs that bought)") == ["p50 MAE (days, pairs that bought)", "15.3", "30.7", "28.9", "lower"]
    assert page.row("p10-p90 coverage")[1:4] == ["81.2%", "69.7%", "72.2%"]
    assert "<b>15.3</b>" in text and "<b>0.882</b>" in text
    assert "9,609 pairs" in page.section("backtest")["text"]
    _, plain = _render(tmp_path, _report(), plot_paths, scores, targeted)
    assert "Replenishment" not in plain


def test_a_bare_report_and_no_rules_still_render(tmp_path, scores):
    _, text = _render(tmp_path, {}, {}, scores, None)
    page = _Page(text)
    assert [s["id"] for s in page.sections] == list(SECTIONS)
    assert "No targeting rules were applied" in page.section("actions")["text"]
    assert "No targeting rules were applied" in page.section("reasons")["text"]
    assert page.row("ROC AUC")[1:4] == ["–", "–", "–"]


def test_reasons_group_by_rule_and_by_text_without_numbers(rendered):
    page = _Page(rendered)
    assert page.row("due_soon") == ["due_soon", "12", "100.0%"]
    assert page.row("lapsed_valuable") == ["lapsed_valuable", "6", "100.0%"]
    assert page.row("next order due in # days") == ["next order due in # days", "12", "next order due in 3 days"]
    # five examples per action, highest CLV first: win-backs are c040..c045
    reasons = page.section("reasons")["text"]
    assert all(f"c04{i}" in reasons for i in (1, 2, 3, 4, 5)) and "c040" not in reasons
    assert page.row("c045")[:4] == ["c045", "0.600", "20", "1,045"]
    assert page.row("c011")[:3] == ["c011", "0.200", "20"]


def test_untargeted_rows_are_not_an_audience(rendered):
    page = _Page(rendered)
    assert page.row("win back")[:6] == ["win back", "6", "12.0%", "0.600", "1,500", "6,255"]
    assert page.row("all actions")[:2] == ["all actions", "18"]
    assert "Targeting rules put 18 customers into 2 actions" in " ".join(page.section("summary")["text"].split())


def test_written_atomically(tmp_path, plot_paths, scores, targeted):
    out, _ = _render(tmp_path, _report(), plot_paths, scores, targeted)
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]
    previous = '<!DOCTYPE html><meta name="generator" content="repurchase">previous report'
    out.write_text(previous)
    with pytest.raises(ValueError, match="no 'action' column"):
        render_report(_report(), plot_paths, scores, targeted.drop(columns="action"), out)
    assert out.read_text() == previous
    render_report(_report(), plot_paths, scores, targeted, out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def _chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / f'profile-{name}'}", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )


@pytest.mark.browser
def test_page_renders_in_headless_chromium(tmp_path, plot_paths, scores, targeted):
    if not CHROMIUM.exists():
        message = "Chromium not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    out, _ = _render(tmp_path, _report(), plot_paths, scores, targeted)
    url = out.resolve().as_uri()

    dom = _chromium(tmp_path, "dom", "--dump-dom", url).stdout
    page = _Page(dom)
    assert [s["id"] for s in page.sections] == list(SECTIONS)
    for section_id in SECTIONS:
        assert page.section(section_id)["h2"].strip()
    assert len(page.images) == 5
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-images-total="5"' in body
    assert 'data-images-loaded="5"' in body  # every image decoded
    assert "pwned" not in body  # the reason's script stayed text

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "shot", f"--screenshot={shot}", "--window-size=1280,4000", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 1280
    assert len(data) > 50_000


# --- languages -----------------------------------------------------------------------------------

ENGLISH_HEADINGS = [
    "Summary",
    "How good are the predictions? Backtest against baselines",
    "RFM segments",
    "Lifecycle stages",
    "Actions and revenue at stake",
    "Why these customers",
]
CJK = re.compile(r"[\u3400-\u9fff]")


def test_english_is_the_default_and_keeps_its_headings(tmp_path, plot_paths, scores, targeted, monkeypatch):
    monkeypatch.delenv("REPURCHASE_LANG", raising=False)
    _, default = _render(tmp_path, _report(), plot_paths, scores, targeted)
    _, english = _render(tmp_path, _report(), plot_paths, scores, targeted, lang="en")
    assert default == english
    assert [s["h2"] for s in _Page(english).sections] == ENGLISH_HEADINGS
    assert '<html lang="en">' in english and not CJK.search(english)


def test_chinese_report_speaks_chinese_and_keeps_data_as_given(tmp_path, plot_paths, scores, targeted, monkeypatch):
    monkeypatch.setenv("REPURCHASE_LANG", "zh")  # the default language comes from the environment
    _, text = _render(tmp_path, _report(), plot_paths, scores, targeted)
    page = _Page(text)
    assert '<html lang="zh">' in text
    assert [s["id"] for s in page.sections] == list(SECTIONS)  # ids are machine names: unchanged
    for section in page.sections:
        assert CJK.search(section["h2"]), section["h2"]
        assert not re.search(r"\b(the|customers|of)\b", section["h2"])
    # labels of machine names, as an operator says them; numbers formatted as before
    assert page.row("核心客户")[2:4] == ["20", "40.0%"]
    lifecycle = page.section("lifecycle")["text"]
    stages = [lifecycle.index(f"{stage}{meaning_start}") for stage, meaning_start in
              (("新客", "只在"), ("稳定期", "复购"), ("衰退期", "复购"), ("睡眠期", "距上次"), ("流失", "很可能"))]
    assert stages == sorted(stages)  # the playbook's stages, in the lifecycle's order
    assert page.row("补货提醒")[1] == "12"
    assert page.row("ROC AUC")[1:4] == ["0.775", "0.764", "0.763"]
    assert "2025年6月30日" in page.section("summary")["text"]
    # text from data stays as it came, and escaped
    assert "next order due in 3 days" in page.section("reasons")["text"]
    assert INJECTED not in text and text.count("<script") == 1
    assert "due_soon" in page.section("reasons")["text"]  # rule names are the user's


def test_an_unknown_language_is_refused(tmp_path, plot_paths, scores, targeted):
    with pytest.raises(ValueError, match="'fr' is not a language offered here; choose one of en, zh"):
        _render(tmp_path, _report(), plot_paths, scores, targeted, lang="fr")


def _cjk_font_installed() -> bool:
    from training.i18n import cjk_font_family

    return cjk_font_family() is not None


def _need(condition: bool, message: str) -> None:
    """Skip with ``message`` when ``condition`` fails; under CI the missing piece is a failure."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_chinese_plots_find_a_glyph_for_every_character(tmp_path, plot_paths, scores, targeted):
    import warnings

    _need(_cjk_font_installed(), "no CJK font for matplotlib (apt-get install fonts-noto-cjk)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _render(tmp_path, _report(), plot_paths, scores, targeted, lang="zh")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert missing == []
    # the same charts without the fallback font do miss glyphs: the check above can fail
    from matplotlib.figure import Figure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = Figure()
        fig.suptitle("各 RFM 分群的客户数与价值")
        fig.savefig(tmp_path / "plain.png")
    assert any("missing from font" in str(w.message) for w in caught)


@pytest.mark.browser
def test_chinese_page_renders_with_a_cjk_font_in_headless_chromium(tmp_path, plot_paths, scores, targeted):
    from devtools import Chromium

    _need(CHROMIUM.exists(), "Chromium not installed (apt-get install chromium)")
    _need(_cjk_font_installed(), "no CJK font installed (apt-get install fonts-noto-cjk)")
    out, _ = _render(tmp_path, _report(), plot_paths, scores, targeted, lang="zh")
    with Chromium(CHROMIUM, tmp_path / "profile") as browser:
        session = browser.open(out.resolve().as_uri())
        for selector in ("section#summary h2", "section#segments h2", "header nav a", "section#segments td",
                         "section#lifecycle figcaption"):
            text = browser.text_of(session, selector)
            chinese = len(CJK.findall(text))
            assert chinese, (selector, text)
            fonts = browser.fonts_of(session, selector)
            # Chromium names the font that drew the glyphs; without a CJK font it falls back to
            # one without them and the characters show as boxes
            drawn_by_cjk = sum(f["glyphCount"] for f in fonts if "CJK" in f["familyName"] or "Han" in f["familyName"]
                               or f["familyName"] in ("WenQuanYi Zen Hei", "PingFang SC", "Microsoft YaHei"))
            assert drawn_by_cjk >= chinese, (selector, text, fonts)
        body = browser.call("Runtime.evaluate", {"expression": "JSON.stringify(document.body.dataset)",
                                                 "returnByValue": True}, session=session)["result"]["value"]
        assert json.loads(body) == {"imagesTotal": "5", "imagesLoaded": "5"}  # the reason's script stayed text


def test_chinese_tiers_economics_and_movement_sections_have_no_english_left(tmp_path, plot_paths, scores, targeted):
    from serving.migration import add_previous, transitions
    from serving.report_economics import economics_data, movement_data, tiers_data
    from training.economics import EconomicsConfig, economics_report, write_economics

    now = scores.assign(member_tier=["silver"] * 30 + ["gold"] * 15 + ["diamond"] * 5,
                        predicted_tier=["gold"] * 50, p_upgrade=0.3, p_downgrade=0.1, spend_to_next_tier=120.0)
    before = now.iloc[5:].assign(as_of=pd.Timestamp("2025-03-31"), lifecycle_stage="active")
    # channel names are the shop's data: shown as given, so Chinese ones keep the check below strict
    orders = pd.DataFrame({"customer_id": ["c000", "c000", "c001", "c002", "c002"],
                           "order_ts": pd.to_datetime(["2025-01-05", "2025-02-10", "2025-01-20", "2025-02-03",
                                                       "2025-03-15"]),
                           "amount": [100.0, 50.0, 40.0, 20.0, 60.0], "channel": ["广告", "广告", "广告", "自然", "自然"]})
    economics = economics_report(orders, pd.Timestamp("2025-04-15"), now, EconomicsConfig(cac={"广告": 50.0}))
    heatmap = write_economics(economics, tmp_path / "economics.json", lang="zh")["cohorts"]
    backtest = {**_report(), "tiers": {"n_customers": 40, "accuracy": 0.5, "macro_f1": 0.25,
                                       "persistence_accuracy": 0.75, "persistence_macro_f1": 0.5}}
    extra = {"tiers": tiers_data(now, backtest, "zh"), "economics": economics_data(economics, heatmap, "zh"),
             "movement": movement_data(transitions(add_previous(now, before), before), "zh")}
    _, text = _render(tmp_path, backtest, plot_paths, now, targeted, lang="zh", extra_sections=extra)
    page = _Page(text)
    assert [s["id"] for s in page.sections][-3:] == ["tiers", "economics", "movement"]
    assert [page.section(key)["h2"] for key in extra] == ["会员等级：谁会升级，谁会降级",
                                                          "复购经济：复购率、同期群、客户终身价值 LTV", "与上期相比的客户流转"]
    # every word a person reads is Chinese but for the acronyms an operator uses as they are
    acronyms = {"LTV", "CAC", "F1", "RFM", "BTYD", "Gamma"}
    for key in extra:
        body = re.search(rf'<section id="{key}">(.*?)</section>', text, re.S).group(1)
        shown = re.sub(r"<[^>]*>", " ", body)  # tags (and the images' data) are not read, cells are apart
        words = set(re.findall(r"[A-Za-z][A-Za-z0-9]*", shown))
        assert words <= acronyms, (key, words - acronyms)
    assert page.row("金卡")[1:3] == ["15", "50"] and page.row("上期后新增")[0] == "上期后新增"
    assert "以下渠道缺少获客成本：自然" in page.section("economics")["text"]
    assert re.search(r'<section id="economics">.*alt="同期群留存".*</section>', text, re.S)  # the cohort heatmap
