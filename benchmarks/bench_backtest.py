"""Accuracy: the composite model against BG/NBD and recency-only on the same temporal split.

    .venv/bin/python benchmarks/bench_backtest.py                 # CDNOW at 1997-09-30 and synth
    .venv/bin/python benchmarks/bench_backtest.py --synth-customers 100000

Prints, for each log, the p_repurchase metrics of the model and both baselines, revenue and
timing metrics, holdout orders, and the seconds the backtest took.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd

from features.orders import load_order_log, merge_order_lines
from features.synth import generate_order_log
from training.backtest import _clean, run_backtest


def show(name: str, orders: pd.DataFrame, cutoff: str, horizon: int) -> dict:
    began = time.perf_counter()
    report = _clean(run_backtest(orders, cutoff, horizon, source=name).report)
    seconds = time.perf_counter() - began
    print(f"\n== {name}: cutoff {cutoff}, horizon {horizon} d, {report['n_customers']:,} customers, "
          f"base rate {report['base_rate']:.3f}, backtest {seconds:.1f} s")
    print(f"{'metric':<16}{'model':>10}{'BG/NBD':>10}{'recency':>10}{'model-BG/NBD':>14}")
    for metric in ("auc", "pr_auc", "brier", "log_loss", "ece", "lift_top10", "capture_top10"):
        m, b, r = (report[k].get(metric) for k in ("model", "bgnbd", "recency_only"))
        fmt = lambda v: f"{v:10.4f}" if v is not None else f"{'-':>10}"  # noqa: E731
        print(f"{metric:<16}{fmt(m)}{fmt(b)}{fmt(r)}{(m - b):+14.4f}")
    for block in ("revenue", "orders"):
        for metric in ("gini", "spearman", "decile_mape"):
            print(f"{block + ' ' + metric:<16}{report['model'][block][metric]:10.4f}{report['bgnbd'][block][metric]:10.4f}")
    for metric in ("p50_mae_days", "coverage_p10_p90", "n_with_p50"):
        print(f"{'timing ' + metric:<16}{report['model']['timing'][metric]:10.3f}{report['bgnbd']['timing'][metric]:10.3f}")
    h = report["holdout_orders"]
    print(f"holdout orders: actual {h['actual']:,}  model {h['model']:,.0f}  BG/NBD {h['bgnbd']:,.0f}")
    return {"seconds": seconds, **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synth-customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the reports here")
    args = parser.parse_args()
    results = {"cdnow": show("cdnow", load_order_log("cdnow").orders, "1997-09-30", 90)}
    synth = merge_order_lines(generate_order_log(args.synth_customers, seed=args.seed))
    results["synth"] = show(f"synth-{args.synth_customers}", synth, "2025-09-30", 90)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
