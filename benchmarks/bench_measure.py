"""Does `repurchase measure` recover the simulated lift? Coverage of its 95% intervals over many seeds.

    .venv/bin/python benchmarks/bench_measure.py [--seeds 30] [--customers 20000] [--first-seed 0]

For every seed, :func:`features.campaigns.simulate_campaigns` builds a shop with a year of
past campaigns (three actions, a 10% hashed holdout, customers who buy only if contacted,
who buy anyway, who never buy, and a few put off by the contact), writes the log to
Parquet, loads it back through the order-log loader exactly as ``measure`` does, and
measures each action (:func:`training.measure.measure_campaigns`). The true lift is the
effect on the customers actually contacted, from both potential outcomes of every
contact.

Reports, per action and overall: how often the 95% interval of the rate difference holds
the true lift (its coverage; the target is 90-99%), the mean measured and true lift (bias),
the mean interval width, how often the effect was significant (power), and the same
coverage for the incremental orders' interval. Prints one line per seed as it goes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.campaigns import simulate_campaigns  # noqa: E402
from features.orders import load_order_log  # noqa: E402
from training.measure import measure_campaigns  # noqa: E402


def one_seed(seed: int, customers: int, folder: Path) -> list[dict]:
    simulated = simulate_campaigns(customers, seed=seed)
    path = folder / f"log-{seed}.parquet"
    simulated.lines.to_parquet(path, index=False)
    log = load_order_log(str(path))
    result = measure_campaigns(simulated.contacts, log.orders, window_days=simulated.window_days)
    path.unlink()
    rows = []
    for name, block in [*result["actions"].items(), ("overall", result["overall"])]:
        truth = simulated.true_effects[name]
        low, high = block["rate_diff_ci95"]
        orders_ci = block["incremental_orders_ci95"] or [np.nan, np.nan]
        rows.append({
            "seed": seed,
            "action": name,
            "contacts": truth["customers"],
            "holdout": truth["holdout"],
            "true": truth["rate_diff"],
            "measured": block["rate_diff"],
            "low": low,
            "high": high,
            "covered": low <= truth["rate_diff"] <= high,
            "significant": block["p_value"] < 0.05,
            "orders_covered": orders_ci[0] <= truth["incremental_orders"] <= orders_ci[1],
            "srm_flagged": block["srm"]["mismatch"],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--customers", type=int, default=20_000)
    args = parser.parse_args()

    began = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            started = time.perf_counter()
            found = one_seed(seed, args.customers, Path(tmp))
            rows += found
            misses = [r["action"] for r in found if not r["covered"]]
            print(f"seed {seed:3d}: {time.perf_counter() - started:4.1f} s; "
                  + ", ".join(f"{r['action']} {100 * r['measured']:+.1f} ({100 * r['low']:+.1f}, {100 * r['high']:+.1f}) "
                              f"true {100 * r['true']:+.1f}" for r in found)
                  + (f"  MISSED: {', '.join(misses)}" if misses else ""), flush=True)
    frame = pd.DataFrame(rows)
    summary = frame.groupby("action", sort=False).agg(
        seeds=("seed", "size"),
        contacts=("contacts", "mean"),
        holdout=("holdout", "mean"),
        coverage=("covered", "mean"),
        true_lift_pts=("true", lambda v: 100 * v.mean()),
        measured_lift_pts=("measured", lambda v: 100 * v.mean()),
        interval_width_pts=("high", lambda v: 0.0),
        power=("significant", "mean"),
        orders_coverage=("orders_covered", "mean"),
        srm_flagged=("srm_flagged", "mean"),
    )
    summary["interval_width_pts"] = (100 * (frame["high"] - frame["low"])).groupby(frame["action"], sort=False).mean()
    actions = frame[frame["action"] != "overall"]
    pd.set_option("display.width", 160)
    print()
    print(summary.round(3).to_string())
    print(f"\nall actions (not overall): coverage {actions['covered'].mean():.3f} over {len(actions)} intervals; "
          f"incremental orders {actions['orders_covered'].mean():.3f}; "
          f"{args.seeds} seeds x {args.customers:,} customers in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
