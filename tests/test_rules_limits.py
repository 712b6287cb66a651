"""Rules files that would exhaust memory or crash are refused at load; audience CSVs are safe to open.

Cases that could take gigabytes on a version without the checks run in a child process
whose address space is capped at 2 GB, so a regression fails the test instead of the
machine.
"""

from __future__ import annotations

import csv
import json
import re
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features.common.errors import InputError
from score_rows import score_row, scores_frame
from serving.targeting import RulesError, apply_rules, load_rules, write_audiences

MEMORY_CAP = 2 << 30  # bytes of address space for children that might allocate without bound


def one_rule(when: str = "clv > 0", reason: str | list[str] = "hi", name: str = "bad") -> str:
    return yaml.safe_dump({"rules": [{"name": name, "when": when, "action": "x", "reason": reason}]})


def write_rules(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused_at_load(path: Path) -> str:
    """The one-line message ``load_rules`` refuses ``path`` with."""
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert isinstance(caught.value, InputError)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


# --------------------------------------------------------------------------- reason format specs

# Loaded and applied to 30 customers in a child process: without a bound a width or a
# precision of 99,999,999 is 100 MB per customer.
CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    sys.path.insert(0, {tests!r})
    from features.common.errors import InputError
    from score_rows import score_row, scores_frame
    from serving.targeting import apply_rules, load_rules

    scores = scores_frame([score_row(str(i)) for i in range(30)])
    for path in sys.argv[1:]:
        started = time.perf_counter()
        try:
            apply_rules(scores, load_rules(path))
            outcome = dict(error=None, message="loaded and applied")
        except BaseException as exc:  # MemoryError too: report it, go on with the next file
            outcome = dict(error=type(exc).__name__, input_error=isinstance(exc, InputError), message=str(exc)[:500])
        print(json.dumps(dict(outcome, path=path, seconds=time.perf_counter() - started)), flush=True)
    """
).format(cap=MEMORY_CAP, tests=str(Path(__file__).parent))

HUGE_SPECS = [
    ("{clv:99999999}", r"placeholder \{clv:99999999\}: width 99999999 in format spec '99999999' is too large; at most 50"),
    ("{clv:.99999999f}", r"placeholder \{clv:\.99999999f\}: precision 99999999 .* is too large; at most 20"),
    ("{clv:>099999999,.2f}", r"placeholder \{clv:>099999999,\.2f\}: width 99999999 .* is too large; at most 50"),
    ("{clv:.2f} and {p_repurchase:.999999%}", r"placeholder \{p_repurchase:\.999999%\}: precision 999999 .*at most 20"),
    ("{replenish_remind_on:%999999999Y}", r"placeholder \{replenish_remind_on:%999999999Y\}: bad format spec"),
]


def load_in_capped_child(paths: list[str]) -> dict[str, dict]:
    """Load (and, if that works, apply) each rules file in one child process capped at 2 GB."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *paths], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line["path"]: line for line in map(json.loads, proc.stdout.splitlines())}


@pytest.fixture(scope="module")
def huge_spec_outcomes(tmp_path_factory) -> dict[str, dict]:
    """Each HUGE_SPECS reason (and /dev/zero as a rules file) loaded in one memory-capped child."""
    folder = tmp_path_factory.mktemp("specs")
    paths = {"/dev/zero": "/dev/zero"}
    for index, (reason, _) in enumerate(HUGE_SPECS):
        paths[reason] = str(write_rules(folder, one_rule(reason=["fine", reason]), f"spec{index}.yaml"))
    outcomes = load_in_capped_child(list(paths.values()))
    return {name: outcomes[path] for name, path in paths.items()}


@pytest.mark.parametrize(("reason", "message"), HUGE_SPECS)
def test_format_specs_that_would_take_gigabytes_are_refused_quickly_at_load(huge_spec_outcomes, reason, message):
    outcome = huge_spec_outcomes[reason]
    assert outcome["error"] == "RulesError" and outcome["input_error"], outcome
    assert re.search(r"spec\d\.yaml: rule 1 'bad': reason: " + message, outcome["message"]), outcome["message"]
    assert "\n" not in outcome["message"]
    assert outcome["seconds"] < 5


def test_format_spec_limits_are_inclusive_and_bounded_specs_still_render(tmp_path):
    good = "{clv:>50,.20f}|{p_repurchase:.0%}|{replenish_remind_on:%-d %B %Y}|{lifecycle_stage:^12}"
    rules = load_rules(write_rules(tmp_path, one_rule(reason=good)))
    replenishment = pd.DataFrame(
        {"customer_id": ["a"], "category": ["tea"], "last_purchase": [pd.Timestamp("2025-06-01")],
         "next_purchase_days_p50": [3.0], "p_within_horizon": [0.9], "remind_on": [pd.Timestamp("2025-07-02")]}
    )
    reason = apply_rules(scores_frame([score_row("a", clv=1234.5)]), rules, replenishment=replenishment)["reason"].item()
    clv, share, due, stage = reason.split("|")
    assert len(clv) == 50 and clv.strip() == "1,234.50000000000000000000"
    assert (share, due, stage) == ("30%", "2 July 2025", "   active   ")

    assert "width 51" in refused_at_load(write_rules(tmp_path, one_rule(reason="{clv:51}"), "w.yaml"))
    assert "precision 21" in refused_at_load(write_rules(tmp_path, one_rule(reason="{clv:.21f}"), "p.yaml"))
    long_spec = "{replenish_remind_on:" + "%Y" * 26 + "}"
    refused = refused_at_load(write_rules(tmp_path, one_rule(reason=long_spec), "l.yaml"))
    assert "format spec of 52 characters; at most 50" in refused


def test_reasons_longer_than_a_person_writes_are_refused(tmp_path):
    message = refused_at_load(write_rules(tmp_path, one_rule(reason=["x" * 600, "y" * 600])))
    assert message.endswith("rule 1 'bad': reason: 1,200 characters; a reason has at most 1,000 over all its clauses")
    message = refused_at_load(write_rules(tmp_path, one_rule(reason=" ".join(["{clv:.0f}"] * 21)), "many.yaml"))
    assert message.endswith("rule 1 'bad': reason: 21 placeholders; a reason has at most 20")


# --------------------------------------------------------------------------- conditions


TEXT_ARITHMETIC = r"is arithmetic on {kind}, which could build huge values; arithmetic is for numbers"
HUGE_CONDITIONS = [
    ("'a' * 1000000000 == lifecycle_stage", r"''a' \* 1000000000' " + TEXT_ARITHMETIC.format(kind="text")),
    ("1000000000 * 'a' == lifecycle_stage", r"'1000000000 \* 'a'' " + TEXT_ARITHMETIC.format(kind="text")),
    ("[0] * 1000000000 == clv", r"'\[0\] \* 1000000000' " + TEXT_ARITHMETIC.format(kind="list")),
    ("(0, 1) * 1000000000 == clv", r"'\(0, 1\) \* 1000000000' " + TEXT_ARITHMETIC.format(kind="list")),
    ("('a' * 2) * 1000000000 == lifecycle_stage", r"''a' \* 2' " + TEXT_ARITHMETIC.format(kind="text")),
    ("clv * 1000000000 * 'a' == lifecycle_stage", r"'clv \* 1000000000 \* 'a'' " + TEXT_ARITHMETIC.format(kind="text")),
    ("'%.999999999f' % clv == 'x'", r"''%\.999999999f' % clv' " + TEXT_ARITHMETIC.format(kind="text")),
    ("lifecycle_stage in ['new', 'a' * 1000000000]", r"''a' \* 1000000000' " + TEXT_ARITHMETIC.format(kind="text")),
    ("not " * 5000 + "clv > 0", r"20,007 characters; a condition has at most 2,000"),
    ("not " * 100 + "clv > 0", r"nested more than 50 levels deep \(as in 'not not not \.\.\.'"),
    (" + ".join(["clv"] * 60) + " > 0", r"nested more than 50 levels deep"),
    ("(" * 60 + "-clv" + ")" * 60 + " < 0 and " + "~" * 60 + "(clv > 0)", r"nested more than 50 levels deep"),
    ("clv in [" + ",".join(["0"] * 600) + "]", r"more than 500 terms \(names, numbers, texts, operators\)"),
]


@pytest.mark.parametrize(("when", "message"), HUGE_CONDITIONS)
def test_conditions_that_build_huge_values_or_nest_deeply_are_refused_at_load(tmp_path, when, message):
    started = time.perf_counter()
    refused = refused_at_load(write_rules(tmp_path, one_rule(when=when)))
    assert re.search(r"rules\.yaml: rule 1 'bad': when: " + message, refused), refused
    assert time.perf_counter() - started < 5


def test_arithmetic_on_text_columns_is_refused_before_evaluation_and_numbers_still_work(tmp_path):
    scores = scores_frame([score_row("a"), score_row("b", clv=-3.0)])
    notes = pd.DataFrame({"customer_id": ["a", "b"], "note": pd.Series(["x", "y"], dtype=object), "count": [2, 3]})
    for when, shown in [
        ("customer_id * 3 == 'aaa'", "customer_id * 3"),
        ("rfm_segment + lifecycle_stage == 'x'", "rfm_segment + lifecycle_stage"),
        ("note * count == 'xx'", "note * count"),
        ("(clv > 0) & (note % count == 'x')", "note % count"),
    ]:
        rules = load_rules(write_rules(tmp_path, one_rule(when=when)))  # a column's kind is known only with the data
        with pytest.raises(RulesError, match=r"rule 1 'bad': when: '" + re.escape(shown) + "' is arithmetic on text"):
            apply_rules(scores, rules, features=notes)

    rules = load_rules(write_rules(tmp_path, one_rule(when="clv * 2 + horizon_days % 7 - count > -10 and -clv < 5")))
    assert apply_rules(scores, rules, features=notes)["rule"].tolist() == ["bad", "bad"]


# --------------------------------------------------------------------------- YAML


def deep_through_aliases(levels: int = 8) -> str:
    """Each anchor wraps the previous one in 5 lists: 8 short lines, 40 levels once expanded."""
    lines = ["a0: &a0 [[[[[1]]]]]"] + [f"a{i}: &a{i} [[[[[*a{i - 1}]]]]]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nrules: *a{levels}\n"


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nrules: *a{levels}\n"


def merge_key_bomb(levels: int = 9) -> str:
    lines = ["m0: &m0 {k: v}"] + [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\nrules: []\n"


YAML_REFUSED = [
    ("lists", "rules: " + "[" * 10_000 + "]" * 10_000 + "\n", r"line 1, column 39: YAML nested more than 32 levels deep"),
    ("maps", "rules: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", r"line 1, column 1\d\d: YAML nested more than 32 levels"),
    ("block", "".join("  " * i + "a:\n" for i in range(500)) + "  " * 500 + "b: 1\n", r"YAML nested more than 32 levels"),
    ("aliases", deep_through_aliases(), r"YAML nested more than 32 levels deep once aliases are expanded"),
    ("laughs", billion_laughs(), r"YAML has more than 20,000 values once aliases are expanded"),
    ("merge", merge_key_bomb(), r"YAML has more than 20,000 values once aliases are expanded"),
    ("loop", "rules: &a [*a]\n", r"line 1, column 12: YAML alias refers to the anchor it is inside \(a loop\)"),
    ("flat", "rules: [" + ",".join(["1"] * 30_000) + "]\n", r"YAML has more than 20,000 values"),
    ("big", "# " + "x" * 1_000_000 + "\nrules: []\n", r"larger than 1 MB; a rules file is a few kilobytes"),
]


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in YAML_REFUSED], ids=[case[0] for case in YAML_REFUSED])
def test_deep_or_exploding_yaml_is_refused_in_one_line(tmp_path, text, message):
    started = time.perf_counter()
    refused = refused_at_load(write_rules(tmp_path, text))
    assert re.search(r"rules\.yaml: (?:line \d+, column \d+: )?" + message, refused), refused
    assert time.perf_counter() - started < 5


def test_a_device_that_never_ends_is_read_only_up_to_the_limit(huge_spec_outcomes):
    outcome = huge_spec_outcomes["/dev/zero"]
    assert outcome["error"] == "RulesError", outcome
    assert outcome["message"] == "/dev/zero: larger than 1 MB; a rules file is a few kilobytes"


def test_too_many_rules_are_refused(tmp_path):
    rules = "".join(f"  - {{name: r{i}, when: 'clv > {i}', action: x, reason: hi}}\n" for i in range(201))
    refused = refused_at_load(write_rules(tmp_path, "rules:\n" + rules))
    assert refused.endswith("rules: more than 200 rules; a rules file has at most 200")


def test_anchors_and_aliases_within_the_limits_still_load(tmp_path):
    text = (
        "rules:\n"
        "  - name: a\n    when: clv > 100\n    action: vip_care\n"
        "    reason: &why ['worth {clv:.0f}', 'stage {lifecycle_stage}']\n"
        "  - name: b\n    when: clv > 1\n    action: win_back\n    reason: *why\n"
    )
    rules = load_rules(write_rules(tmp_path, text))
    assert rules.rules[0].reason == rules.rules[1].reason == ["worth {clv:.0f}", "stage {lifecycle_stage}"]
    # and a bomb next to them is still refused
    assert "YAML has more than 20,000 values" in refused_at_load(write_rules(tmp_path, text + billion_laughs(), "bomb.yaml"))


# --------------------------------------------------------------------------- audience CSVs

DANGEROUS_IDS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1"]


def test_audience_csv_text_cells_are_safe_to_open_and_numbers_stay_numbers(tmp_path):
    rows = [score_row(customer_id, clv=-5.0 - i, expected_revenue=-1.5) for i, customer_id in enumerate(DANGEROUS_IDS)]
    rows += [score_row("plain", clv=7.0), score_row("mid=dle", clv=8.0)]
    rules = load_rules(write_rules(tmp_path, one_rule(name="-minus", when="clv < 100", reason="=HYPERLINK(\"x\") {clv:.0f}")))
    targeted = apply_rules(scores_frame(rows), rules)
    before = targeted.copy()
    summary = write_audiences(targeted, tmp_path / "audiences")

    pd.testing.assert_frame_equal(targeted, before)  # the caller's frame is not changed
    assert summary["action"].tolist() == ["x"]
    with open(tmp_path / "audiences" / "x.csv", newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == len(rows)  # a carriage return inside a cell does not start a row
    by_id = {record["customer_id"]: record for record in records}
    assert set(by_id) == {"'" + customer_id for customer_id in DANGEROUS_IDS} | {"plain", "mid=dle"}
    for record in records:
        assert record["reason"].startswith("'=HYPERLINK(\"x\") ")
        assert record["rule"] == "'-minus"
        assert record["action"] == "x"

    written = pd.read_csv(tmp_path / "audiences" / "x.csv")
    for column in ("clv", "expected_revenue", "p_repurchase", "horizon_days"):
        assert pd.api.types.is_numeric_dtype(written[column]), column
    assert written["clv"].tolist() == [-5.0, -6.0, -7.0, -8.0, -9.0, -10.0, 7.0, 8.0]
    assert (written["expected_revenue"].iloc[:6] == -1.5).all()
    assert written["customer_id"].str.startswith("'").tolist() == [True] * 6 + [False, False]

    written_summary = pd.read_csv(tmp_path / "audiences" / "summary.csv")
    assert written_summary.loc[0, "expected_revenue_sum"] == pytest.approx(-1.5 * 6 + 40.0)


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\tx", "'\tx"), ("\rx", "'\rx"),
        ("a=1", "a=1"), ("", ""), ("'=1", "'=1"), (-1.5, -1.5), (-3, -3), (None, None),
    ],
)
def test_spreadsheet_safe_escapes_only_text_that_reads_as_a_formula(value, safe):
    from serving.targeting import spreadsheet_safe

    assert spreadsheet_safe(value) == safe


# --------------------------------------------------------------------------- the command


def test_target_with_deep_yaml_rules_exits_2_in_one_line_and_writes_nothing(tmp_path):
    """The command once ended in a RecursionError (exit 1) here; every load-time refusal above takes this path."""
    scores = tmp_path / "scores.parquet"
    scores_frame([score_row("a"), score_row("b", clv=50.0)]).to_parquet(scores, index=False)
    rules = write_rules(tmp_path, "rules: " + "[" * 10_000 + "]" * 10_000 + "\n", "bad.yaml")
    out_dir = tmp_path / "audiences"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("repurchase")), "target", "--scores", str(scores), "--rules", str(rules),
         "--out", str(out_dir)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, preexec_fn=cap_memory,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0] == f"error: {rules}: line 1, column 39: YAML nested more than 32 levels deep; a rules file needs about 5"
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "scores.parquet"]
