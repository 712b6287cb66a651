"""Repurchase economics (by month, cohorts, LTV, LTV:CAC, payback, value of repurchase) and movement since a previous run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.common.errors import InputError
from serving.cli import app
from serving.migration import add_previous, check_order, transitions
from serving.targeting import apply_rules, load_rules
from training.contract import SCORE_COLUMNS
from training.economics import (
    EconomicsConfig,
    cohort_triangle,
    economics_report,
    load_economics,
    repurchase_by_month,
    value_of_repurchase,
)

runner = CliRunner()


def orders_frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "order_ts", "amount", "channel"])
    frame["order_ts"] = pd.to_datetime(frame["order_ts"])
    return frame


# a: acquired in January by ads, orders again in February and April.
# b: acquired in January by ads, never again.
# c: acquired in February organically, twice in February, once in March.
ORDERS = orders_frame([
    ("a", "2025-01-05", 100.0, "ads"), ("a", "2025-02-10", 50.0, "ads"), ("a", "2025-04-02", 30.0, "organic"),
    ("b", "2025-01-20", 40.0, "ads"),
    ("c", "2025-02-03", 20.0, "organic"), ("c", "2025-02-20", 20.0, "organic"), ("c", "2025-03-15", 60.0, "organic"),
])
AS_OF = pd.Timestamp("2025-04-15")


def test_repurchase_by_month_counts_returning_and_twice_in_month_buyers():
    by_month = {row["month"]: row for row in repurchase_by_month(ORDERS)}
    assert by_month["2025-01"]["buyers"] == 2 and by_month["2025-01"]["repeat_buyers"] == 0
    # February: a returns, c orders twice in her first month: both repeat buyers.
    assert by_month["2025-02"]["buyers"] == 2 and by_month["2025-02"]["repurchase_rate"] == 1.0
    assert by_month["2025-03"]["repeat_buyers"] == 1 and by_month["2025-04"]["repeat_buyers"] == 1


def test_cohort_triangle_by_hand_leaves_unfinished_months_blank():
    triangle = cohort_triangle(ORDERS, AS_OF)
    jan, feb = pd.Period("2025-01", "M"), pd.Period("2025-02", "M")
    assert triangle.loc[jan, "customers"] == 2 and triangle.loc[feb, "customers"] == 1
    assert triangle.loc[jan, 1] == 0.5 and triangle.loc[jan, 2] == 0.0  # a in February, nobody in March
    assert triangle.loc[feb, 1] == 1.0  # c in March
    # April is not over on 2025-04-15: February's month 2 is unknown, not 0, and no cohort has a month 3 yet.
    assert np.isnan(triangle.loc[feb, 2])
    assert list(triangle.columns) == ["customers", 1, 2]


def test_ltv_cac_and_payback_by_hand():
    config = EconomicsConfig(cac={"ads": 50.0, "organic": 10.0, "tv": 99.0}, margin=0.5)
    report = economics_report(ORDERS, AS_OF, config=config)
    channels = {row["channel"]: row for row in report["ltv_by_channel"]}
    # Acquisition channel is the first order's: a and b by ads (revenue 180 and 40), c organic (100).
    assert channels["ads"]["customers"] == 2 and channels["ads"]["ltv_realised"] == 110.0
    assert channels["organic"]["ltv_realised"] == 100.0
    ratio = {row["channel"]: row for row in report["ltv_cac"]}
    assert ratio["ads"]["ltv_cac"] == pytest.approx(110.0 * 0.5 / 50.0)
    # ads: margin per acquired customer in month 1 (days 0-30 after acquisition) is (100 + 40) / 2 x 0.5 = 35 < 50;
    # by month 2 a's 50 brings it to 47.5; month 3 a's 30 only falls in April (day 87): 55 >= 50.
    assert ratio["ads"]["payback_months"] == 3
    assert ratio["organic"]["payback_months"] == 1  # c: 40 x 0.5 = 20 >= 10 in her first month
    assert "tv" in report["ltv_cac_note"]
    cohorts = {row["cohort"]: row for row in report["cohorts"]["rows"]}
    assert cohorts["2025-01"]["repurchased"] == 0.5 and cohorts["2025-02"]["repurchased"] == 1.0


def test_predicted_ltv_comes_from_the_scores_clv():
    scores = pd.DataFrame({"customer_id": ["a", "b", "c"], "clv": [10.0, 0.0, 40.0]})
    report = economics_report(ORDERS, AS_OF, scores=scores)
    by_cohort = {row["cohort"]: row for row in report["ltv_by_cohort"]}
    assert by_cohort["2025-01"]["ltv_predicted"] == 5.0 and by_cohort["2025-01"]["ltv"] == 115.0
    assert report["ltv_cac"] is None and "no CAC given" in report["ltv_cac_note"]


def test_a_log_without_channels_says_what_ltv_cac_needs():
    report = economics_report(ORDERS.drop(columns="channel"), AS_OF, config=EconomicsConfig(cac={"ads": 5.0}))
    assert report["ltv_by_channel"] is None and report["ltv_cac"] is None
    assert "no channel column" in report["ltv_cac_note"]
    assert report["repurchase_by_month"] and report["cohorts"]["rows"]


def test_value_of_more_repurchase_from_the_shops_own_numbers():
    value = value_of_repurchase(ORDERS, AS_OF, margin=0.5, points=(10,))
    # Last 365 days: a, b, c bought; a and c twice or more: beyond their first order 80 and 80.
    assert value["buyers"] == 3 and value["repeat_buyers"] == 2
    assert value["repurchase_rate"] == pytest.approx(2 / 3) and value["revenue_per_repeat_buyer"] == 80.0
    assert value["points"][0]["extra_revenue"] == pytest.approx(3 * 0.10 * 80.0)
    assert value["points"][0]["extra_margin"] == pytest.approx(3 * 0.10 * 80.0 * 0.5)


def test_orders_after_the_as_of_date_are_ignored():
    later = pd.concat([ORDERS, orders_frame([("b", "2025-06-01", 999.0, "ads")])], ignore_index=True)
    assert economics_report(later, AS_OF) == economics_report(ORDERS, AS_OF)


@pytest.mark.parametrize(
    "text, match",
    [
        ("cac: {ads: 5}", "expected 'economics:' at the top"),
        ("economics: {cac: {ads: -5}}", "economics.cac.ads: -5 is not a positive number"),
        ("economics: {cac: {ads: cheap}}", "is not a positive number"),
        ("economics: {cac: [5]}", "must map each channel"),
        ("economics: {cac: {ads: 5}, margin: 1.5}", "must be a share of revenue"),
        ("economics: {cpa: {ads: 5}}", "unknown key 'cpa'"),
    ],
)
def test_bad_economics_files_are_one_clear_error(tmp_path, text, match):
    path = tmp_path / "economics.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as caught:
        load_economics(path)
    assert "\n" not in str(caught.value)


def test_economics_command_writes_json_and_heatmap_on_synth(tmp_path):
    from features.synth import generate_order_log

    orders = tmp_path / "orders.parquet"
    generate_order_log(300, seed=5).to_parquet(orders)
    config = tmp_path / "economics.yaml"
    config.write_text("economics:\n  cac: {storefront: 30, community: 12}\n  margin: 0.4\n")
    out = tmp_path / "economics.json"
    result = runner.invoke(app, ["economics", "--orders", str(orders), "--json", str(out), "--economics", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {row["channel"] for row in report["ltv_cac"]} == {"storefront", "community"}
    assert all(row["ltv_cac"] > 0 for row in report["ltv_cac"])
    assert (tmp_path / "economics.cohorts.png").read_bytes().startswith(b"\x89PNG")
    again = runner.invoke(app, ["economics", "--orders", str(orders), "--json", str(out)])  # its own output: replaced
    assert again.exit_code == 0 and json.loads(out.read_text())["ltv_cac"] is None
    assert "ordered twice or more" in result.output and "payback" in result.output
    chinese = runner.invoke(app, ["economics", "--orders", str(orders), "--json", str(tmp_path / "zh.json"),
                                  "--economics", str(config), "--lang", "zh"])
    assert chinese.exit_code == 0, chinese.output
    assert "下单两次及以上" in chinese.output and "回本周期" in chinese.output and "已写出" in chinese.output
    assert "ordered twice" not in chinese.output and "payback" not in chinese.output
    assert "订单日志" in chinese.output and "300 位客户" in chinese.output and "order log" not in chinese.output
    assert json.loads((tmp_path / "zh.json").read_text())["ltv_cac"] == report["ltv_cac"]  # files stay the same


def test_economics_command_bad_file_is_exit_2_and_writes_nothing(tmp_path):
    config = tmp_path / "economics.yaml"
    config.write_text("economics: {cac: {ads: 0}}\n")
    out = tmp_path / "economics.json"
    result = runner.invoke(app, ["economics", "--orders", "cdnow-sample", "--json", str(out), "--economics", str(config)])
    assert result.exit_code == 2 and "economics.cac.ads: 0 is not a positive number" in result.output
    assert not out.exists()


# --------------------------------------------------------------------------- movement


def score_rows(stages: dict[str, str], as_of: str, **extra) -> pd.DataFrame:
    rows = []
    for customer, stage in stages.items():
        rows.append({"customer_id": customer, "as_of": pd.Timestamp(as_of), "horizon_days": 90, "p_alive": 0.9,
                     "p_repurchase": 0.3, "expected_orders": 0.5, "expected_revenue": 20.0, "clv": 10.0,
                     "next_order_days_p10": np.nan, "next_order_days_p50": np.nan, "next_order_days_p90": np.nan,
                     "churn_risk": 0.7, "rfm_r": 3, "rfm_f": 3, "rfm_m": 3, "rfm_segment": "need_attention",
                     "lifecycle_stage": stage, "model_version": "1", "member_tier": "silver", "predicted_tier": "silver",
                     "p_upgrade": 0.0, "p_downgrade": 0.0, "spend_to_next_tier": np.nan, **extra})
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def test_transitions_by_hand_and_newcomers():
    before = score_rows({"a": "active", "b": "active", "c": "at_risk", "gone": "lapsed"}, "2025-03-31")
    now = score_rows({"a": "active", "b": "at_risk", "c": "lapsed", "d": "new"}, "2025-06-30")
    joined = add_previous(now, before)
    assert list(joined["previous_lifecycle_stage"]) == ["active", "active", "at_risk", "acquired_since"]
    moves = transitions(joined, before)
    stage = moves["lifecycle_stage"]
    counts = pd.DataFrame(stage["counts"], index=stage["from"], columns=stage["to"])
    assert counts.loc["active", "at_risk"] == 1 and counts.loc["active", "active"] == 1
    assert counts.loc["acquired_since", "new"] == 1 and counts.to_numpy().sum() == 4
    assert moves["active_to_at_risk"] == 1 and moves["moved_lifecycle"] == 2 and moves["acquired_since"] == 1
    assert moves["gone"] == 1 and moves["previous_as_of"] == "2025-03-31"
    with pytest.raises(InputError, match="not before the scores"):
        check_order(now, before, "old.parquet")


def test_default_churn_warning_fires_for_active_to_at_risk_only_with_a_previous_run():
    # p_alive 0.8: not low enough for the churn warning on its own.
    fillers = {f"f{i}": "active" for i in range(40)}
    now = score_rows({"slipped": "at_risk", "steady": "at_risk", **fillers}, "2025-06-30", p_alive=0.8)
    before = score_rows({"slipped": "active", "steady": "at_risk", **fillers}, "2025-03-31")
    rules = load_rules()
    plain = apply_rules(now, rules)
    assert plain["action"].isna().all()  # previous_* read 'unknown'
    moved = apply_rules(now, rules, features=add_previous(now[["customer_id"]], before))
    actions = dict(zip(moved["customer_id"], moved["action"]))
    assert actions["slipped"] == "churn_warning" and pd.isna(actions["steady"])
    assert moved.loc[moved["customer_id"] == "slipped", "previous_lifecycle_stage"].item() == "active"


def test_target_previous_writes_transitions_json(tmp_path):
    before = score_rows({"a": "active", "b": "active"}, "2025-03-31")
    now = score_rows({"a": "at_risk", "b": "active", "c": "new"}, "2025-06-30", p_alive=0.8)
    before.to_parquet(tmp_path / "old.parquet")
    now.to_parquet(tmp_path / "scores.parquet")
    out = tmp_path / "audiences"
    result = runner.invoke(app, ["target", "--scores", str(tmp_path / "scores.parquet"), "--previous",
                                 str(tmp_path / "old.parquet"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    moves = json.loads((out / "transitions.json").read_text())
    assert moves["active_to_at_risk"] == 1 and moves["acquired_since"] == 1
    assert "a" in pd.read_csv(out / "churn_warning.csv")["customer_id"].astype(str).tolist()
    swapped = runner.invoke(app, ["target", "--scores", str(tmp_path / "old.parquet"), "--previous",
                                  str(tmp_path / "scores.parquet"), "--out", str(tmp_path / "other")])
    assert swapped.exit_code == 2 and "not before the scores" in swapped.output
    assert not (tmp_path / "other").exists()


def test_report_sections_show_the_numbers_and_escape_text():
    from serving.report_economics import economics_section, movement_section, tiers_section

    report = economics_report(ORDERS.assign(channel=ORDERS["channel"].replace("ads", "<b>ads</b>")), AS_OF,
                              config=EconomicsConfig(cac={"<b>ads</b>": 50.0}))
    page = economics_section(report)
    assert "&lt;b&gt;ads&lt;/b&gt;" in page and "<b>ads</b>" not in page
    assert "66.7%" in page  # 2 of the last year's 3 buyers ordered twice or more
    assert "<td>2.20</td><td>1 month</td>" in page  # ads: LTV 110 / CAC 50, paid back in the first month
    scores = score_rows({"a": "active", "b": "at_risk"}, "2025-06-30").assign(
        member_tier=["silver", "gold"], predicted_tier=["gold", "gold"], p_upgrade=[0.6, 0.2], p_downgrade=[0.0, 0.4])
    tiers = tiers_section(scores, {"cutoff": "2024-06-30", "tiers": {"n_customers": 2, "accuracy": 0.5, "macro_f1": 0.25,
                                                                     "persistence_accuracy": 1.0, "persistence_macro_f1": 1.0}})
    assert "<td>gold</td><td>1</td><td>2</td><td>20.0%</td><td>40.0%</td>" in tiers and "0.250" in tiers
    before = score_rows({"a": "active", "b": "active"}, "2025-03-31")
    movement = movement_section(transitions(add_previous(scores, before), before))
    assert "1 of them from active to at risk" in movement and "<h3>lifecycle stage</h3>" in movement
    assert "--previous" in movement_section(None)
