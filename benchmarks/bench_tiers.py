"""Member tiers a year on: the predicted tier against the tier reached, beside "the tier stays".

    .venv/bin/python benchmarks/bench_tiers.py [--synth-seeds 1 2] [--customers 4000]

CDNOW: the backtest at 1997-06-30 (the log ends 1998-06-30, a year later), as
``repurchase backtest --orders cdnow --cutoff 1997-06-30 --json OUT.json`` writes its
``tiers`` block (:func:`training.backtest.run_backtest`, the shipped tiers: silver 0,
gold 100, diamond 300 on trailing 365-day spend). Synth: ``repurchase synth`` logs
(2023-2025) backtested at 2024-12-31, with the shipped tiers and with tiers cut at the
85th and 97th percentiles of trailing spend at the cutoff (synth customers spend about
five times CDNOW's, so the shipped thresholds put most of them in diamond).
Prints one line per split: accuracy and macro-F1 of the model and of persistence.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from features.orders import load_order_log, merge_order_lines
from features.pipeline import build_features
from features.synth import generate_order_log
from training.backtest import run_backtest
from training.tiers import load_tiers, parse_tiers


def line(name: str, block: dict, seconds: float) -> str:
    return (f"{name:<40} accuracy {block['accuracy']:.3f} (stays {block['persistence_accuracy']:.3f})  "
            f"macro-F1 {block['macro_f1']:.3f} (stays {block['persistence_macro_f1']:.3f})  "
            f"{block['n_customers']:,} customers, {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth-seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--skip-cdnow", action="store_true")
    args = parser.parse_args()
    if not args.skip_cdnow:
        began = time.perf_counter()
        block = run_backtest(load_order_log("cdnow").orders, "1997-06-30", 90, source="cdnow").report["tiers"]
        print(line("cdnow 1997-06-30, shipped tiers", block, time.perf_counter() - began), flush=True)
    cutoff = pd.Timestamp("2024-12-31")
    for seed in args.synth_seeds:
        orders = merge_order_lines(generate_order_log(args.customers, seed=seed))
        spend = build_features(orders[orders["order_ts"] < cutoff + pd.Timedelta(days=1)], cutoff)["spend_365d"]
        gold, diamond = (float(round(q)) for q in np.quantile(spend, [0.85, 0.97]))
        by_quantile = parse_tiers({"tiers": [{"name": "silver", "min": 0}, {"name": "gold", "min": gold},
                                             {"name": "diamond", "min": diamond}]})
        for name, tiers in (("shipped tiers", load_tiers()), (f"tiers at {gold:g} / {diamond:g}", by_quantile)):
            began = time.perf_counter()
            block = run_backtest(orders, cutoff, 90, tiers=tiers, source="synth").report["tiers"]
            print(line(f"synth seed {seed} 2024-12-31, {name}", block, time.perf_counter() - began), flush=True)


if __name__ == "__main__":
    main()
