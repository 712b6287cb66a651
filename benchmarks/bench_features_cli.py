"""`repurchase features` as a user runs it, beside a pandas and a Polars script, in one run.

Each contender is a fresh process timed from start to exit (imports, reading the file,
checking, merging lines, features, writing), on the same order-line file:

- ``cli``: ``repurchase features --orders FILE --cutoff DAY --out OUT.parquet`` (the whole
  contract: validation, the rules for messy exports, 57 features);
- ``pandas``: an idiomatic pandas script, lines merged to orders by ``order_id``, six core
  columns (``frequency``, ``recency``, ``T``, ``monetary_value`` as lifetimes defines them,
  ``orders_365d``, ``spend_365d``), no checks;
- ``polars``: the same six columns in Polars (lazy, one plan).

The three results are compared on those six columns (equal to 1e-9 relative) before the
times are shown. Polars is not a dependency of the project: install it for the benchmark
only, in a separate environment, and point ``--polars-python`` at that interpreter::

    /work/main/.tools/bin/uv venv /tmp/polars-venv
    /work/main/.tools/bin/uv pip install --python /tmp/polars-venv/bin/python polars pyarrow
    .venv/bin/repurchase synth --customers 300000 --out /tmp/synth300k.parquet
    .venv/bin/python benchmarks/bench_features_cli.py --orders /tmp/synth300k.parquet \\
        --polars-python /tmp/polars-venv/bin/python

Without ``--polars-python`` the benchmark tries ``import polars`` in this interpreter and
skips Polars with a note when it is absent. Contenders run one after another, in turns
(cli, pandas, polars, cli, ...), ``--repeat`` times; the best time of each is reported
with the machine's load average, since the cores may be shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ("frequency", "recency", "T", "monetary_value", "orders_365d", "spend_365d")


# --------------------------------------------------------------------------- peers


def pandas_core(orders_path: str, cutoff: str, out_path: str) -> None:
    """The six core columns with pandas: read, merge lines, cut, aggregate, write."""
    import numpy as np
    import pandas as pd

    lines = pd.read_parquet(orders_path, columns=["customer_id", "order_id", "order_ts", "amount"])
    orders = lines.groupby(["customer_id", "order_id"], sort=False, as_index=False).agg(
        order_ts=("order_ts", "min"), amount=("amount", "sum"))
    cut = pd.Timestamp(cutoff)
    orders = orders[orders["order_ts"] < cut + pd.Timedelta(days=1)]
    orders["day"] = orders["order_ts"].dt.normalize()
    days = orders.groupby(["customer_id", "day"], sort=False, as_index=False)["amount"].sum()
    per = days.groupby("customer_id").agg(first=("day", "min"), last=("day", "max"), n_days=("day", "size"),
                                          spend=("amount", "sum"))
    first_spend = days.sort_values("day").groupby("customer_id")["amount"].first()
    frequency = per["n_days"] - 1
    out = pd.DataFrame(index=per.index)
    out["frequency"] = frequency.astype("float64")
    out["recency"] = (per["last"] - per["first"]).dt.days.astype("float64")
    out["T"] = (cut - per["first"]).dt.days.astype("float64")
    repeat = per["spend"] - first_spend.reindex(per.index)
    out["monetary_value"] = np.where(frequency > 0, repeat / frequency.where(frequency > 0, 1), 0.0)
    recent = orders[orders["day"] >= cut - pd.Timedelta(days=364)].groupby("customer_id")["amount"].agg(["size", "sum"])
    out["orders_365d"] = recent["size"].reindex(out.index, fill_value=0).astype("float64")
    out["spend_365d"] = recent["sum"].reindex(out.index, fill_value=0.0).astype("float64")
    out.reset_index().to_parquet(out_path, index=False)


def polars_core(orders_path: str, cutoff: str, out_path: str) -> None:
    """The six core columns with Polars, as one lazy plan."""
    import datetime as dt

    import polars as pl

    cut = dt.datetime.fromisoformat(cutoff)
    orders = (
        pl.scan_parquet(orders_path)
        .select("customer_id", "order_id", "order_ts", "amount")
        .group_by("customer_id", "order_id")
        .agg(pl.col("order_ts").min(), pl.col("amount").sum())
        .filter(pl.col("order_ts") < cut + dt.timedelta(days=1))
        .with_columns(day=pl.col("order_ts").dt.truncate("1d"))
    )
    days = orders.group_by("customer_id", "day").agg(pl.col("amount").sum())
    per = days.group_by("customer_id").agg(
        first=pl.col("day").min(), last=pl.col("day").max(), n_days=pl.len(), spend=pl.col("amount").sum(),
        first_spend=pl.col("amount").sort_by("day").first(),
    )
    recent = (orders.filter(pl.col("day") >= cut - dt.timedelta(days=364)).group_by("customer_id")
              .agg(orders_365d=pl.len().cast(pl.Float64), spend_365d=pl.col("amount").sum()))
    frequency = (pl.col("n_days") - 1).cast(pl.Float64)
    out = per.join(recent, on="customer_id", how="left").select(
        "customer_id",
        frequency.alias("frequency"),
        (pl.col("last") - pl.col("first")).dt.total_days().cast(pl.Float64).alias("recency"),
        (pl.lit(cut) - pl.col("first")).dt.total_days().cast(pl.Float64).alias("T"),
        pl.when(frequency > 0).then((pl.col("spend") - pl.col("first_spend")) / frequency).otherwise(0.0)
        .alias("monetary_value"),
        pl.col("orders_365d").fill_null(0.0),
        pl.col("spend_365d").fill_null(0.0),
    )
    out.collect().write_parquet(out_path)


# --------------------------------------------------------------------------- runs


def _timed(command: list[str], cwd: Path = ROOT) -> tuple[float, float]:
    """Wall-clock seconds and CPU seconds (user + system, all threads) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed, cpu


def _has_polars(python: str) -> bool:
    return subprocess.run([python, "-c", "import polars"], capture_output=True).returncode == 0


def _agree(paths: dict[str, Path]) -> str:
    """Compare the six core columns of every result with the CLI's (1e-9 relative).

    The peers apply none of the loader's rules; on a clean synth log the only one that
    changes anything is the exact duplicate row (one in 3.5 million lines of a
    300,000-customer log), so a handful of customers may differ; more is an error.
    """
    import numpy as np
    import pandas as pd

    frames = {name: pd.read_parquet(path).set_index("customer_id").sort_index() for name, path in paths.items()}
    reference = frames.pop("cli")
    notes = []
    for name, frame in frames.items():
        if not frame.index.equals(reference.index):
            raise SystemExit(f"{name}: other customers than the CLI ({len(frame)} against {len(reference)})")
        differ = np.zeros(len(frame), dtype=bool)
        for column in CORE:
            differ |= ~np.isclose(reference[column].to_numpy(float), frame[column].to_numpy(float), rtol=1e-9, atol=1e-9)
        if differ.sum() > max(5, len(frame) // 10_000):
            raise SystemExit(f"{name}: the core columns differ for {differ.sum():,} customers, "
                             f"e.g. {reference.index[np.argmax(differ)]}")
        notes.append(f"{name} agrees with the CLI on {len(frame) - differ.sum():,} of {len(frame):,} customers")
    return "; ".join(notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", help="an order-line file (default: made by `repurchase synth`)")
    parser.add_argument("--customers", type=int, default=300_000, help="customers of the synth log made without --orders")
    parser.add_argument("--cutoff", default="2025-12-31")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--polars-python", help="an interpreter with polars installed (not the project's)")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit (git archive COMMIT | tar -x -C DIR): "
                        "its `repurchase features` runs too, with this environment, as cli-before")
    parser.add_argument("--peer", choices=("pandas", "polars"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:  # one contender, in its own process
        (pandas_core if args.peer == "pandas" else polars_core)(args.orders, args.cutoff, args.out)
        return

    cli = str(Path(sys.executable).with_name("repurchase"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        orders = args.orders
        if orders is None:
            orders = str(tmp_path / "synth.parquet")
            subprocess.run([cli, "synth", "--customers", str(args.customers), "--out", orders], check=True,
                           capture_output=True)
        polars_python = args.polars_python or sys.executable
        commands = {
            "cli": [cli, "features", "--orders", orders, "--cutoff", args.cutoff, "--out", str(tmp_path / "cli.parquet")],
            "pandas": [sys.executable, __file__, "--peer", "pandas", "--orders", orders, "--cutoff", args.cutoff,
                       "--out", str(tmp_path / "pandas.parquet")],
        }
        if args.before is not None:
            commands["cli-before"] = [sys.executable, "-m", "serving.cli", "features", "--orders", orders, "--cutoff",
                                      args.cutoff, "--out", str(tmp_path / "cli-before.parquet")]
        if _has_polars(polars_python):
            commands["polars"] = [polars_python, __file__, "--peer", "polars", "--orders", orders, "--cutoff",
                                  args.cutoff, "--out", str(tmp_path / "polars.parquet")]
        else:
            print(f"note: polars is not importable by {polars_python}; skipping it (install it in a separate "
                  "environment and pass --polars-python, see the module docstring)")
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        loads = []
        for _ in range(args.repeat):
            for name, command in commands.items():
                loads.append(os.getloadavg()[0])
                wall, cpu = _timed(command, args.before.resolve() if name == "cli-before" else ROOT)
                times[name].append(wall)
                cpus[name].append(cpu)
        agreement = _agree({name: tmp_path / f"{name}.parquet" for name in commands})

    best = {name: min(values) for name, values in times.items()}
    cpu = {name: min(values) for name, values in cpus.items()}
    print(f"{orders}: cutoff {args.cutoff}; load average during the runs {min(loads):.1f}-{max(loads):.1f} "
          f"on {os.cpu_count()} cores; best of {args.repeat}")
    print(agreement + " (the CLI alone drops exact duplicate rows)")
    print("| contender | wall s (each run) | best wall | CPU s (best) | cli / this, wall | cli / this, CPU |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {runs} | {best[name]:.2f} | {cpu[name]:.2f} | {best['cli'] / best[name]:.2f}x "
              f"| {cpu['cli'] / cpu[name]:.2f}x |")


if __name__ == "__main__":
    main()
