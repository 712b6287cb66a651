"""`repurchase measure`: exact numbers on a tiny log, nobody dropped, recovery of a simulated lift, bad contacts files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from score_rows import experiment_rows
from features.contacts import load_contacts
from features.orders import load_order_log
from serving.cli import app
from training.measure import (
    compare,
    measure_campaigns,
    minimum_detectable_effect,
    sample_ratio,
    window_outcomes,
)

runner = CliRunner()
Z = 1.959963984540054  # the 97.5% normal quantile

# One campaign on 2025-01-10 with a 30-day window: orders on 2025-01-11 .. 2025-02-09 count.
ORDERS = """customer_id,order_ts,amount
z,2024-10-01 09:00,1
t3,2024-11-01 09:00,12
t1,2024-12-01 09:00,99
h2,2024-12-15 09:00,40
t2,2025-01-10 15:00,50
t1,2025-01-11 10:00,10
h1,2025-01-15 12:00,20
t1,2025-01-20 18:00,30
t2,2025-02-09 23:00,5
t3,2025-02-10 08:00,7
z,2025-03-31 09:00,1
"""
# t4 and h3 never ordered at all; t1 is also in a second campaign (vip_care, two days later).
CONTACTS = """customer_id,action,contacted_at,group
t1,win_back,2025-01-10,treatment
t2,win_back,2025-01-10,treatment
t3,win_back,2025-01-10,treatment
t4,win_back,2025-01-10,treatment
h1,win_back,2025-01-10,holdout
h2,win_back,2025-01-10,holdout
h3,win_back,2025-01-10,holdout
t1,vip_care,2025-01-12,treatment
"""


@pytest.fixture()
def tiny(tmp_path) -> tuple[Path, Path]:
    orders, contacts = tmp_path / "orders.csv", tmp_path / "contacts.csv"
    orders.write_text(ORDERS)
    contacts.write_text(CONTACTS)
    return orders, contacts


def wilson(buyers: int, n: int) -> tuple[float, float]:
    """Wilson's score interval (Newcombe's building block), written out."""
    p = buyers / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


# --------------------------------------------------------------------------- exact numbers


def test_exact_numbers_on_a_tiny_log(tiny):
    orders, contacts = tiny
    result = measure_campaigns(load_contacts(contacts), load_order_log(str(orders)).orders, window_days=30,
                               contact_cost=0.5)
    block = result["actions"]["win_back"]
    # by hand: t1 two orders (10 + 30), t2 one on day 30 (5; the contact-day order does not count), t3's order on
    # day 31 does not count, t4 never ordered; h1 one order (20), h2's order came before, h3 never ordered.
    assert block["treatment"] == {"customers": 4, "buyers": 2, "rate": 0.5, "orders_per_customer": 0.75,
                                  "revenue_per_customer": 11.25}
    assert block["holdout"] == pytest.approx({"customers": 3, "buyers": 1, "rate": 1 / 3, "orders_per_customer": 1 / 3,
                                              "revenue_per_customer": 20 / 3})
    assert block["rate_diff"] == pytest.approx(1 / 6)
    assert block["rel_lift"] == pytest.approx(0.5)
    assert block["incremental_orders"] == pytest.approx((0.75 - 1 / 3) * 4)
    assert block["incremental_revenue"] == pytest.approx((11.25 - 20 / 3) * 4)
    assert block["contact_cost_total"] == pytest.approx(2.0)
    assert block["roi"] == pytest.approx(((11.25 - 20 / 3) * 4 - 2.0) / 2.0)
    # Newcombe's hybrid score interval (Newcombe 1998, method 10) from the two Wilson intervals
    (l1, u1), (l2, u2) = wilson(2, 4), wilson(1, 3)
    d = 1 / 6
    expected = [d - math.sqrt((0.5 - l1) ** 2 + (u2 - 1 / 3) ** 2), d + math.sqrt((u1 - 0.5) ** 2 + (1 / 3 - l2) ** 2)]
    assert block["rate_diff_ci95"] == pytest.approx(expected, abs=1e-9)
    assert 0.5 < block["p_value"] <= 1.0
    assert block["verdict"] == "too_small" and block["summary"].startswith("Too few customers to tell: 4 in treatment")
    # overall pools both actions: t1's second contact is a unit of its own (one order, 30, in its window)
    overall = result["overall"]
    assert overall["treatment"]["customers"] == 5 and overall["treatment"]["buyers"] == 3
    assert overall["treatment"]["orders_per_customer"] == pytest.approx(4 / 5)
    assert overall["treatment"]["revenue_per_customer"] == pytest.approx(75 / 5)
    assert result["actions"]["vip_care"]["holdout"]["customers"] == 0
    assert result["actions"]["vip_care"]["rate_diff"] is None and result["actions"]["vip_care"]["verdict"] == "too_small"
    assert result["contacts_without_any_order"] == 2


def test_no_contacted_customer_is_dropped():
    contacts = pd.DataFrame({"customer_id": [f"c{i}" for i in range(40)], "action": "win_back",
                             "contacted_at": pd.Timestamp("2025-01-10"), "group": ["treatment", "holdout"] * 20})
    # only three of them ever ordered, one of them many times
    orders = pd.DataFrame({"customer_id": ["c0"] * 5 + ["c1", "c3", "x"],
                           "order_ts": pd.to_datetime(["2025-01-12"] * 5 + ["2025-01-13", "2024-01-01", "2025-01-14"]),
                           "amount": 1.0})
    outcomes = window_outcomes(contacts, orders, 30)
    assert len(outcomes) == 40 and outcomes["customer_id"].tolist() == contacts["customer_id"].tolist()
    assert outcomes["orders"].tolist()[:4] == [5, 1, 0, 0] and outcomes["orders"].sum() == 6
    block = compare(outcomes, contact_cost=0.0, planned_holdout=0.5)
    assert block["treatment"]["customers"] + block["holdout"]["customers"] == 40
    assert block["treatment"]["buyers"] == 1 and block["holdout"]["buyers"] == 1
    assert block["roi"] is None  # no cost, no ROI


def test_mde_is_the_difference_found_with_80_percent_power():
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    for n_t, n_h, baseline in [(9000, 1000, 0.2), (450, 50, 0.05), (2000, 2000, 0.6)]:
        mde = minimum_detectable_effect(n_t, n_h, baseline)
        power = NormalIndPower().power(proportion_effectsize(baseline + mde, baseline), nobs1=n_t, alpha=0.05,
                                       ratio=n_h / n_t)
        assert power == pytest.approx(0.8, abs=1e-4)
    assert minimum_detectable_effect(9000, 1000, 0.2) < minimum_detectable_effect(900, 100, 0.2)
    assert minimum_detectable_effect(1, 1, 0.2) is None


def test_sample_ratio_mismatch():
    assert not sample_ratio(9_000, 1_000, 0.1)["mismatch"]
    flagged = sample_ratio(8_500, 1_500, 0.1)
    assert flagged["mismatch"] and flagged["p_value"] < 1e-6 and flagged["observed_holdout_share"] == 0.15
    rows = pd.DataFrame({"group": ["treatment"] * 500 + ["holdout"] * 500, "bought": [True, False] * 500,
                         "orders": [1, 0] * 500, "revenue": [5.0, 0.0] * 500})
    block = compare(rows, contact_cost=0.5, planned_holdout=0.1)
    assert block["srm"]["mismatch"] and "not the planned 10%" in block["summary"]


def test_says_plainly_when_not_significant_and_when_significant():
    rng = np.random.default_rng(3)

    def rows(*args):
        return experiment_rows(rng, *args)

    flat = compare(rows(0.2, 0.2), contact_cost=0.5, planned_holdout=0.5)
    assert flat["verdict"] == "not_significant" and flat["summary"].startswith("Not significant:")
    assert "could be chance" in flat["summary"] and "detect only differences of" in flat["summary"]
    strong = compare(rows(0.3, 0.2), contact_cost=0.5, planned_holdout=0.5)
    assert strong["verdict"] == "significant" and strong["summary"].startswith("It worked:")
    hurt = compare(rows(0.15, 0.25), contact_cost=0.5, planned_holdout=0.5)
    assert hurt["verdict"] == "significant" and hurt["summary"].startswith("It backfired:")
    nobody = compare(rows(0.0, 0.0), contact_cost=0.5, planned_holdout=0.5)
    assert nobody["verdict"] == "too_small" and nobody["p_value"] == 1.0


# --------------------------------------------------------------------------- recovery of a simulated lift


def test_measure_recovers_the_simulated_lift_inside_its_interval(tmp_path):
    """One seed here; benchmarks/bench_measure.py checks the intervals' coverage over many."""
    from features.campaigns import simulate_campaigns

    simulated = simulate_campaigns(10_000, seed=0)
    path = tmp_path / "log.parquet"
    simulated.lines.to_parquet(path, index=False)
    result = measure_campaigns(simulated.contacts, load_order_log(str(path)).orders, window_days=simulated.window_days)
    assert set(result["actions"]) == {"replenishment_reminder", "churn_warning", "win_back"}
    for name, block in [*result["actions"].items(), ("overall", result["overall"])]:
        truth = simulated.true_effects[name]
        low, high = block["rate_diff_ci95"]
        assert low <= truth["rate_diff"] <= high, (name, low, high, truth["rate_diff"])
        assert block["treatment"]["customers"] + block["holdout"]["customers"] == truth["customers"]
        assert not block["srm"]["mismatch"]
    assert result["overall"]["verdict"] == "significant"


# --------------------------------------------------------------------------- the command


def test_measure_command_writes_json_page_and_mlflow_run(tiny, tmp_path, mlflow_store):
    import mlflow

    orders, contacts = tiny
    out = tmp_path / "out" / "measure.json"
    result = runner.invoke(app, ["measure", "--contacts", str(contacts), "--orders", str(orders), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["window_days"] == 30
    for block in [*report["actions"].values(), report["overall"]]:
        for group in ("treatment", "holdout"):
            assert set(block[group]) >= {"customers", "buyers", "rate", "orders_per_customer", "revenue_per_customer"}
        assert set(block) >= {"rate_diff", "rate_diff_ci95", "rel_lift", "p_value", "incremental_orders",
                              "incremental_revenue", "mde"}
    assert report["actions"]["win_back"]["treatment"]["rate"] == 0.5
    page = (tmp_path / "out" / "measure.html").read_text()
    assert '<section id="did_it_work">' in page and "Too few customers to tell" in page
    assert "win_back: Too few customers to tell" in result.stdout
    assert "2 contacted customers have no order at all" in result.stderr
    runs = mlflow.search_runs(experiment_names=["repurchase"], filter_string="params.job = 'measure'")
    assert len(runs) == 1 and runs["metrics.action.win_back.rate_diff"].iloc[0] == pytest.approx(1 / 6)
    # a rerun replaces its own output
    again = runner.invoke(app, ["measure", "--contacts", str(contacts), "--orders", str(orders), "--json", str(out),
                                "--window-days", "20"])
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["window_days"] == 20
    # in Chinese: the verdicts, the note and the page, with the JSON's English sentences unchanged
    chinese = runner.invoke(app, ["measure", "--contacts", str(contacts), "--orders", str(orders), "--json",
                                  str(tmp_path / "zh" / "measure.json"), "--lang", "zh"])
    assert chinese.exit_code == 0, chinese.output
    assert "沉睡召回：人数太少" in chinese.stdout and "2 位被触达的客户" in chinese.stderr
    page = (tmp_path / "zh" / "measure.html").read_text()
    for english in ("Too few customers to tell", "contacted customers have no order", "win_back:", "wrote "):
        assert english not in chinese.output and english not in page, english
    assert json.loads((tmp_path / "zh" / "measure.json").read_text())["actions"]["win_back"]["summary"].startswith(
        "Too few customers to tell")


def test_the_report_gets_a_did_it_work_section_only_when_measured(tiny):
    from serving.report import MEASURED, SECTIONS, build_report_html

    orders, contacts = tiny
    result = measure_campaigns(load_contacts(contacts), load_order_log(str(orders)).orders)
    scores = pd.DataFrame({"customer_id": ["a"], "as_of": [pd.Timestamp("2025-03-31")], "p_repurchase": [0.5]})
    without = build_report_html({}, {}, scores, None)
    assert f'<section id="{MEASURED}">' not in without and MEASURED not in SECTIONS
    page = build_report_html({}, {}, scores, None, measurement=result)
    assert page.index(f'<section id="{MEASURED}">') > page.index('<section id="reasons">')
    assert "Did it work? Campaigns against their holdouts" in page


def test_measure_explains_itself():
    result = runner.invoke(app, ["measure", "--help"])
    assert result.exit_code == 0
    for flag in ("--contacts", "--orders", "--window-days", "--contact-cost", "--holdout-share", "--json"):
        assert flag in result.output


HEADER = "customer_id,action,contacted_at,group\n"
GOOD = "h1,win_back,2025-01-10,holdout\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("wrong group", HEADER + GOOD + "t1,win_back,2025-01-10,control\n",
         "contacts.csv: line 3: group: 'control' is not a group; use treatment or holdout"),
        ("empty group", HEADER + GOOD + "t1,win_back,2025-01-10,\n", "line 3: group: empty; use treatment or holdout"),
        ("unknown action", HEADER + GOOD + "t1,newsletter,2025-01-10,treatment\n",
         "line 3: action: unknown action 'newsletter'; the rules have churn_warning, new_customer_nurture, "
         "replenishment_reminder, tier_retention, tier_upgrade_nudge, vip_care, win_back (give their --rules)"),
        ("not an action name", HEADER + "t1,Win Back!,2025-01-10,treatment\n", "line 2: action: 'Win Back!' is not an action name"),
        ("after the orders end", HEADER + GOOD + "t1,win_back,2025-04-02,treatment\n",
         "line 3: contacted_at 2025-04-02 is after the orders end (2025-03-31)"),
        ("window past the end", HEADER + GOOD + "t1,win_back,2025-03-15,treatment\n",
         "line 3: contacted_at 2025-03-15: its 30-day window ends 2025-04-14, after the orders end (2025-03-31); "
         "measure when the window is over, or use --window-days 16"),
        ("before the orders begin", HEADER + "t1,win_back,2024-06-01,treatment\n",
         "line 2: contacted_at 2024-06-01 is before the orders begin (2024-10-01)"),
        ("duplicate contacts", HEADER + GOOD + "t1,win_back,2025-01-10,treatment\n" + GOOD,
         "lines 2 and 4: customer 'h1' is listed twice for win_back on 2025-01-10"),
        ("one customer in both groups", HEADER + GOOD + "h1,win_back,2025-01-10,treatment\n",
         "lines 2 and 3: customer 'h1' is listed twice for win_back on 2025-01-10"),
        ("missing column", "customer_id,action,contacted_at\nt1,win_back,2025-01-10\n",
         "missing column(s) group; a contacts file has customer_id, action, contacted_at, group"),
        ("misnamed column", "customer,action,contacted_at,group\nt1,win_back,2025-01-10,treatment\n",
         "missing column(s) customer_id"),
        ("unparseable date", HEADER + GOOD + "t1,win_back,2025-13-45,treatment\n",
         "line 3: contacted_at: '2025-13-45' is not a date; use YYYY-MM-DD"),
        ("a word for a date", HEADER + "t1,win_back,last week,treatment\n",
         "line 2: contacted_at: 'last week' is not a date"),
        ("empty date", HEADER + "t1,win_back,,treatment\n", "line 2: contacted_at: empty"),
        ("empty customer", HEADER + ",win_back,2025-01-10,treatment\n", "line 2: customer_id: empty"),
        ("bad planned share", "customer_id,action,contacted_at,group,holdout_share\nt1,win_back,2025-01-10,treatment,1.5\n",
         "line 2: holdout_share: '1.5' is not a share"),
        ("header only", HEADER, "has no rows"),
        ("empty file", "", "the file is empty"),
    ],
)
def test_every_bad_contacts_file_exits_2_in_one_line_and_writes_nothing(tiny, tmp_path, monkeypatch, name, text, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    orders, contacts = tiny
    contacts.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["measure", "--contacts", str(contacts), "--orders", str(orders),
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 2, (name, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, (name, result.stderr)
    assert lines[0].startswith("error: ") and message in lines[0], (name, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no JSON, no page, no MLflow store


def test_bad_contacts_paths_and_flags_exit_2(tiny, tmp_path):
    orders, contacts = tiny
    base = ["measure", "--orders", str(orders), "--json", str(tmp_path / "m.json")]
    cases = [
        (["--contacts", str(tmp_path / "nope.csv")], "no such contacts file"),
        (["--contacts", str(tmp_path)], "is a folder"),
        (["--contacts", str(contacts), "--holdout-share", "1.5"], "--holdout-share"),
        (["--contacts", str(contacts), "--json", str(tmp_path / "m.html")], "names an HTML file"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
    foreign = tmp_path / "theirs.json"
    foreign.write_text('{"mine": true}')
    result = runner.invoke(app, ["measure", "--contacts", str(contacts), "--orders", str(orders), "--json", str(foreign)])
    assert result.exit_code == 2 and "not written by repurchase" in result.stderr
    assert foreign.read_text() == '{"mine": true}'
