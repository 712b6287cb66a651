"""Speed and memory of the synthetic order-log generator, against a naive per-customer loop.

    .venv/bin/python benchmarks/bench_synth.py [--customers 1000000] [--seed 0]

Times :func:`features.synth.generate_order_log` and writing its result to Parquet, and
reports the peak resident memory of the process. As a baseline, measured in the same run,
a plain Python loop simulates the simpler BG/NBD-only process (no replenishment, no
calendar, one line per order) customer by customer on a subset, and its time is
extrapolated linearly to the full population. The ratio is therefore conservative: the
vectorised generator does more work per order than the loop does.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.synth import generate_order_log  # noqa: E402


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def naive_bgnbd_log(n_customers: int, seed: int = 0, days: float = 1096.0) -> pd.DataFrame:
    """BG/NBD order log simulated one customer and one order at a time."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2023-01-01T00:00:00", "s")
    rows = []
    for c in range(n_customers):
        customer_id = f"c{c + 1:07d}"
        rate = min(rng.gamma(0.9, 1 / 35.0), 1 / 3)
        dropout = rng.beta(1.0, 4.0)
        spend_scale = rng.gamma(5.0, 1 / 120.0)
        t = rng.random() * (365.0 if rng.random() < 0.35 else days)
        while t < days:
            ts = start + np.timedelta64(int(t * 86400), "s")
            rows.append((customer_id, ts, round(rng.gamma(4.0, 1 / spend_scale), 2)))
            if rng.random() < dropout:
                break
            t += rng.exponential(1 / rate)
    log = pd.DataFrame(rows, columns=["customer_id", "order_ts", "amount"])
    log["order_id"] = [f"o{k + 1:09d}" for k in range(len(log))]
    log["order_ts"] = log["order_ts"].astype("datetime64[ns]")
    return log.sort_values(["order_ts", "order_id"], ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-customers", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=None, help="Parquet file to keep (default: a temporary file)")
    args = parser.parse_args(argv)

    began, began_cpu = time.perf_counter(), time.process_time()
    log = generate_order_log(args.customers, seed=args.seed)
    generate_s, generate_cpu_s = time.perf_counter() - began, time.process_time() - began_cpu
    rss_after_generate = peak_rss_gib()
    n_orders = log["order_id"].nunique()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or Path(tmp) / "orders.parquet"
        began = time.perf_counter()
        log.to_parquet(path, index=False)
        parquet_s = time.perf_counter() - began
        parquet_mib = path.stat().st_size / 2**20
    rss_after_parquet = peak_rss_gib()
    n_lines, n_present = len(log), log["customer_id"].nunique()
    del log

    subset = min(args.baseline_customers, args.customers)
    began, began_cpu = time.perf_counter(), time.process_time()
    naive = naive_bgnbd_log(subset, seed=args.seed)
    naive_s, naive_cpu_s = time.perf_counter() - began, time.process_time() - began_cpu
    naive_full_s = naive_s * args.customers / subset

    print(f"customers              {args.customers:,} ({n_present:,} with an order in the window)")
    print(f"orders                 {n_orders:,} ({n_orders / n_present:.2f} per customer)")
    print(f"lines                  {n_lines:,} ({n_lines / n_orders:.3f} per order)")
    print(
        f"generate               {generate_s:.1f} s wall, {generate_cpu_s:.1f} s CPU "
        f"({args.customers / generate_s:,.0f} customers/s, {n_orders / generate_s:,.0f} orders/s)"
    )
    print(f"write parquet          {parquet_s:.1f} s ({parquet_mib:.0f} MiB)")
    print(
        f"peak RSS               {rss_after_generate:.2f} GiB after generate, "
        f"{rss_after_parquet:.2f} GiB with parquet"
    )
    print(
        f"naive loop baseline    {naive_s:.1f} s wall, {naive_cpu_s:.1f} s CPU for {subset:,} customers "
        f"({len(naive):,} orders), extrapolated {naive_full_s:.0f} s for {args.customers:,} "
        f"({args.customers / naive_full_s:,.0f} customers/s, {len(naive) / naive_s:,.0f} orders/s)"
    )
    per_order = (n_orders / generate_s) / (len(naive) / naive_s)
    per_order_cpu = (n_orders / generate_cpu_s) / (len(naive) / naive_cpu_s)
    print(
        f"speed-up               {naive_full_s / generate_s:.1f}x per customer, {per_order:.1f}x per order "
        f"({per_order_cpu:.1f}x per order in CPU time); vectorised full model vs naive loop, BG/NBD only"
    )


if __name__ == "__main__":
    main()
