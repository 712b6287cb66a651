"""Campaigns: the holdout draw, groups and send/ from `target`, contact hygiene, /target groups, synth --campaigns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import chi2_contingency, chisquare
from typer.testing import CliRunner

from features.contacts import (
    CONTACT_COLUMNS,
    ContactsError,
    assign_groups,
    holdout_draw,
    load_contacts,
)
from features.common.outputs import OWNER_MARK
from serving.cli import app
from score_rows import AS_OF, random_scores
from serving.targeting import Campaign, RuleSet, apply_rules, write_audiences
from training.contract import SCORE_COLUMNS

runner = CliRunner()


def score_rows(n: int, seed: int = 0, prefix: str = "c") -> pd.DataFrame:
    """``n`` lapsed customers with random scores (every one gets the one rule's action)."""
    return random_scores(n, seed, prefix, rfm_segment="hibernating", lifecycle_stage="lapsed", model_version="1")


def one_rule(**extra) -> RuleSet:
    rule = {"name": "wb", "when": "lifecycle_stage == 'lapsed'", "action": "win_back", "reason": "lapsed", **extra}
    return RuleSet.model_validate({"rules": [rule]})


# --------------------------------------------------------------------------- the draw


def test_the_draw_is_stable_and_depends_only_on_customer_action_and_date():
    ids = [f"c{i}" for i in range(1000)]
    first = holdout_draw(ids, "win_back", "2025-06-30")
    assert np.array_equal(first, holdout_draw(ids, "win_back", pd.Timestamp("2025-06-30 17:45")))  # same day
    assert np.array_equal(first[::-1], holdout_draw(ids[::-1], "win_back", "2025-06-30"))  # not the row order
    assert ((first >= 0) & (first < 1)).all()
    assert not np.array_equal(first, holdout_draw(ids, "win_back", "2025-07-01"))  # a new campaign draws afresh
    assert not np.array_equal(first, holdout_draw(ids, "vip_care", "2025-06-30"))
    # a documented, reproducible function: blake2b of "id|action|date", 8 bytes over 2**64
    import hashlib

    digest = hashlib.blake2b(b"c7|win_back|2025-06-30", digest_size=8).digest()
    assert first[7] == int.from_bytes(digest, "big") / 2.0**64


def test_the_draw_is_uniform():
    draws = holdout_draw([f"cust-{i}" for i in range(20_000)], "replenishment_reminder", "2025-01-15")
    counts = np.histogram(draws, bins=20, range=(0, 1))[0]
    assert chisquare(counts).pvalue > 0.001
    groups = assign_groups([f"cust-{i}" for i in range(20_000)], ["replenishment_reminder"] * 20_000,
                           ["2025-01-15"] * 20_000, np.full(20_000, 0.1))
    assert abs((groups == "holdout").mean() - 0.1) < 0.01


def test_groups_are_independent_of_every_score():
    scores = score_rows(6000, seed=1)
    targeted = apply_rules(scores, one_rule(), campaign=Campaign())
    high = targeted["p_repurchase"] >= targeted["p_repurchase"].median()
    holdout = targeted["group"] == "holdout"
    assert abs(holdout[high].mean() - 0.1) < 0.02 and abs(holdout[~high].mean() - 0.1) < 0.02
    table = pd.crosstab(high, holdout)
    assert chi2_contingency(table).pvalue > 0.001
    # other scores for the same customers: the very same groups
    rescored = score_rows(6000, seed=99)
    again = apply_rules(rescored, one_rule(), campaign=Campaign())
    assert again["group"].tolist() == targeted["group"].tolist()


def test_holdout_share_per_rule_and_zero_turns_it_off():
    scores = score_rows(3000)
    none = apply_rules(scores, one_rule(holdout=0.0), campaign=Campaign())
    assert (none["group"] == "treatment").all()
    third = apply_rules(scores, one_rule(holdout=0.3), campaign=Campaign())
    assert abs((third["group"] == "holdout").mean() - 0.3) < 0.03
    assert (third["holdout_share"] == 0.3).all() and (third["campaign_date"] == AS_OF).all()
    with pytest.raises(ValueError, match="holdout"):
        one_rule(holdout=1.0)


def test_without_a_campaign_the_decisions_are_unchanged_and_rows_without_action_have_no_group():
    scores = score_rows(50)
    rules = RuleSet.model_validate({"rules": [{"name": "top", "when": "p_repurchase > 0.5", "action": "vip_care",
                                              "reason": "likely"}]})
    plain = apply_rules(scores, rules)
    assert "group" not in plain.columns
    planned = apply_rules(scores, rules, campaign=Campaign(date="2025-07-02"))
    pd.testing.assert_frame_equal(planned[plain.columns], plain)
    assert planned.loc[planned["action"].isna(), "group"].isna().all()
    assert planned.loc[planned["action"].notna(), "group"].isin(["treatment", "holdout"]).all()
    assert (planned.loc[planned["action"].notna(), "campaign_date"] == pd.Timestamp("2025-07-02")).all()


# --------------------------------------------------------------------------- target writes groups and send/


@pytest.fixture()
def scores_file(tmp_path) -> Path:
    path = tmp_path / "scores.parquet"
    score_rows(500).to_parquet(path, index=False)
    return path


def write_rules(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: wb\n"
        "    when: lifecycle_stage == 'lapsed'\n"
        "    action: win_back\n"
        "    reason: 'lapsed, worth {clv:.0f}'\n"
        "    cooldown_days: 7\n" + extra,
        encoding="utf-8",
    )
    return path


def test_target_writes_group_on_every_row_and_send_with_the_treatment_rows_only(tmp_path, scores_file):
    out = tmp_path / "audiences"
    result = runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "to send" in result.stdout and "holdout" in result.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert (out / "send").is_dir()
    for action in summary["action"]:
        audience = pd.read_csv(out / f"{action}.csv")
        assert audience["group"].isin(["treatment", "holdout"]).all()
        assert list(audience.columns[:5]) == ["customer_id", "action", "reason", "rule", "group"]
        send = pd.read_csv(out / "send" / f"{action}.csv")
        assert (send["group"] == "treatment").all()
        assert sorted(send["customer_id"]) == sorted(audience.loc[audience["group"] == "treatment", "customer_id"])
        assert (pd.to_datetime(audience["campaign_date"]) == AS_OF).all()  # default campaign date: the scores' as_of
    everyone = pd.concat([pd.read_csv(out / f"{a}.csv") for a in summary["action"]])
    assert 0.05 < (everyone["group"] == "holdout").mean() < 0.15

    # a rerun the same day gives the same groups; another campaign date draws again
    again = tmp_path / "again"
    assert runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(again)]).exit_code == 0
    first = summary["action"].iloc[0]
    assert pd.read_csv(again / f"{first}.csv")["group"].tolist() == pd.read_csv(out / f"{first}.csv")["group"].tolist()
    later = tmp_path / "later"
    assert runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(later),
                               "--campaign-date", "2025-07-14"]).exit_code == 0
    redrawn = pd.read_csv(later / f"{first}.csv")
    assert (pd.to_datetime(redrawn["campaign_date"]) == pd.Timestamp("2025-07-14")).all()
    assert redrawn["group"].tolist() != pd.read_csv(out / f"{first}.csv")["group"].tolist()


def test_target_refuses_a_bad_campaign_date_and_a_bad_contacts_file(tmp_path, scores_file):
    out = tmp_path / "audiences"
    result = runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(out), "--campaign-date", "soon"])
    assert result.exit_code == 2 and "--campaign-date" in result.stderr
    bad = tmp_path / "contacts.csv"
    bad.write_text("customer_id,action,contacted_at,group\nc1,win_back,2025-06-01,control\n")
    result = runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(out), "--contacts", str(bad)])
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: contacts.csv: line 2: group: 'control' is not a group; use treatment or holdout"
    ]
    assert not out.exists()


def test_cooldown_and_cap_hold_customers_back_and_say_why(tmp_path, scores_file):
    contacts = tmp_path / "contacts.csv"
    pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c2", "c3", "c4", "c5", "c6"],
            "action": ["replenishment_reminder", "win_back", "vip_care", "win_back", "win_back", "win_back", "win_back"],
            "contacted_at": ["2025-06-27", "2025-06-05", "2025-06-20", "2025-06-25", "2025-06-23", "2025-07-01",
                             "2025-05-20"],
            "group": ["treatment", "treatment", "treatment", "holdout", "treatment", "treatment", "treatment"],
        }
    ).to_csv(contacts, index=False)
    rules = write_rules(tmp_path, "contact_cap: {days: 30, contacts: 2}\n")
    out = tmp_path / "audiences"
    result = runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(out), "--rules", str(rules),
                                 "--contacts", str(contacts)])
    assert result.exit_code == 0, result.output
    assert "3 held back" in result.stdout
    audience = pd.read_csv(out / "win_back.csv").set_index("customer_id")
    held = audience["held_back"].dropna().to_dict()
    assert held == {
        "c1": "contacted 3 days ago for replenishment_reminder (cooldown 7 days)",
        "c2": "contacted 2 times in the last 30 days (cap 2)",
        "c3": "in the holdout of win_back 5 days ago (cooldown 7 days)",
    }
    # c4: 7 days ago, the cooldown is over; c5: contacted after the campaign date (ignored); c6: 41 days ago
    assert audience.loc[["c4", "c5", "c6"], "held_back"].isna().all()
    assert audience["group"].isin(["treatment", "holdout"]).all()  # held-back rows keep their drawn group
    send = pd.read_csv(out / "send" / "win_back.csv")
    assert not set(held) & set(send["customer_id"])
    assert send["held_back"].isna().all() and (send["group"] == "treatment").all()
    # in Chinese, the same customers are held back and told why in Chinese
    chinese = tmp_path / "zh"
    result = runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(chinese), "--rules", str(rules),
                                 "--contacts", str(contacts), "--lang", "zh"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(chinese / "win_back.csv").set_index("customer_id")["held_back"].dropna().to_dict() == {
        "c1": "3 天前已因补货提醒触达（冷却期 7 天）",
        "c2": "最近 30 天已触达 2 次（上限 2 次）",
        "c3": "5 天前在沉睡召回的对照组中（冷却期 7 天）",
    }


def test_held_back_customers_leave_their_budget_places_to_others():
    scores = score_rows(200)
    contacts = pd.DataFrame({"customer_id": scores["customer_id"][:50], "action": "win_back",
                             "contacted_at": pd.Timestamp("2025-06-29"), "group": "treatment"})
    rules = RuleSet.model_validate({"rules": [{"name": "wb", "when": "lifecycle_stage == 'lapsed'", "action": "win_back",
                                               "reason": "lapsed", "cooldown_days": 7}],
                                    "budget": {"max_contacts": 100}})
    targeted = apply_rules(scores, rules, campaign=Campaign(contacts=contacts))
    acted = targeted[targeted["action"].notna()]
    assert acted["held_back"].notna().sum() == 50
    assert acted["held_back"].isna().sum() == 100  # the budget is spent on customers who can be sent


def test_write_audiences_puts_send_beside_audiences_when_asked(tmp_path):
    targeted = apply_rules(score_rows(100), one_rule(), campaign=Campaign())
    write_audiences(targeted, tmp_path / "audiences", send_dir=tmp_path / "send")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audiences", "send"]
    assert {p.name for p in (tmp_path / "audiences").iterdir()} == {"win_back.csv", "summary.csv", OWNER_MARK}
    send = pd.read_csv(tmp_path / "send" / "win_back.csv")
    assert len(send) == (targeted["group"] == "treatment").sum()


def test_load_contacts_checks_the_file(tmp_path):
    good = tmp_path / "c.csv"
    good.write_text("customer_id,action,contacted_at,group,extra\n17,win_back,2025-06-01,treatment,x\n"
                    "18,win_back,2025-06-01T10:30:00,holdout,y\n")
    frame = load_contacts(good)
    assert list(frame.columns[:4]) == list(CONTACT_COLUMNS)
    assert frame["contacted_at"].tolist() == [pd.Timestamp("2025-06-01")] * 2
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,action,contacted_at,group\n17,win_back,2025-06-01,treatment\n17,win_back,2025-06-01,holdout\n")
    with pytest.raises(ContactsError, match=r"lines 2 and 3: customer '17' is listed twice for win_back on 2025-06-01"):
        load_contacts(bad)


# --------------------------------------------------------------------------- /target answers group too


def test_online_targeting_returns_group_drawn_with_the_real_ids():
    from serving.online import RULE_COLUMNS, apply_targeting

    scores = score_rows(300)
    targeted = apply_targeting(None, scores, None)
    assert list(targeted.columns) == [*SCORE_COLUMNS, *RULE_COLUMNS] and "group" in RULE_COLUMNS
    acted = targeted["action"].notna()
    assert targeted.loc[acted, "group"].isin(["treatment", "holdout"]).all()
    assert targeted.loc[~acted, "group"].isna().all()
    # a history batch scores under stand-in keys: the group is drawn with the customers' own ids
    stand_in = scores.assign(customer_id=[str(k) for k in range(len(scores))])
    regrouped = apply_targeting(None, stand_in, None, customer_ids=scores["customer_id"].tolist())
    assert regrouped["group"].tolist() == targeted["group"].tolist()


# --------------------------------------------------------------------------- synth --campaigns


def test_synth_campaigns_writes_the_log_and_its_contacts_with_the_truth(tmp_path):
    out = tmp_path / "shop.parquet"
    result = runner.invoke(app, ["synth", "--customers", "3000", "--seed", "2", "--campaigns", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "true lift over 30 days, replenishment_reminder" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.contacts.parquet", "shop.parquet"]
    contacts = load_contacts(tmp_path / "shop.contacts.parquet")
    assert set(contacts["action"]) == {"replenishment_reminder", "churn_warning", "win_back"}
    assert contacts["customer_id"].is_unique  # one campaign per customer: every effect is its own
    assert abs((contacts["group"] == "holdout").mean() - 0.1) < 0.03
    assert (contacts["holdout_share"] == 0.1).all()
    stamp = json.loads(pq.read_metadata(tmp_path / "shop.contacts.parquet").metadata[b"repurchase"])
    truth = json.loads(stamp["true_effects"])
    assert set(truth) == {"replenishment_reminder", "churn_warning", "win_back", "overall"}
    assert all(count > 0 for count in truth["overall"]["types"].values())  # all four kinds of customer
    log = pd.read_parquet(out)
    last_window_end = contacts["contacted_at"].max() + pd.Timedelta(days=30)
    assert log["order_ts"].max() >= last_window_end  # every window lies inside the log
    refused = runner.invoke(app, ["synth", "--customers", "10", "--campaigns", "--messy", "--out", str(tmp_path / "x.parquet")])
    assert refused.exit_code == 2 and "--campaigns and --messy" in refused.stderr


def test_simulated_truth_matches_the_potential_outcomes():
    from features.campaigns import simulate_campaigns

    simulated = simulate_campaigns(3000, seed=5)
    units = simulated.units
    # who is what: persuadable customers buy only when contacted, put-off ones only when not
    assert (units.loc[units["type"] == "persuadable", "bought_without"] == False).all()  # noqa: E712
    assert units.loc[units["type"] == "persuadable", "bought_with"].all()
    assert (units.loc[units["type"] == "put_off", "bought_with"] == False).all()  # noqa: E712
    assert (units.loc[units["type"] == "lost_cause", ["bought_with", "bought_without"]] == False).all().all()  # noqa: E712
    for action, rows in units.groupby("action"):
        expected = ((rows["type"] == "persuadable").sum() - (rows["type"] == "put_off").sum()) / len(rows)
        assert simulated.true_effects[action]["rate_diff"] == pytest.approx(expected)
    # the heterogeneous effect: community-leaning customers are persuaded more often
    reminded = units[(units["action"] == "replenishment_reminder") & ~units["bought_without"]]
    share = reminded.groupby("channel")["type"].apply(lambda t: (t == "persuadable").mean())
    assert share["community"] > share["storefront"]


def test_the_reports_actions_section_shows_both_groups():
    from serving.report import build_report_html

    targeted = apply_rules(score_rows(400), one_rule(), campaign=Campaign())
    page = build_report_html({}, {}, targeted, targeted)
    actions = page.split('<section id="actions">')[1].split("</section>")[0]
    treatment, holdout = (targeted["group"] == "treatment").sum(), (targeted["group"] == "holdout").sum()
    assert "treatment (sent)" in actions and "<th class=num>holdout</th>" in actions
    assert f"<td class=num>{treatment:,}</td><td class=num>{holdout:,}</td>" in actions
    assert "random holdout" in actions


def test_target_in_chinese_changes_reasons_and_words_never_the_files_machine_values(tmp_path, scores_file):
    english, chinese = tmp_path / "en", tmp_path / "zh"
    assert runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(english)]).exit_code == 0
    result = runner.invoke(app, ["target", "--scores", str(scores_file), "--out", str(chinese), "--lang", "zh"])
    assert result.exit_code == 0, result.output
    assert "位客户" in result.stdout and "to send" not in result.stdout
    summary = pd.read_csv(chinese / "summary.csv")
    pd.testing.assert_frame_equal(summary, pd.read_csv(english / "summary.csv"))  # names and numbers: English
    for action in summary["action"]:
        zh, en = pd.read_csv(chinese / f"{action}.csv"), pd.read_csv(english / f"{action}.csv")
        assert list(zh.columns) == list(en.columns)
        pd.testing.assert_frame_equal(zh.drop(columns="reason"), en.drop(columns="reason"))
        assert zh["reason"].str.contains(r"[\u4e00-\u9fff]").all()
        assert not en["reason"].str.contains(r"[\u4e00-\u9fff]").any()
