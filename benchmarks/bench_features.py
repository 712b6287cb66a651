"""Feature pipeline speed: Ibis on DuckDB against plain pandas, on a synthetic log.

The log comes from :func:`features.synth.generate_order_log` (order lines, merged here to
one row per order by ``order_id``); ``--simple`` swaps in a quick numpy generator. Three
parts are timed, each in its own subprocess so that one part's memory does not inflate
another's peak RSS (the data is handed over as a Parquet file in a temporary folder and
read before the clock starts):

- ``ours-full``: :func:`features.pipeline.build_features`, the whole feature set;
- ``ours-core``: the same function restricted to the shared core
  (:data:`features.pipeline.CORE_FEATURES`: BTYD summary, trailing-window counts and
  spend, gap mean/std/min/last);
- ``pandas-core``: that core written the idiomatic vectorised pandas way (group-by
  aggregations and ``diff``, no per-customer Python).

The two core results are checked equal (to 1e-9 relative). Times are the best of
``--repeat`` runs; peak RSS is the subprocess's high-water mark counted from after the
log is loaded (so reading the Parquet file does not count, but the resident log does).

    python benchmarks/bench_features.py --customers 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from features.pipeline import CORE_FEATURES, WINDOWS, build_features  # noqa: E402

ORDER_COLUMNS = ["customer_id", "order_ts", "amount", "quantity", "category", "channel"]


# --------------------------------------------------------------------------- data


def synth_orders(n_customers: int, seed: int) -> pd.DataFrame:
    """The synthetic log's lines merged to orders (amounts and units summed per order)."""
    from features.synth import generate_order_log

    lines = generate_order_log(n_customers, seed=seed)
    orders = lines.groupby("order_id", sort=False).agg(
        customer_id=("customer_id", "first"),
        order_ts=("order_ts", "first"),
        amount=("amount", "sum"),
        quantity=("quantity", "sum"),
        category=("category", "first"),  # the first line is the order's main item
        channel=("channel", "first"),
    )
    return orders.reset_index(drop=True)[ORDER_COLUMNS]


def simple_orders(n_customers: int, seed: int) -> pd.DataFrame:
    """A quick numpy log: about 10 orders per customer over three years, some same-day."""
    rng = np.random.default_rng(seed)
    per_customer = rng.geometric(1 / 10, n_customers)
    customer = np.repeat(np.arange(n_customers), per_customer)
    start = rng.integers(0, 3 * 365, n_customers)[customer]
    day = np.minimum(start + rng.exponential(60, customer.size).astype(np.int64), 3 * 365 - 1)
    seconds = day * 86400 + rng.integers(0, 86400, customer.size)
    return pd.DataFrame(
        {
            "customer_id": pd.array([f"c{i:07d}" for i in range(n_customers)], dtype="str")[customer],
            "order_ts": np.datetime64("2023-01-01", "s") + seconds.astype("timedelta64[s]"),
            "amount": np.round(rng.gamma(2.0, 50.0, customer.size), 2),
            "quantity": rng.integers(1, 4, customer.size).astype(np.float64),
            "category": pd.array(np.array(["apparel", "coffee", "snacks", "home"])[rng.integers(0, 4, customer.size)], dtype="str"),
            "channel": pd.array(np.array(["community", "storefront"])[rng.integers(0, 2, customer.size)], dtype="str"),
        }
    ).astype({"order_ts": "datetime64[ns]"})


# --------------------------------------------------------------------------- pandas baseline


def pandas_core(orders: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """The shared core in idiomatic vectorised pandas (same definitions as the pipeline).

    One group-by on (customer_id, day) collapses orders to purchase days; its index codes
    number the customers, so every later group-by is on integers; ``diff`` gives the gaps.
    """
    past = orders[orders["order_ts"] < cutoff + pd.Timedelta(days=1)]
    age = (cutoff - past["order_ts"].dt.floor("D")).dt.days.rename("age")
    per_day = past.groupby([past["customer_id"], age], sort=True)["amount"].agg(["size", "sum"])
    customers = per_day.index.levels[0]
    days = pd.DataFrame(
        {
            "customer": per_day.index.codes[0],
            "age": per_day.index.get_level_values("age").to_numpy(),
            "day_orders": per_day["size"].to_numpy(),
            "day_spend": per_day["sum"].to_numpy(),
        }
    )
    # sorted by age within each customer, the next row is the previous purchase day
    days["gap"] = -days.groupby("customer", sort=True)["age"].diff(-1)
    by_customer = days.groupby("customer", sort=True)

    out = pd.DataFrame(index=pd.RangeIndex(len(customers)))
    out["frequency"] = by_customer.size().to_numpy() - 1.0
    out["T"] = by_customer["age"].max().to_numpy().astype(np.float64)
    out["recency"] = out["T"] - by_customer["age"].min().to_numpy()
    repeat_spend = days["day_spend"].where(days["gap"].notna())
    out["monetary_value"] = repeat_spend.groupby(days["customer"]).mean().fillna(0.0).to_numpy()
    for w in WINDOWS:
        recent = days["age"] < w
        out[f"orders_{w}d"] = days["day_orders"].where(recent, 0).groupby(days["customer"]).sum().to_numpy().astype(np.float64)
        out[f"spend_{w}d"] = days["day_spend"].where(recent, 0.0).groupby(days["customer"]).sum().to_numpy()
    out["gap_mean"] = by_customer["gap"].mean().to_numpy()
    out["gap_std"] = by_customer["gap"].std().to_numpy()
    out["gap_min"] = by_customer["gap"].min().to_numpy()
    out["gap_last"] = by_customer["gap"].first().to_numpy()  # first non-null: the latest gap
    out.insert(0, "customer_id", customers)
    return out[["customer_id", *CORE_FEATURES]]


# --------------------------------------------------------------------------- parts


def reset_peak_rss() -> bool:
    """Start the peak-RSS count afresh (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """Peak resident memory of this process since the last reset (VmHWM), in GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_part(part: str, data: Path, cutoff: pd.Timestamp, repeat: int, out: Path) -> dict:
    """Time one part in this process; write its result to ``out``; return the stats."""
    orders = pd.read_parquet(data)
    # the peak counts from here: the loaded log stays resident, reading it does not count
    reset = reset_peak_rss()
    seconds, cpu_seconds = [], []
    for _ in range(repeat):
        cpu_start = os.times()
        start = time.perf_counter()
        if part == "ours-full":
            result = build_features(orders, cutoff.date())
        elif part == "ours-core":
            result = build_features(orders, cutoff.date(), core_only=True)
        elif part == "pandas-core":
            result = pandas_core(orders, cutoff)
        else:
            raise ValueError(part)
        seconds.append(time.perf_counter() - start)
        cpu_end = os.times()
        cpu_seconds.append(cpu_end.user - cpu_start.user + cpu_end.system - cpu_start.system)
    result.to_parquet(out)
    best = int(np.argmin(seconds))
    return {
        "part": part,
        "seconds": seconds[best],
        "cpu_seconds": cpu_seconds[best],
        "all_seconds": seconds,
        "peak_rss_gib": peak_rss_gib(),
        "peak_since_load": reset,
        "rows": len(result),
        "features": result.shape[1] - 1,
    }


def spawn(part: str, data: Path, cutoff: pd.Timestamp, repeat: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--data", str(data), "--cutoff", str(cutoff.date()), "--repeat", str(repeat), "--out", str(out)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_core_equal(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert list(ours.columns) == list(theirs.columns), (list(ours.columns), list(theirs.columns))
    assert ours["customer_id"].astype(str).tolist() == theirs["customer_id"].astype(str).tolist(), "customers differ"
    for name in CORE_FEATURES:
        a, b = ours[name].to_numpy(np.float64), theirs[name].to_numpy(np.float64)
        same_nan = np.isnan(a) == np.isnan(b)
        close = np.isclose(a, b, rtol=1e-9, atol=1e-9) | (np.isnan(a) & np.isnan(b))
        assert same_nan.all() and close.all(), f"{name}: {int((~close).sum())} customers differ"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cutoff", default=None, help="as-of date (default: last day of the log)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per part; the best is reported")
    parser.add_argument("--simple", action="store_true", help="quick numpy log instead of features.synth")
    parser.add_argument("--data", type=Path, default=None, help="reuse (or create) this Parquet order log")
    parser.add_argument("--part", choices=["ours-full", "ours-core", "pandas-core"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.part:
        print(json.dumps(run_part(args.part, args.data, pd.Timestamp(args.cutoff), args.repeat, args.out)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        tmp = Path(tmp)
        data = args.data or tmp / "orders.parquet"
        start = time.perf_counter()
        if args.data is not None and args.data.exists():
            orders = pd.read_parquet(data)
            source = f"{data}"
        else:
            orders = simple_orders(args.customers, args.seed) if args.simple else synth_orders(args.customers, args.seed)
            orders.to_parquet(data)
            source = "simple numpy generator" if args.simple else "features.synth"
        cutoff = pd.Timestamp(args.cutoff) if args.cutoff else orders["order_ts"].max().normalize()
        print(
            f"orders: {len(orders):,} from {orders['customer_id'].nunique():,} customers ({source}, "
            f"{time.perf_counter() - start:.1f} s to prepare); cutoff {cutoff.date()}; "
            f"{os.cpu_count()} CPUs; best of {args.repeat}",
            flush=True,
        )
        del orders

        results = {}
        for part in ("ours-full", "ours-core", "pandas-core"):
            results[part] = spawn(part, data, cutoff, args.repeat, tmp / f"{part}.parquet")
            r = results[part]
            runs = ", ".join(f"{s:.2f}" for s in r["all_seconds"])
            print(
                f"{part:12s} {r['seconds']:7.2f} s wall, {r['cpu_seconds']:6.2f} s CPU  (runs {runs})  "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB  {r['rows']:,} customers x {r['features']} features",
                flush=True,
            )

        assert_core_equal(pd.read_parquet(tmp / "ours-core.parquet"), pd.read_parquet(tmp / "pandas-core.parquet"))
        full = pd.read_parquet(tmp / "ours-full.parquet")
        core = pd.read_parquet(tmp / "ours-core.parquet")
        assert_core_equal(full[["customer_id", *CORE_FEATURES]], core)
        ratio = results["pandas-core"]["seconds"] / results["ours-core"]["seconds"]
        cpu_ratio = results["pandas-core"]["cpu_seconds"] / results["ours-core"]["cpu_seconds"]
        print(f"core equal to pandas (rtol 1e-9) on {len(core):,} customers x {len(CORE_FEATURES)} features")
        print(f"speed-up on the core: {ratio:.1f}x wall, {cpu_ratio:.1f}x CPU (pandas / ours)")
        print(f"load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on the machine skews wall times)")
        print(
            "targets: full < 15 s: {}; core >= 5x pandas: {}; peak < 4 GiB: {}".format(
                "ok" if results["ours-full"]["seconds"] < 15 else "MISSED",
                "ok" if ratio >= 5 else "MISSED",
                "ok" if max(results[p]["peak_rss_gib"] for p in ("ours-full", "ours-core")) < 4 else "MISSED",
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
