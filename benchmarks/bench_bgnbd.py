"""BG/NBD fit speed: ``training.btyd.BTYDModel`` against ``lifetimes.BetaGeoFitter``.

Simulates a BG/NBD customer base with day-resolution order dates and first orders spread
uniformly over the two years before the cutoff, then fits both on the same summary (in
days) in the same run, and prints rows, distinct rows, seconds, the speed-up, both
parameter sets (alpha per day) and their largest relative difference.

    .venv/bin/python benchmarks/bench_bgnbd.py --customers 1000000 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.btyd import BTYDModel, compress_rfm, simulate_customers  # noqa: E402

# Per day: alpha = 28 days is 4 weeks; about half the customers buy again within two years.
TRUE_PARAMS = {"r": 0.25, "alpha": 28.0, "a": 0.8, "b": 2.5}
FIRST_ORDER_SPREAD_DAYS = 730


def simulate(customers: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    T = rng.integers(0, FIRST_ORDER_SPREAD_DAYS, customers).astype(float)
    return simulate_customers("bgnbd", TRUE_PARAMS, T, resolution=1.0, rng=rng)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-lifetimes", action="store_true", help="time only this project's fit")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = simulate(args.customers, args.seed)
    frequency, recency, T = data["frequency"], data["recency"], data["T"]
    seconds = time.perf_counter() - started
    print(f"simulated {args.customers:,} customers in {seconds:.1f} s; true params (per day) {TRUE_PARAMS}")
    print(f"repeat buyers: {np.mean(frequency > 0):.1%}; max frequency {frequency.max():.0f}")
    n_distinct = compress_rfm(frequency, recency, T).n_distinct
    print(f"rows: {frequency.size:,}; distinct (frequency, recency, T) rows: {n_distinct:,}")

    started = time.perf_counter()
    ours = BTYDModel(time_unit_days=1.0).fit(frequency, recency, T)
    ours_seconds = time.perf_counter() - started
    print(f"training.btyd.BTYDModel:                     {ours_seconds:6.2f} s  {_show(ours.params_)}")

    if args.skip_lifetimes:
        return 0
    from lifetimes import BetaGeoFitter

    started = time.perf_counter()
    theirs = BetaGeoFitter().fit(frequency, recency, T)
    theirs_seconds = time.perf_counter() - started
    theirs_params = {name: float(theirs.params_[name]) for name in TRUE_PARAMS}
    print(f"lifetimes.BetaGeoFitter:                 {theirs_seconds:6.2f} s  {_show(theirs_params)}")

    max_relative = max(abs(ours.params_[k] - theirs_params[k]) / abs(theirs_params[k]) for k in TRUE_PARAMS)
    print(f"speed-up: {theirs_seconds / ours_seconds:.1f}x; max relative parameter difference: {max_relative:.1e}")

    # Compression alone: lifetimes on the distinct rows with weights (compression time included).
    started = time.perf_counter()
    distinct = compress_rfm(frequency, recency, T).distinct_rows()
    compressed = BetaGeoFitter().fit(*distinct[:3], weights=distinct[3])
    compressed_seconds = time.perf_counter() - started
    compressed_params = {name: float(compressed.params_[name]) for name in TRUE_PARAMS}
    print(f"lifetimes on distinct rows with weights: {compressed_seconds:6.2f} s  {_show(compressed_params)}")
    print(f"speed-up of compression alone: {theirs_seconds / compressed_seconds:.1f}x")
    return 0


def _show(params: dict) -> str:
    return " ".join(f"{k}={v:.6f}" for k, v in params.items())


if __name__ == "__main__":
    raise SystemExit(main())
