"""Seasons: the model with and without the origin a year before the cutoff, on the same splits.

    .venv/bin/python benchmarks/bench_seasons.py                       # 20k synth, 2025-10-15, H 60
    .venv/bin/python benchmarks/bench_seasons.py --customers 20000 --seed 1 \\
        --splits 2025-10-15:60 2025-09-30:90 2025-07-31:60 2025-01-10:60

For each split (cutoff:horizon) prints the backtest's base rate and, with ``same_season`` off
and on, the model's mean probability, its gap to the base rate, ECE, Brier and AUC, and the
calibration by origin of the seasonal model.
"""

from __future__ import annotations

import argparse
import time

from features.orders import merge_order_lines
from features.synth import generate_order_log
from training.backtest import _clean, run_backtest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", nargs="+", default=["2025-10-15:60"], help="cutoff:horizon_days")
    args = parser.parse_args()
    orders = merge_order_lines(generate_order_log(args.customers, seed=args.seed))
    print(f"synth {args.customers:,} customers, seed {args.seed}")
    print(f"{'split':<16}{'season':>8}{'base':>8}{'mean p':>8}{'gap':>9}{'ECE':>8}{'Brier':>8}{'AUC':>8}{'s':>6}")
    for split in args.splits:
        cutoff, horizon = split.split(":")
        for same_season in (False, True):
            began = time.perf_counter()
            backtest = run_backtest(orders, cutoff, int(horizon), model_params={"same_season": same_season})
            report, frame = _clean(backtest.report), backtest.frame
            mean_p = frame["model_p_repurchase"].mean()
            model = report["model"]
            print(f"{cutoff + ' H' + horizon:<16}{'on' if same_season else 'off':>8}{report['base_rate']:8.4f}"
                  f"{mean_p:8.4f}{mean_p - report['base_rate']:+9.4f}{model['ece']:8.4f}{model['brier']:8.4f}"
                  f"{model['auc']:8.4f}{time.perf_counter() - began:6.0f}", flush=True)
        for row in report["calibration_by_origin"]:
            print(f"    {row['origin']} {row['role']:<9} {row['customers']:>7,} customers  base {row['base_rate']:.4f}"
                  f"  mean p {row['mean_p_repurchase']:.4f}  gap {row['calibration_gap']:+.4f}  ECE {row['ece']:.4f}")


if __name__ == "__main__":
    main()
