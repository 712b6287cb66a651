"""Targeting rules: first match wins, default rules, reasons, every bad rules file, budget, audiences."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.common.errors import InputError
from features.common.outputs import OWNER_MARK, mark_folder
from score_rows import AS_OF, score_row, scores_frame
from serving.targeting import RuleSet, RulesError, apply_rules, load_rules, write_audiences
from training.contract import SCORE_COLUMNS
from training.segments import REMINDER

def rules_by_customer(out: pd.DataFrame) -> dict[str, str | None]:
    return {c: (r if isinstance(r, str) else None) for c, r in zip(out["customer_id"], out["rule"])}


def with_fillers(rows: list[dict], n: int = 40) -> list[dict]:
    """``rows`` among ``n`` unremarkable customers of higher value, so that none of them is a VIP."""
    return rows + [score_row(f"filler{i}", clv=100.0 + i) for i in range(n)]


def ruleset(rules: list[dict], **extra) -> RuleSet:
    return RuleSet.model_validate({"rules": rules, **extra})


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- semantics


def test_first_matching_rule_wins_and_rows_keep_their_order():
    scores = scores_frame([score_row("a", clv=100.0), score_row("b", clv=5.0), score_row("c", clv=50.0)])
    scores.index = [10, 11, 12]
    big_first = ruleset(
        [
            {"name": "big", "when": "clv >= 50", "action": "vip_care", "reason": "clv {clv:.0f}"},
            {"name": "any", "when": "clv > 1", "action": "win_back", "reason": "anyone"},
        ]
    )
    out = apply_rules(scores, big_first)
    assert list(out.columns[: len(SCORE_COLUMNS) + 3]) == [*SCORE_COLUMNS, "action", "reason", "rule"]
    assert list(out.index) == [10, 11, 12]
    assert list(out["customer_id"]) == ["a", "b", "c"]
    assert list(out["rule"]) == ["big", "any", "big"]
    assert list(out["reason"]) == ["clv 100", "anyone", "clv 50"]

    swapped = ruleset(list(reversed(big_first.model_dump()["rules"])))
    assert list(apply_rules(scores, swapped)["rule"]) == ["any", "any", "any"]


def test_customer_no_rule_matches_gets_no_action():
    scores = scores_frame([score_row("a", clv=1.0), score_row("b", clv=99.0)])
    out = apply_rules(scores, ruleset([{"name": "big", "when": "clv > 50", "action": "vip_care", "reason": "big"}]))
    assert out["action"].isna().tolist() == [True, False]
    assert out["reason"].isna().tolist() == [True, False]
    assert out["rule"].isna().tolist() == [True, False]


def test_missing_values_never_satisfy_a_comparison():
    scores = scores_frame([score_row("a", next_order_days_p50=np.nan), score_row("b", next_order_days_p50=3.0)])
    out = apply_rules(scores, ruleset([{"name": "soon", "when": "next_order_days_p50 <= 14", "action": "remind", "reason": "soon"}]))
    assert out["rule"].isna().tolist() == [True, False]


def test_conditions_may_span_lines_chain_comparisons_and_use_feature_columns(tmp_path):
    path = write_rules(
        tmp_path,
        "rules:\n"
        "  - name: late\n"
        "    when: |\n"
        "      1.5 <= overdue_ratio <= 3\n"
        "      and not lifecycle_stage in ['new']\n"
        "    action: churn_warning\n"
        "    reason: '{overdue_ratio:.1f} gaps late ({rfm_segment})'\n",
    )
    scores = scores_frame([score_row("1"), score_row("2"), score_row("3", lifecycle_stage="new")])
    # ids of another type still join; the feature's own rfm_segment loses to the score column
    features = pd.DataFrame({"customer_id": [3, 2, 1], "overdue_ratio": [2.0, 3.5, 2.0], "rfm_segment": ["x", "y", "z"]})
    out = apply_rules(scores, load_rules(path), features=features)
    assert rules_by_customer(out) == {"1": "late", "2": None, "3": None}
    assert out["reason"].iloc[0] == "2.0 gaps late (need_attention)"
    assert list(out.columns[len(SCORE_COLUMNS) + 3 :]) == ["overdue_ratio"]



def test_conditions_name_the_shipped_reminder_thresholds_and_the_defaults_use_them():
    days = REMINDER.within_days
    scores = scores_frame([score_row("due", next_order_days_p50=days), score_row("later", next_order_days_p50=days + 1),
                           score_row("twice", next_order_days_p50=2 * days)])
    rules = ruleset([{"name": "soon", "when": "next_order_days_p50 <= REMIND_WITHIN_DAYS", "action": "remind",
                      "reason": "in {next_order_days_p50} days"},
                     {"name": "two", "when": "next_order_days_p50 <= REMIND_WITHIN_DAYS * 2", "action": "later",
                      "reason": "later"}])
    assert rules.rules[0].columns() == ["next_order_days_p50"]  # a threshold is not a column
    out = apply_rules(scores, rules)
    assert rules_by_customer(out) == {"due": "soon", "later": "two", "twice": "two"}
    assert out["reason"].iloc[0] == f"in {days} days"
    assert list(out.columns[len(SCORE_COLUMNS) + 3 :]) == []
    with pytest.raises(RulesError, match=r"rule 1 'x': when: unknown column 'REMIND_WITHIN_DAY'"):
        apply_rules(scores, ruleset([{"name": "x", "when": "clv > REMIND_WITHIN_DAY", "action": "x", "reason": "x"}]))
    # the default reminder rules say the thresholds by name, never the numbers again
    conditions = {rule.name: rule.when for rule in load_rules().rules}
    assert "REMIND_WITHIN_DAYS" in conditions["replenishment_reminder"]
    assert "MIN_P_WITHIN_HORIZON" in conditions["replenish_category_due"]
    literal = rf"\b({days}|{re.escape(str(REMINDER.min_p_within_horizon))})\b"
    assert not any(re.search(literal, when) for when in conditions.values())

def test_derived_columns():
    scores = scores_frame(
        [
            score_row("a", clv=10.0, p_repurchase=0.5, expected_orders=2.0, expected_revenue=60.0),
            score_row("b", clv=30.0, p_repurchase=0.2, expected_orders=0.0, expected_revenue=0.0),
            score_row("c", clv=20.0, p_repurchase=0.4, expected_orders=0.0, expected_revenue=0.0),
        ]
    )
    features = pd.DataFrame({"customer_id": ["c", "b"], "avg_order_value": [25.0, 40.0]})
    rules = ruleset(
        [{"name": "all", "when": "clv_pct > 0 and expected_order_value > 0 and expected_value > -100", "action": "x", "reason": "r"}],
        budget={"contact_cost": 1.0},
    )
    out = apply_rules(scores, rules, features=features)
    assert out["clv_pct"].tolist() == pytest.approx([1 / 3, 1.0, 2 / 3])
    # a: 60 / 2 orders; b and c have no expected orders, so their average order value stands in
    assert out["expected_order_value"].tolist() == pytest.approx([30.0, 40.0, 25.0])
    assert out["expected_value"].tolist() == pytest.approx([0.5 * 30 - 1, 0.2 * 40 - 1, 0.4 * 25 - 1])


# --------------------------------------------------------------------------- default rules


def default_population() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str | None]]:
    """Customers built for each default rule, near misses, and fillers; with their intended rule."""
    rows, features, expected = [], [], {}

    def add(customer_id, rule, gap_mean=20.0, days_since_last=10.0, **values):
        rows.append(score_row(customer_id, **values))
        features.append({"customer_id": customer_id, "gap_mean": gap_mean, "days_since_last": days_since_last,
                         "overdue_ratio": days_since_last / gap_mean if gap_mean else np.nan})
        expected[customer_id] = rule

    for i in range(40):  # fillers: active, nothing due, low value; enough of them for a top 5%
        add(f"filler{i}", None, clv=1.0 + i)
    add("vip", "vip_care", clv=10_000.0, lifecycle_stage="at_risk", p_alive=0.4)  # VIP care beats churn warning
    add("vip_due", "vip_care", clv=9_000.0, next_order_days_p50=5.0, p_repurchase=0.9)  # and beats the reminder
    add("due", "replenishment_reminder", clv=100.0, next_order_days_p50=10.0, p_repurchase=0.8)
    add("due_unsure", None, clv=100.0, next_order_days_p50=12.0, p_repurchase=0.55)
    add("due_later", None, clv=100.0, next_order_days_p50=30.0, p_repurchase=0.9)
    add("slipping", "churn_warning", clv=50.0, lifecycle_stage="at_risk", p_alive=0.45, days_since_last=40.0)
    add("late_but_alive", None, clv=50.0, lifecycle_stage="at_risk", p_alive=0.8, days_since_last=40.0)
    add("lapsed_valuable", "win_back", clv=500.0, lifecycle_stage="lapsed", p_alive=0.3, days_since_last=200.0)
    add("lapsed_vip", "win_back", clv=20_000.0, lifecycle_stage="lapsed", p_alive=0.2, days_since_last=300.0)
    add("lapsed_cheap", None, clv=2.0, lifecycle_stage="lapsed", p_alive=0.3, days_since_last=200.0)
    add("churned_valuable", None, clv=400.0, lifecycle_stage="churned", p_alive=0.05, days_since_last=400.0)
    add("newbie", "new_customer_nurture", clv=20.0, lifecycle_stage="new", gap_mean=np.nan, days_since_last=12.0,
        p_repurchase=0.35)
    return scores_frame(rows), pd.DataFrame(features), expected


def test_default_rules_are_shipped_in_the_serving_package_in_order():
    rules = load_rules()
    assert rules.source == "default_rules.yaml"
    from serving import targeting

    assert (Path(targeting.__file__).parent / "default_rules.yaml").is_file()
    assert [r.name for r in rules.rules] == [
        "vip_care",
        "replenish_category_due",
        "replenishment_reminder",
        "tier_upgrade_nudge",
        "churn_warning",
        "tier_retention",
        "win_back",
        "new_customer_nurture",
    ]
    assert rules.budget is None
    assert all(rule.description for rule in rules.rules)


def test_each_default_rule_fires_on_its_customer_and_no_other():
    scores, features, expected = default_population()
    out = apply_rules(scores, load_rules(), features=features)
    assert rules_by_customer(out) == expected
    actions = dict(zip(out["customer_id"], out["action"]))
    assert actions["due"] == "replenishment_reminder"
    assert "clv_pct" in out.columns and "gap_mean" in out.columns
    assert not any(c.startswith("replenish_") for c in out.columns)  # no replenishment frame given


def test_default_reasons_read_as_words():
    scores, features, _ = default_population()
    out = apply_rules(scores, load_rules(), features=features).set_index("customer_id")
    assert out.loc["due", "reason"] == "usually orders every 20 days; last order 10 days ago; next order likely in 10 days"
    assert out.loc["slipping", "reason"] == (
        "usually orders every 20 days but the last order was 40 days ago; 2.0 times the usual gap; chance still active 45%"
    )
    assert out.loc["newbie", "reason"] == "first order 12 days ago; 35% chance of a second order within 90 days"
    assert out.loc["vip_due", "reason"] == (
        "among the top 5% of customers by lifetime value (9,000); lifecycle stage active; next order likely in 5 days"
    )


def test_default_rules_work_on_scores_alone_and_drop_clauses_they_cannot_fill():
    scores, _, expected = default_population()
    out = apply_rules(scores, load_rules())
    assert rules_by_customer(out) == expected  # the default conditions use score columns only
    out = out.set_index("customer_id")
    assert out.loc["due", "reason"] == "next order likely in 10 days"
    assert out.loc["vip", "reason"] == "among the top 5% of customers by lifetime value (10,000); lifecycle stage at_risk"


def test_a_reason_whose_every_clause_is_missing_says_unknown():
    scores = scores_frame([score_row("a", next_order_days_p50=np.nan)])
    rules = ruleset([{"name": "all", "when": "clv > 0", "action": "x", "reason": "next order in {next_order_days_p50:.0f} days"}])
    assert apply_rules(scores, rules)["reason"].iloc[0] == "next order in unknown days"


# --------------------------------------------------------------------------- product-level replenishment


def test_replenishment_frame_drives_the_reminder_reason():
    scores = scores_frame(with_fillers([score_row("a", clv=5.0), score_row("b", clv=6.0), score_row("c", clv=7.0)]))
    replenishment = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "c"],
            "category": ["litter", "pet_food", "coffee", "tea"],
            "last_purchase": pd.to_datetime(["2025-05-01", "2025-06-03", "2025-06-20", "2025-06-01"]),
            "next_purchase_days_p10": [10.0, 1.0, 40.0, 0.0],
            "next_purchase_days_p50": [20.0, 3.0, 50.0, 2.0],
            "next_purchase_days_p90": [40.0, 9.0, 80.0, 9.0],
            "p_within_horizon": [0.9, 0.8, 0.7, 0.3],
            "remind_on": pd.to_datetime(["2025-07-13", "2025-07-02", "2025-08-12", "2025-06-30"]),
            "basis": ["own", "own", "category", "own"],
        }
    )
    out = apply_rules(scores, load_rules(), replenishment=replenishment).set_index("customer_id")
    assert out.loc["a", "rule"] == "replenish_category_due"
    assert out.loc["a", "action"] == "replenishment_reminder"
    assert out.loc["a", "reason"] == "bought pet_food every 30 days; last 27 days ago; reminder due 2025-07-02"
    assert out.loc["a", "replenish_category"] == "pet_food"  # the most urgent of a's two categories
    assert out.loc["a", "replenish_remind_on"] == pd.Timestamp("2025-07-02")
    assert pd.isna(out.loc["b", "rule"])  # coffee is not due for 50 days
    assert pd.isna(out.loc["c", "rule"])  # tea is due but unlikely to be bought again
    assert out.loc["c", "replenish_category"] == "tea"


def test_an_abandoned_overdue_category_does_not_hide_one_that_is_due():
    scores = scores_frame(with_fillers([score_row("a")]))
    replenishment = pd.DataFrame(
        {
            "customer_id": ["a", "a"],
            "category": ["litter", "coffee"],
            "last_purchase": pd.to_datetime(["2024-01-01", "2025-06-10"]),
            "next_purchase_days_p50": [0.0, 5.0],
            "p_within_horizon": [0.05, 0.85],
            "remind_on": pd.to_datetime(["2025-06-30", "2025-06-30"]),
        }
    )
    out = apply_rules(scores, load_rules(), replenishment=replenishment).set_index("customer_id")
    assert out.loc["a", "replenish_category"] == "coffee"
    assert out.loc["a", "rule"] == "replenish_category_due"


def test_replenishment_gap_column_is_used_when_present():
    scores = scores_frame(with_fillers([score_row("a")]))
    replenishment = pd.DataFrame(
        {
            "customer_id": ["a"],
            "category": ["pet_food"],
            "last_purchase": [pd.Timestamp("2025-06-03")],
            "next_purchase_days_p50": [3.0],
            "p_within_horizon": [0.8],
            "remind_on": [pd.Timestamp("2025-07-02")],
            "basis": ["category"],
            "gap_days": [28.0],
        }
    )
    out = apply_rules(scores, load_rules(), replenishment=replenishment)
    assert out.loc[out["customer_id"] == "a", "reason"].item() == "bought pet_food every 28 days; last 27 days ago; reminder due 2025-07-02"


def test_replenishment_frame_without_the_contract_columns_is_refused():
    scores = scores_frame([score_row("a")])
    with pytest.raises(InputError, match="replenishment: missing column.*remind_on"):
        apply_rules(scores, load_rules(), replenishment=pd.DataFrame({"customer_id": ["a"], "category": ["x"],
                                                                        "last_purchase": [AS_OF],
                                                                        "next_purchase_days_p50": [1.0],
                                                                        "p_within_horizon": [0.5]}))


# --------------------------------------------------------------------------- budget


def test_budget_keeps_the_highest_expected_values_up_to_max_contacts():
    scores = scores_frame(
        [
            score_row("low", p_repurchase=0.2, expected_orders=1.0, expected_revenue=10.0),  # 0.2 * 10 - 1 = 1
            score_row("top", p_repurchase=0.9, expected_orders=1.0, expected_revenue=50.0),  # 44
            score_row("none", clv=0.0),  # no action at all
            score_row("loss", p_repurchase=0.1, expected_orders=1.0, expected_revenue=5.0),  # -0.5
            score_row("mid", p_repurchase=0.5, expected_orders=2.0, expected_revenue=40.0),  # 9
        ]
    )
    rule = {"name": "all", "when": "clv > 1", "action": "offer", "reason": "worth {expected_value:.1f}"}
    out = apply_rules(scores, ruleset([rule], budget={"max_contacts": 2, "contact_cost": 1.0})).set_index("customer_id")
    assert out["action"].notna().to_dict() == {"low": False, "top": True, "none": False, "loss": False, "mid": True}
    assert out.loc["top", "reason"] == "worth 44.0"
    assert out.loc["loss", "expected_value"] == pytest.approx(-0.5)

    uncapped = apply_rules(scores, ruleset([rule], budget={"contact_cost": 1.0})).set_index("customer_id")
    assert uncapped["action"].notna().to_dict() == {"low": True, "top": True, "none": False, "loss": False, "mid": True}


# --------------------------------------------------------------------------- bad rules files


RULE_OK = "  - {name: first, when: 'clv > 0', action: vip_care, reason: 'hi'}\n"
LOAD_ERRORS = [
    ("", r"the file is empty"),
    ("rules: [unclosed\n", r"not valid YAML \(line 2"),
    ("- just\n- a list\n", r"expected a mapping with 'rules:' at the top, got a list"),
    ("rules: []\n", r"rules: no rules; give at least one"),
    ("rules: hello\n", r"rules: expected a list of rules"),
    ("rules:\n" + RULE_OK + "  - {name: second, when: 'clv >', action: win_back, reason: hi}\n",
     r"rule 2 'second': when: invalid syntax"),
    ("rules:\n" + RULE_OK + "  - {name: boom, when: \"__import__('os').system('true')\", action: win_back, reason: hi}\n",
     r"rule 2 'boom': when: '__import__\('os'\)\.system\('true'\)' is not allowed"),
    ("rules:\n  - {name: attr, when: 'clv.real > 0', action: win_back, reason: hi}\n",
     r"rule 1 'attr': when: 'clv\.real' is not allowed"),
    ("rules:\n" + RULE_OK + "  - {name: win_back, action: win_back, reason: hi}\n",
     r"rule 2 'win_back': when: missing"),
    ("rules:\n" + RULE_OK + "  - {name: first, when: 'clv > 1', action: win_back, reason: hi}\n",
     r"rule 2 'first': name: same name as rule 1"),
    ("rules:\n  - {name: n, when: 5, action: win_back, reason: hi}\n",
     r"rule 1 'n': when: Input should be a valid string"),
    ("rules:\n  - {name: [a], when: 'clv > 0', action: win_back, reason: hi}\n",
     r"rule 1: name: Input should be a valid string"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: win_back, reason: hi, whenn: x}\n",
     r"rule 1 'n': unknown field 'whenn'"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: 'Win Back!', reason: hi}\n",
     r"rule 1 'n': action: String should match pattern"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: summary, reason: hi}\n",
     r"rule 1 'n': action: 'summary' is taken"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: x, reason: 'gap {gap_mean:.0q} days'}\n",
     r"rule 1 'n': reason: placeholder \{gap_mean:\.0q\}: bad format spec '\.0q'"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: x, reason: ['ok', 'gap {gap_mean'] }\n",
     r"rule 1 'n': reason: bad template 'gap \{gap_mean'"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: x, reason: 'gap {0}'}\n",
     r"rule 1 'n': reason: placeholder \{0\} must name a column"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: x, reason: '{clv.__class__}'}\n",
     r"rule 1 'n': reason: placeholder \{clv\.__class__\} must name a column"),
    ("rules:\n  - {name: n, when: '2 ** clv > 1', action: x, reason: hi}\n", r"rule 1 'n': when: '\*\*' is not allowed"),
    ("rules:\n  - {name: n, when: 'clv > 0', action: x, reason: 5}\n", r"rule 1 'n': reason: give a text or a list"),
    ("rules:\n  - hello\n", r"rule 1: expected a mapping with name, when, action and reason"),
    ("budget: {max_contacts: 5}\n", r"rules: missing; give 'rules:' with a list of rules"),
    ("rules:\n" + RULE_OK + "budget: {max_contacts: -1}\n", r"budget\.max_contacts: Input should be greater than or equal to 0"),
    ("rules:\n" + RULE_OK + "budget: {max_contact: 5}\n", r"budget: unknown field 'max_contact'"),
]


@pytest.mark.parametrize(("text", "message"), LOAD_ERRORS)
def test_bad_rules_files_are_refused_at_load_in_one_line(tmp_path, text, message):
    path = write_rules(tmp_path, text)
    with pytest.raises(RulesError, match=re.escape(str(path)) + ": " + message) as caught:
        load_rules(path)
    assert "\n" not in str(caught.value)


def test_missing_or_binary_rules_file(tmp_path):
    with pytest.raises(RulesError, match=r"nope\.yaml: no such file"):
        load_rules(tmp_path / "nope.yaml")
    binary = tmp_path / "rules.yaml"
    binary.write_bytes(b"\xff\xfe\x00rules")
    with pytest.raises(RulesError, match="is not UTF-8 text"):
        load_rules(binary)


APPLY_ERRORS = [
    ("  - {name: win_back, when: \"lifecycle_stage == 'lapsed' and clv_rank >= 0.7\", action: win_back, reason: hi}\n",
     r"rule 2 'win_back': when: unknown column 'clv_rank' \(did you mean 'clv' or 'clv_pct'\?\); columns: customer_id, as_of, "),
    ("  - {name: sum, when: 'clv * 2', action: win_back, reason: hi}\n",
     r"rule 2 'sum': when: gives float64 values, not true/false"),
    ("  - {name: cmp, when: 'lifecycle_stage > 3', action: win_back, reason: hi}\n",
     r"rule 2 'cmp': when: cannot be evaluated \("),
    ("  - {name: feat, when: 'overdue_ratio > 1.5', action: win_back, reason: hi}\n",
     r"rule 2 'feat': when: column 'overdue_ratio' is a feature column the data does not have; give the feature snapshot"),
    ("  - {name: why, when: 'clv > 0', action: win_back, reason: 'worth {clv_rank:.2f}'}\n",
     r"rule 2 'why': reason: unknown placeholder \{clv_rank:\.2f\} \(did you mean 'clv' or 'clv_pct'\?\); columns: "),
    ("  - {name: fmt, when: 'clv > 0', action: win_back, reason: 'stage {lifecycle_stage:.0f}'}\n",
     r"rule 2 'fmt': reason: cannot format \{lifecycle_stage:\.0f\} with value 'active'"),
]


@pytest.mark.parametrize(("rule", "message"), APPLY_ERRORS)
def test_bad_rules_are_refused_at_apply_in_one_line(tmp_path, rule, message):
    path = write_rules(tmp_path, "rules:\n  - {name: never, when: 'clv < 0', action: vip_care, reason: hi}\n" + rule)
    rules = load_rules(path)
    with pytest.raises(RulesError, match=re.escape(str(path)) + ": " + message) as caught:
        apply_rules(scores_frame([score_row("a")]), rules)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, InputError)


def test_scores_without_the_contract_columns_are_refused():
    with pytest.raises(InputError, match="scores: missing column.*lifecycle_stage"):
        apply_rules(scores_frame([score_row("a")]).drop(columns=["lifecycle_stage"]), load_rules())


def test_empty_scores_give_an_empty_frame():
    out = apply_rules(scores_frame([]), load_rules())
    assert out.empty
    assert list(out.columns[: len(SCORE_COLUMNS) + 3]) == [*SCORE_COLUMNS, "action", "reason", "rule"]


# --------------------------------------------------------------------------- audiences


def targeted_population() -> pd.DataFrame:
    scores, features, _ = default_population()
    return apply_rules(scores, load_rules(), features=features)


def test_write_audiences_writes_one_file_per_action_and_a_summary(tmp_path):
    targeted = targeted_population()
    out_dir = tmp_path / "audiences"
    summary = write_audiences(targeted, out_dir)

    names = {"vip_care", "replenishment_reminder", "churn_warning", "win_back", "new_customer_nurture"}
    assert {p.name for p in out_dir.iterdir() if p.name != OWNER_MARK} == {f"{n}.csv" for n in names} | {"summary.csv"}
    assert (out_dir / OWNER_MARK).exists()  # the folder is the tool's: a later run may replace what it wrote
    win_back = pd.read_csv(out_dir / "win_back.csv")
    assert list(win_back.columns[:4]) == ["customer_id", "action", "reason", "rule"]
    assert set(SCORE_COLUMNS) <= set(win_back.columns)
    assert win_back["customer_id"].tolist() == ["lapsed_valuable", "lapsed_vip"]
    assert (win_back["action"] == "win_back").all()

    written = pd.read_csv(out_dir / "summary.csv")
    assert list(written.columns) == ["action", "customers", "share_of_scored", "expected_revenue_sum", "clv_sum", "p_repurchase_mean"]
    row = written.set_index("action").loc["vip_care"]
    assert row["customers"] == 2
    assert row["share_of_scored"] == pytest.approx(2 / len(targeted))
    assert row["clv_sum"] == pytest.approx(19_000.0)
    assert row["p_repurchase_mean"] == pytest.approx((0.3 + 0.9) / 2)
    assert summary["customers"].sum() == targeted["action"].notna().sum()
    assert [p.name for p in tmp_path.iterdir()] == ["audiences"]


def test_write_audiences_failing_midway_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    out_dir = tmp_path / "audiences"
    out_dir.mkdir()
    (out_dir / "win_back.csv").write_text("old\n")
    mark_folder(out_dir, ["win_back.csv"])  # an earlier run's output
    real_to_csv = pd.DataFrame.to_csv
    calls = []

    def failing_to_csv(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_to_csv(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(OSError, match="disk full"):
        write_audiences(targeted_population(), out_dir)
    assert len(calls) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["audiences"]  # no temporary folder left behind
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([OWNER_MARK, "win_back.csv"])
    assert (out_dir / "win_back.csv").read_text() == "old\n"


def test_write_audiences_replaces_an_existing_folder_on_success(tmp_path):
    out_dir = tmp_path / "audiences"
    out_dir.mkdir()
    (out_dir / "stale_action.csv").write_text("old\n")
    mark_folder(out_dir, ["stale_action.csv"])  # an earlier run's output
    write_audiences(targeted_population(), out_dir)
    assert not (out_dir / "stale_action.csv").exists()
    assert (out_dir / "summary.csv").exists()


def test_write_audiences_without_any_action_writes_an_empty_summary(tmp_path):
    targeted = apply_rules(scores_frame([score_row("a")]), ruleset([{"name": "n", "when": "clv < 0", "action": "x", "reason": "r"}]))
    summary = write_audiences(targeted, tmp_path / "audiences")
    assert summary.empty
    assert [p.name for p in (tmp_path / "audiences").iterdir() if p.name != OWNER_MARK] == ["summary.csv"]


def test_write_audiences_refuses_a_file_as_folder(tmp_path):
    target = tmp_path / "audiences"
    target.write_text("not a folder")
    with pytest.raises(InputError, match="is a file"):
        write_audiences(targeted_population(), target)


# --------------------------------------------------------------------------- reasons in the operator's language


def test_reasons_in_chinese_from_reason_zh_with_labels_and_english_values_elsewhere():
    rows = with_fillers([
        score_row("late", lifecycle_stage="at_risk", p_alive=0.4, clv=50.0),
        score_row("vip", lifecycle_stage="at_risk", p_alive=0.9, clv=10_000.0, next_order_days_p50=12.0),
    ])
    features = pd.DataFrame({"customer_id": ["late"], "gap_mean": [30.0], "days_since_last": [75.0],
                             "overdue_ratio": [2.5]})
    scores = scores_frame(rows)
    english = apply_rules(scores, load_rules(None), features=features, lang="en")
    chinese = apply_rules(scores, load_rules(None), features=features, lang="zh")
    pd.testing.assert_frame_equal(chinese.drop(columns="reason"), english.drop(columns="reason"))
    by_id = dict(zip(chinese["customer_id"], chinese["reason"]))
    assert by_id["late"] == "平时每 30 天下一单，但距上次下单已有 75 天；已是平时间隔的 2.5 倍；仍活跃的概率 40%"
    # the stage placeholder shows the operator's word for it; the column keeps the machine name
    assert by_id["vip"] == "终身价值排在前 5%（10,000）；当前处于衰退期；预计 12 天内再次下单"
    assert set(chinese["lifecycle_stage"]) <= {"active", "at_risk"}
    assert dict(zip(english["customer_id"], english["reason"]))["vip"] == (
        "among the top 5% of customers by lifetime value (10,000); lifecycle stage at_risk; "
        "next order likely in 12 days")


def test_a_rule_without_reason_zh_keeps_its_reason_and_reason_zh_is_checked_like_reason(tmp_path):
    scores = scores_frame([score_row("a", lifecycle_stage="lapsed")])
    plain = ruleset([{"name": "wb", "when": "lifecycle_stage == 'lapsed'", "action": "win_back",
                      "reason": "stage {lifecycle_stage}"}])
    assert apply_rules(scores, plain, lang="zh")["reason"].tolist() == ["stage 睡眠期"]
    assert apply_rules(scores, plain, lang="en")["reason"].tolist() == ["stage lapsed"]
    with pytest.raises(RulesError, match=r"rule 1 'wb': reason: unknown placeholder \{nope\}"):
        apply_rules(scores, ruleset([{"name": "wb", "when": "lifecycle_stage == 'lapsed'", "action": "win_back",
                                      "reason": "ok", "reason_zh": "{nope}"}]), lang="zh")
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - {name: wb, when: p_alive > 0, action: win_back, reason: ok, reason_zh: '{a!r}'}\n",
                   encoding="utf-8")
    with pytest.raises(RulesError, match=r"reason_zh.*conversions \(!r\) are not supported"):
        load_rules(bad)
    with pytest.raises(InputError, match="'fr' is not a language offered here"):
        apply_rules(scores, plain, lang="fr")


def test_the_shipped_rules_say_the_same_in_chinese():
    from serving.targeting.reasons import placeholder_columns

    for rule in load_rules(None).rules:
        assert rule.reason_zh, rule.name
        assert sorted(placeholder_columns(rule.reason_zh)) == sorted(placeholder_columns(rule.reason)), rule.name
