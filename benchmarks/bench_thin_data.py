"""Young shops: where the composite model starts to be trained, and to beat BG/NBD.

    .venv/bin/python benchmarks/bench_thin_data.py                      # 5,000 customers, seeds 0 and 1
    .venv/bin/python benchmarks/bench_thin_data.py --days 91 152 213 --seeds 0

For each history length (days of orders before the cutoff 2025-10-02), a synthetic shop that
opened that many days before the cutoff and whose log runs 90 days past it (the truth), as
`repurchase synth --start ... --end 2025-12-31` writes it; then the backtest at the cutoff,
as `repurchase backtest` runs it. Prints one markdown row per (history, seed): the model's
and BG/NBD's AUC and Brier, how BG/NBD's fit ended, and the model's training origins (or
"BTYD-only" when the history is too short to train it).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from serving.launch import passive_openmp_waits

passive_openmp_waits()  # an entry point: before LightGBM loads (spinning threads stall on busy cores)

from features.orders import merge_order_lines  # noqa: E402
from features.synth import generate_order_log  # noqa: E402
from training.backtest import run_backtest  # noqa: E402

CUTOFF = pd.Timestamp("2025-10-02")
END = "2025-12-31"


def row(days: int, seed: int, customers: int) -> str:
    start = (CUTOFF - pd.Timedelta(days=days)).date().isoformat()
    orders = merge_order_lines(generate_order_log(customers, seed=seed, start=start, end=END), has_order_id=True)
    began = time.perf_counter()
    report = run_backtest(orders, CUTOFF, 90).report
    seconds = time.perf_counter() - began
    model, bgnbd = report["model"], report["bgnbd"]
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    training = model.get("training", {})
    origins = training.get("origins")
    trained = f"{len(origins)} origins" if origins else "BTYD-only"
    check = training.get("latest_origin_check")
    note = f"{check['model_auc']:.3f} vs {check['bgnbd_auc']:.3f}" if check and check["model_auc"] is not None else ""
    if "latest training origin" in report.get("model_note", ""):
        # The latest-origin check turned the boosters off: what would they have scored here?
        unchecked = run_backtest(orders, CUTOFF, 90, model_params={"check_latest_origin": False}).report["model"]
        trained = "BTYD-only (latest-origin check)"
        note = f"unchecked model AUC {fmt(unchecked['auc'])}, Brier {fmt(unchecked['brier'])}"
    return (f"| {days} | {seed} | {report['n_customers']:,} | {report['base_rate']:.3f} | {fmt(model['auc'])} | "
            f"{fmt(bgnbd['auc'])} | {fmt(report['recency_only']['auc'])} | {fmt(model['brier'])} | {fmt(bgnbd['brier'])} | "
            f"{trained} | {note} | {bgnbd['fit_status']} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, nargs="+", default=[61, 91, 122, 137, 152, 213, 274, 365])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--customers", type=int, default=5000)
    args = parser.parse_args()
    print("| history (days) | seed | customers | base rate | model AUC | BG/NBD AUC | recency AUC | model Brier "
          "| BG/NBD Brier | model | latest origin: model vs BG/NBD AUC | BG/NBD fit | backtest |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |")
    for days in args.days:
        for seed in args.seeds:
            print(row(days, seed, args.customers), flush=True)


if __name__ == "__main__":
    main()
