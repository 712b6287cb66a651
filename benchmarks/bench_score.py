"""End-to-end batch scoring: features + every model for N synthetic customers.

    .venv/bin/python benchmarks/bench_score.py --customers 1000000

1. prepare (once, cached under benchmarks/data/): a synth log of N customers, and a model
   trained at 2025-09-30 on a sample of 100,000 of them (training samples customers anyway);
2. score all N customers as of 2025-12-31 with `serving.batch.score_log`, in a fresh
   process so that its peak memory is the scoring's own;
3. baseline in the same run, in its own process too: BG/NBD alone scored with lifetimes
   (P(alive) and expected purchases over 90 days) on the same customers' summary, which is
   what a team using the library directly would run.

Prints seconds, customers per second and peak RSS of both, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
TRAIN_CUTOFF, AS_OF = "2025-09-30", "2025-12-31"


def prepare(customers: int, seed: int) -> tuple[Path, Path]:
    import numpy as np

    from features.orders import merge_order_lines
    from features.synth import generate_order_log
    from training.model import RepurchaseModel

    DATA.mkdir(exist_ok=True)
    orders_path = DATA / f"orders_{customers}_{seed}.parquet"
    model_path = DATA / f"model_{customers}_{seed}.pkl"
    if not orders_path.exists():
        began = time.perf_counter()
        orders = merge_order_lines(generate_order_log(customers, seed=seed))
        orders.to_parquet(orders_path, index=False)
        print(f"prepared {len(orders):,} orders in {time.perf_counter() - began:.0f} s")
    if not model_path.exists():
        import pandas as pd

        orders = pd.read_parquet(orders_path)
        ids = orders["customer_id"].unique()
        sample = np.random.default_rng(seed).choice(ids, size=min(100_000, len(ids)), replace=False)
        began = time.perf_counter()
        model = RepurchaseModel().fit(orders[orders["customer_id"].isin(sample)], TRAIN_CUTOFF)
        print(f"trained on {len(sample):,} customers in {time.perf_counter() - began:.0f} s")
        model_path.write_bytes(pickle.dumps(model))
    return orders_path, model_path


def score_child(orders_path: str, model_path: str, out: str) -> None:
    import pandas as pd

    from features.orders import OrderLog
    from serving.batch import score_log

    model = pickle.loads(Path(model_path).read_bytes())
    began = time.perf_counter()
    orders = pd.read_parquet(orders_path)
    log = OrderLog(lines=orders, source="synth")
    run = score_log(model, log, pd.Timestamp(AS_OF), Path(out))
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "customers": run.n_customers, "peak_rss_gib": _peak_gib()}))


def baseline_child(orders_path: str) -> None:
    import numpy as np
    import pandas as pd
    from lifetimes import BetaGeoFitter

    from features.pipeline import build_features

    began = time.perf_counter()
    orders = pd.read_parquet(orders_path, columns=["customer_id", "order_ts", "amount"])
    summary = build_features(orders, AS_OF, core_only=True)
    f, r, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series({"r": 0.25, "alpha": 30.0, "a": 0.8, "b": 2.5})  # scoring cost only: params fixed
    p_alive = fitter.conditional_probability_alive(f, r, T)
    expected = fitter.conditional_expected_number_of_purchases_up_to_time(90, f, r, T)
    assert np.isfinite(p_alive).all() and len(expected) == len(summary)
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "customers": len(summary), "peak_rss_gib": _peak_gib()}))


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (score_child if args.child[0] == "score" else baseline_child)(*args.child[1:])
        return
    orders_path, model_path = prepare(args.customers, args.seed)
    ours = _child("--child", "score", str(orders_path), str(model_path), str(DATA / "scores.parquet"))
    base = _child("--child", "baseline", str(orders_path))
    for name, r in (("ours: features + BTYD + 4 LightGBM models + rules-ready scores", ours),
                    ("baseline: BTYD summary + lifetimes BG/NBD P(alive), E[orders]", base)):
        print(f"{name}\n  {r['customers']:,} customers in {r['seconds']:.1f} s "
              f"({r['customers'] / r['seconds']:,.0f}/s), peak RSS {r['peak_rss_gib']:.2f} GiB")
    print(f"ratio ours / baseline: {ours['seconds'] / base['seconds']:.2f}x the time")


if __name__ == "__main__":
    main()
