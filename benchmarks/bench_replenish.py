"""Product-level replenishment at scale: features + prediction for every (customer, category).

    .venv/bin/python benchmarks/bench_replenish.py --customers 1000000

1. prepare (once, cached under benchmarks/data/): a synth log of N customers (order
   lines, with categories and units), and a replenishment model trained at 2025-09-30 on
   the lines of a sample of 100,000 customers (training samples pairs anyway);
2. timed, in a fresh process: pair features and prediction for all pairs of all N
   customers as of 2025-09-30 (`training.replenish.ReplenishmentModel.predict`), peak RSS;
3. baseline in the same run, in its own process: the naive "own last gap" answer computed
   with pandas (sort, per-pair diff, last gap minus days since), what a team would write
   by hand;
4. accuracy on the same split (truth 2025-10-01 .. 2025-12-29) for the model and both
   baselines (own last gap, category median gap): p50 MAE, p10-p90 coverage, AUC.
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
AS_OF, HORIZON = "2025-09-30", 90


def prepare(customers: int, seed: int) -> tuple[Path, Path]:
    import numpy as np
    import pandas as pd

    from features.synth import generate_order_log
    from features.timecut import until
    from training.replenish import ReplenishmentModel

    DATA.mkdir(exist_ok=True)
    lines_path = DATA / f"lines_{customers}_{seed}.parquet"
    model_path = DATA / f"replenish_model_{customers}_{seed}.pkl"
    if not lines_path.exists():
        began = time.perf_counter()
        generate_order_log(customers, seed=seed).to_parquet(lines_path, index=False)
        print(f"prepared the log in {time.perf_counter() - began:.0f} s")
    if not model_path.exists():
        lines = pd.read_parquet(lines_path)
        ids = lines["customer_id"].unique()
        sample = np.random.default_rng(seed).choice(ids, size=min(100_000, len(ids)), replace=False)
        lines = until(lines[lines["customer_id"].isin(sample)], AS_OF)
        began = time.perf_counter()
        model = ReplenishmentModel(horizon_days=HORIZON).fit(lines, AS_OF)
        print(f"trained on {len(sample):,} customers in {time.perf_counter() - began:.0f} s")
        model_path.write_bytes(pickle.dumps(model))
    return lines_path, model_path


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def model_child(lines_path: str, model_path: str, out: str) -> None:
    import pandas as pd

    from features.replenish import build_pair_labels, pair_lines
    from training.replenish import pair_frame

    model = pickle.loads(Path(model_path).read_bytes())
    table = pair_lines(pd.read_parquet(lines_path, columns=["customer_id", "order_ts", "quantity", "category"]))
    began = time.perf_counter()
    pairs = pair_frame(table, AS_OF, min_category_pairs=model.min_category_pairs)
    featured = time.perf_counter()
    predicted = model.predict_pairs(pairs, AS_OF)
    done = time.perf_counter()
    labels = build_pair_labels(table, AS_OF, HORIZON)
    pairs = pairs.merge(labels, on=["customer_id", "category"], how="left")
    pairs[["customer_id", "category", "label_days", "days_since_last", "last_gap", "category_gap_p10",
           "category_gap_p50", "category_gap_p90"]].join(
        predicted[["p_within_horizon", "next_purchase_days_p10", "next_purchase_days_p50", "next_purchase_days_p90"]]
    ).to_parquet(out, index=False)
    print(json.dumps({"seconds": done - began, "features_seconds": featured - began,
                      "predict_seconds": done - featured, "pairs": len(pairs), "peak_gib": _peak_gib()}))


def baseline_child(lines_path: str) -> None:
    import pandas as pd

    lines = pd.read_parquet(lines_path, columns=["customer_id", "order_ts", "category"])
    began = time.perf_counter()
    past = lines[lines["order_ts"] < pd.Timestamp(AS_OF) + pd.Timedelta(days=1)]
    days = past.assign(day=past["order_ts"].dt.normalize())[["customer_id", "category", "day"]].drop_duplicates()
    days = days.sort_values(["customer_id", "category", "day"])
    days["gap"] = days.groupby(["customer_id", "category"])["day"].diff().dt.days
    last = days.groupby(["customer_id", "category"]).agg(last_day=("day", "max"), last_gap=("gap", "last"))
    due = last["last_gap"] - (pd.Timestamp(AS_OF) - last["last_day"]).dt.days
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "pairs": len(due), "peak_gib": _peak_gib()}))


def _child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def accuracy(path: Path) -> dict:
    import numpy as np
    import pandas as pd

    from training.replenish import _timing_block, baseline_quantiles

    frame = pd.read_parquet(path)
    days = frame["label_days"].to_numpy(dtype=float)
    q = frame[["next_purchase_days_p10", "next_purchase_days_p50", "next_purchase_days_p90"]].to_numpy()
    out = {"model": _timing_block(days, q, frame["p_within_horizon"].to_numpy())}
    for name, own in (("own_last_gap", True), ("category_median", False)):
        bq, score = baseline_quantiles(frame, HORIZON, own=own)
        out[name] = _timing_block(days, bq, score)
    out["bought_share"] = float(np.isfinite(days).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines_path, model_path = prepare(args.customers, args.seed)
    out = DATA / f"replenish_{args.customers}_{args.seed}.parquet"
    model = _child("--model-child", str(lines_path), str(model_path), str(out))
    baseline = _child("--baseline-child", str(lines_path))
    print(f"model    : {model['pairs']:,} pairs in {model['seconds']:.1f} s (features {model['features_seconds']:.1f} s, "
          f"prediction {model['predict_seconds']:.1f} s), peak {model['peak_gib']:.2f} GiB")
    print(f"baseline : own last gap with pandas, {baseline['pairs']:,} pairs in {baseline['seconds']:.1f} s, "
          f"peak {baseline['peak_gib']:.2f} GiB")
    print(f"ratio    : model / baseline time = {model['seconds'] / baseline['seconds']:.2f}")
    result = accuracy(out)
    for name in ("model", "own_last_gap", "category_median"):
        block = result[name]
        print(f"{name:16s} p50 MAE {block['p50_mae_days']:.2f} d, p10-p90 coverage {block['coverage_p10_p90']:.3f}, "
              f"AUC {block['auc']:.4f}")
    best = min(result["own_last_gap"]["p50_mae_days"], result["category_median"]["p50_mae_days"])
    print(f"p50 MAE vs the better baseline: {result['model']['p50_mae_days'] / best - 1:+.1%}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--model-child":
        model_child(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--baseline-child":
        baseline_child(sys.argv[2])
    else:
        main()
