"""Bad input is exit 2 with one line naming what is wrong and where, never a bug (exit 1).

Most cases call the loader in-process (fast); a few go through the CLI.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from features.common.errors import InputError, OrderLogError
from features.orders import load_order_log
from serving.cli import app

HEADER = "customer_id,order_ts,amount\n"
runner = CliRunner()


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def one_line_error(path, column_map=None, *, match: str) -> str:
    with pytest.raises(OrderLogError, match=match) as caught:
        load_order_log(path, column_map)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    return message


# --------------------------------------------------------------------------- time zones


ZONED = [
    ("naive_and_aware", ["2024-01-01T23:30:00+08:00", "2024-01-02 10:00"]),
    ("two_zones", ["2024-01-01T23:30:00+08:00", "2024-01-02T10:00:00-05:00"]),
    ("summer_and_winter_time", ["2024-01-01T23:30:00+01:00", "2024-01-02T10:00:00+02:00"]),
    ("z_and_offset", ["2024-01-01T23:30:00Z", "2024-01-02T10:00:00+01:00"]),
    ("zone_name", ["2024-01-01 23:30 UTC", "2024-01-02 10:00"]),
]


@pytest.mark.parametrize("stamps", [z[1] for z in ZONED], ids=[z[0] for z in ZONED])
def test_each_timestamp_keeps_its_wall_clock_time_whatever_its_zone(tmp_path, stamps):
    path = write(tmp_path, "zones.csv", HEADER + "".join(f"A,{s},{k + 1}\n" for k, s in enumerate(stamps)))
    orders = load_order_log(path).orders
    assert orders["order_ts"].tolist() == [pd.Timestamp("2024-01-01 23:30"), pd.Timestamp("2024-01-02 10:00")]
    assert str(orders["order_ts"].dtype) == "datetime64[ns]"


# --------------------------------------------------------------------------- dates out of range


@pytest.mark.parametrize("value", ["0001-01-01", "1677-01-01", "1850-06-30", "2500-01-01", "9999-12-31"])
def test_dates_outside_1900_to_2200_name_column_and_line(tmp_path, value):
    path = write(tmp_path, "years.csv", HEADER + "A,2024-01-01,1\n" + f"A,{value},2\n")
    one_line_error(path, match=rf"years.csv: column 'order_ts' line 3: '{value}' is out of range; "
                              r"order dates must lie in the years 1900 to 2200")


def test_out_of_range_dates_in_yyyymmdd_and_parquet_are_named(tmp_path):
    path = write(tmp_path, "compact.csv", HEADER + "A,20240101,1\nA,00010101,2\n")
    one_line_error(path, match=r"compact.csv: column 'order_ts' line 3: '00010101' is out of range")
    stamps = pa.array([datetime(2024, 1, 1), datetime(1, 1, 1)], pa.timestamp("us"))
    pq.write_table(pa.table({"customer_id": ["A", "B"], "order_ts": stamps, "amount": [1.0, 2.0]}), tmp_path / "old.parquet")
    one_line_error(tmp_path / "old.parquet", match=r"old.parquet: column 'order_ts' row 2: '0001-01-01 00:00:00' is out of range")


@pytest.mark.parametrize("word", ["now", "today"])
def test_words_for_the_moment_of_reading_are_not_dates(tmp_path, word):
    path = write(tmp_path, "words.csv", HEADER + f"A,{word},1\n")
    one_line_error(path, match=rf"words.csv: column 'order_ts' line 2: '{word}' is not a date")


def test_a_log_spanning_the_whole_date_range_gets_features(tmp_path):
    """Gaps over 46,340 days overflowed DuckDB's INT32 squares (an exit 1 from a valid log)."""
    from features.pipeline import build_features

    path = write(tmp_path, "span.csv", HEADER + "A,1900-01-01,1\nA,1900-01-11,1\nA,2200-12-31,1\nB,2024-01-01,2\n")
    features = build_features(load_order_log(path).orders, pd.Timestamp("2200-12-31")).set_index("customer_id")
    gaps = np.array([10.0, (pd.Timestamp("2200-12-31") - pd.Timestamp("1900-01-11")).days])
    assert features.loc["A", "gap_std"] == pytest.approx(gaps.std(ddof=1))


# --------------------------------------------------------------------------- compressed files


def big_csv_bytes(rows: int = 60_000) -> bytes:
    rng = np.random.default_rng(0)
    lines = [HEADER] + [f"C{rng.integers(1e9)},2024-01-{k % 28 + 1:02d},{rng.integers(1e6) / 100}\n" for k in range(rows)]
    return "".join(lines).encode()


def test_gzip_cut_after_its_first_64_kb_is_named(tmp_path):
    packed = gzip.compress(big_csv_bytes())
    assert len(packed) > 3 * 65536
    path = write(tmp_path, "orders.csv.gz", packed[:65536])
    one_line_error(path, match=r"orders.csv.gz: the gzip file is cut short .*; download or export it again")


def test_corrupt_gzip_data_is_named(tmp_path):
    packed = bytearray(gzip.compress(big_csv_bytes(20_000)))
    packed[2000:2400] = b"\xff" * 400
    path = write(tmp_path, "orders.csv.gz", bytes(packed))
    one_line_error(path, match=r"orders.csv.gz: the gzip (data is corrupt|file is cut short)")


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "header,message",
    [
        ("customer_id,Customer_ID,order_ts,amount",
         r"the header has both 'customer_id' and 'Customer_ID', which differ only in case or spaces; "
         r"rename or drop one, or choose one with --map customer_id=Customer_ID"),
        ("customer_id,order_ts,AMOUNT,amount", r"the header has both 'AMOUNT' and 'amount'"),
        ("customer_id,customer_id,order_ts,amount", r"the header has two columns named 'customer_id'"),
        ("customer_id, customer_id ,order_ts,amount", r"the header has two columns named 'customer_id'"),
    ],
    ids=["case", "case_amount", "exact", "spaces"],
)
def test_headers_the_log_uses_may_not_be_written_twice(tmp_path, header, message):
    path = write(tmp_path, "dup.csv", f"{header}\n{_row_for(header)}\n")
    one_line_error(path, match=rf"dup.csv: {message}")


def _row_for(header: str) -> str:
    values = {"customer_id": "A", "order_ts": "2024-01-01", "amount": "1"}
    return ",".join(values.get(name.strip().lower(), "B") for name in header.split(","))


def test_case_twins_need_a_map_to_choose_and_unused_twins_are_fine(tmp_path):
    """The issue's case: the later of two case twins won and 539 orders went to one customer."""
    rows = "".join(f"c{k},shop,2024-01-{k % 28 + 1:02d},1,x,y\n" for k in range(539))
    path = write(tmp_path, "twins.csv", "customer_id,Customer_ID,order_ts,amount,note,Note\n" + rows)
    one_line_error(path, match=r"'customer_id' and 'Customer_ID'")
    assert load_order_log(path, "customer_id=customer_id").orders["customer_id"].nunique() == 539
    assert load_order_log(path, "customer_id=Customer_ID").orders["customer_id"].unique().tolist() == ["shop"]


def test_parquet_with_a_column_written_twice_is_named(tmp_path):
    table = pa.Table.from_arrays([pa.array(["A"]), pa.array(["B"]), pa.array(["2024-01-01"]), pa.array([1.0])],
                                 names=["customer_id", "customer_id", "order_ts", "amount"])
    pq.write_table(table, tmp_path / "dup.parquet")
    one_line_error(tmp_path / "dup.parquet", match=r"dup.parquet: the header has two columns named 'customer_id'")


# --------------------------------------------------------------------------- rows and lines


def test_a_first_row_one_field_longer_is_an_error_not_a_silent_index(tmp_path):
    path = write(tmp_path, "shifted.csv", HEADER + "X,A,2024-01-01,1\nB,2024-01-02,2\n")
    one_line_error(path, match=r"shifted.csv: line 2 has more fields than the header \(3\)")


def test_trailing_delimiters_do_not_shift_the_columns(tmp_path):
    path = write(tmp_path, "trailing.csv", HEADER + "A,2024-01-01,1,\nB,2024-01-02,2,\n")
    orders = load_order_log(path).orders
    assert orders["customer_id"].tolist() == ["A", "B"] and orders["amount"].tolist() == [1.0, 2.0]


def test_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path):
    path = write(tmp_path, "blank.csv", HEADER + "\nA,2024-01-01,1\n\n\nB,soon,2\n")
    one_line_error(path, match=r"blank.csv: column 'order_ts' line 6: 'soon' is not a date")
    path = write(tmp_path, "quoted.csv", HEADER + '"A\nB\nC",2024-01-01,1\nB,soon,2\n')
    one_line_error(path, match=r"quoted.csv: column 'order_ts' line 5: 'soon' is not a date")


def test_values_with_line_breaks_or_escapes_stay_on_one_line(tmp_path):
    path = write(tmp_path, "nl.csv", HEADER + 'A,2024-01-01,"1\n2"\n')
    one_line_error(path, match=r"nl.csv: column 'amount' line 2: '1\\n2' is not a number")
    path = write(tmp_path, "esc.csv", HEADER + "A,2024-01-01,\x1b[31mred\n")
    assert "\x1b" not in one_line_error(path, match=r"esc.csv: column 'amount' line 2: '\\x1b\[31mred' is not a number")


@pytest.mark.parametrize("ids,expected", [([17.0, np.inf], ["17", "inf"]), ([17.0, 2.5], ["17", "2.5"])])
def test_float_ids_that_are_not_all_whole_numbers_load(tmp_path, ids, expected):
    frame = pd.DataFrame({"customer_id": ids, "order_ts": ["2024-01-01"] * 2, "amount": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "ids.parquet")
    assert sorted(load_order_log(tmp_path / "ids.parquet").orders["customer_id"]) == expected


# --------------------------------------------------------------------------- hostile files


HOSTILE = [
    ("colon.csv", "customer_id:order_ts:amount\nA:2024-01-01:1\n",
     r"colon.csv: the header is one column 'customer_id:order_ts:amount'; separate the columns with"),
    ("utf16.csv", (HEADER + "A,2024-01-01,1\n").encode("utf-16"), r"utf16.csv: is UTF-16 text; save the file as UTF-8"),
    ("quote.csv", HEADER + 'A,2024-01-01,1\n"B,2024-01-02,2\n',
     r"quote.csv: line 3 opens a quoted value \(\"\) that is never closed"),
    ("huge.csv", HEADER + "A,2024-01-01,1e308\n", r"huge.csv: column 'amount' line 2: '1e308' is too large"),
    ("noname.csv", ",order_ts,amount\nA,2024-01-01,1\n",
     r"noname.csv: missing required column 'customer_id' \(columns: \(no name\), order_ts, amount\)"),
]


@pytest.mark.parametrize("name,content,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_csv_files_get_one_clear_line(tmp_path, name, content, message):
    one_line_error(write(tmp_path, name, content), match=message)


def test_folders_given_as_orders_say_what_they_hold(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", match=r"empty: is an empty folder; --orders takes a file")
    (tmp_path / "exports").mkdir()
    write(tmp_path / "exports", "orders.csv", HEADER + "A,2024-01-01,1\n")
    one_line_error(tmp_path / "exports", match=r"exports: is a folder without Parquet files \(it holds e.g. 'orders.csv'\)")


# Fields that have broken the loader, mixed with plain ones; hypothesis combines them.
TOKENS = [
    "A", "b7", "", " ", "17", "1.5", "-3", "0", "1e400", "-1e300", "-inf", "NaN", "nan", "inf", "$4", "[/bold]", "[red]x",
    "2024-01-01", "2024-02-30", "20240101", "00010101", "1677-09-21", "0001-01-01", "9999-12-31", "2262-04-12",
    "2024-01-01T23:30:00+08:00", "2024-07-01T08:00:00-05:00", "2024-03-01T00:00Z", "2024-01-01 10:00 UTC",
    "now", "today", "1/2/2024", "yesterday", '"quoted, comma"', '"line\nbreak"', '"', "\ufeff", "é", "\x00",
]
NAMES = ["customer_id", "Customer_ID", " customer_id ", "order_ts", "ORDER_TS", "amount", "Amount", "quantity",
         "order_id", "category", "channel", "", "note", "\ufeffcustomer_id"]


@st.composite
def csv_files(draw) -> bytes:
    sep = draw(st.sampled_from([",", ";", "\t", "|"]))
    header = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6))
    if draw(st.booleans()):
        header = ["customer_id", "order_ts", "amount"] + header[: draw(st.integers(0, 2))]
    field = st.one_of(st.sampled_from(TOKENS), st.text(max_size=6))
    rows = draw(st.lists(st.lists(field, min_size=0, max_size=len(header) + 1), max_size=8))
    lines = [sep.join(header)] + [sep.join(row) for row in rows]
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return ending.join(lines).encode("utf-8", errors="surrogatepass") + draw(st.sampled_from([b"", b"\n"]))


def assert_valid_or_input_error(path: Path) -> None:
    try:
        log = load_order_log(path)
    except InputError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    lines = log.lines
    assert len(lines) and (lines["customer_id"].str.strip() != "").all()
    assert lines["order_ts"].between(pd.Timestamp("1900-01-01"), pd.Timestamp("2201-01-01")).all()
    assert (np.abs(lines["amount"].to_numpy()) <= 1e15).all()


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(content=csv_files())
def test_fuzzed_csv_files_load_or_raise_input_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "orders.csv"
    path.write_bytes(content)
    assert_valid_or_input_error(path)


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), csv_files().map(gzip.compress)),
       cut=st.integers(min_value=0, max_value=400), name=st.sampled_from(["orders.csv", "orders.csv.gz", "orders.parquet"]))
def test_any_bytes_load_or_raise_input_error(tmp_path_factory, content, cut, name):
    path = tmp_path_factory.mktemp("bytes") / name
    path.write_bytes(content[: cut or None])
    assert_valid_or_input_error(path)


# --------------------------------------------------------------------------- the command line


def test_markup_in_the_data_is_printed_as_written(tmp_path):
    for amount in ("[/bold]", "[red]x"):
        path = write(tmp_path, "markup.csv", HEADER + f"A,2024-01-01,{amount}\n")
        result = runner.invoke(app, ["features", "--orders", str(path), "--cutoff", "2024-01-01",
                                     "--out", str(tmp_path / "f.parquet")])
        assert result.exit_code == 2, result.output
        assert f"error: markup.csv: column 'amount' line 2: '{amount}' is not a number" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "f.parquet").exists()


def test_cut_gzip_through_the_command_is_exit_2_and_one_line(tmp_path):
    path = write(tmp_path, "orders.csv.gz", gzip.compress(big_csv_bytes())[:65536])
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("repurchase")), "features", "--orders", str(path), "--cutoff", "2024-01-31",
         "--out", str(tmp_path / "f.parquet")],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: orders.csv.gz: the gzip file is cut short (it ends before its end marker: a partial download or copy?); "
        "download or export it again"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv.gz"]


@pytest.mark.parametrize("value", ["0001-01-01", "1677-09-21", "9999-12-31"])
def test_command_line_dates_outside_1900_to_2200_are_refused(value):
    from features.orders import parse_date

    with pytest.raises(InputError, match=rf"--cutoff: '{value}' is out of range; use a date in the years 1900 to 2200"):
        parse_date(value, "--cutoff")


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--orders", "cdnow-sample", "--cutoff", "0001-01-01"],
        ["backtest", "--orders", "cdnow-sample", "--cutoff", "1997-09-30", "--horizon-days", "1000000000", "--json", "b.json"],
    ],
    ids=["year_1", "huge_horizon"],
)
def test_flags_that_overflow_dates_are_exit_2(tmp_path, mlflow_store, args):
    result = runner.invoke(app, [a if a != "b.json" else str(tmp_path / a) for a in args])
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output
    assert not (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------- optional columns at scoring


@pytest.mark.parametrize("dropped", [["quantity"], ["quantity", "category", "channel"]], ids=["quantity", "all"])
def test_a_log_without_optional_columns_scores_with_the_contract_defaults(tmp_path, fitted_model, synth_orders, dropped):
    from features.orders import OPTIONAL_DEFAULTS, OrderLog
    from serving.batch import score_log

    as_of = pd.Timestamp("2025-09-30")
    without = OrderLog(lines=synth_orders.drop(columns=dropped), source="x", has_order_id=False)
    run = score_log(fitted_model, without, as_of, tmp_path / "without.parquet")
    assert run.defaults_used == {name: OPTIONAL_DEFAULTS[name] for name in dropped}
    defaults = OrderLog(lines=synth_orders.assign(**{name: OPTIONAL_DEFAULTS[name] for name in dropped}), source="x")
    expected = score_log(fitted_model, defaults, as_of, tmp_path / "defaults.parquet")
    assert expected.defaults_used == {}
    scores = pd.read_parquet(run.scores_path)
    assert len(scores) == run.n_customers > 0 and scores["p_repurchase"].between(0, 1).all()
    pd.testing.assert_frame_equal(scores, pd.read_parquet(expected.scores_path))


def test_score_command_scores_a_log_without_quantity_and_says_so(tmp_path, monkeypatch, mlflow_store, fitted_model, synth_orders):
    import training.registry

    monkeypatch.setattr(training.registry, "load_scorer", lambda uri: (fitted_model, "3"))
    path = tmp_path / "orders.parquet"
    synth_orders.drop(columns=["quantity"]).to_parquet(path)
    out = tmp_path / "scores.parquet"
    result = runner.invoke(app, ["score", "--orders", str(path), "--as-of", "2025-09-30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert ("warning: orders.parquet has no quantity column, which the model was trained with; "
            "scored with the order-log contract's defaults (quantity 1)") in result.output
    assert len(pd.read_parquet(out)) > 0
