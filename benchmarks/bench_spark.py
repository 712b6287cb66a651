"""DuckDB against Spark local mode, in the same run: features and batch scoring of N customers.

    .venv/bin/python benchmarks/bench_spark.py --customers 1000000

1. prepare (once, cached under benchmarks/data/ by ``bench_score.prepare``): a synth log
   of N customers (1M customers: 9.9M orders) as Parquet, and a model trained at
   2025-09-30 on 100,000 of them; here the model is also saved as an MLflow pyfunc, which
   is what Spark applies;
2. four parts, each in a fresh process: features as of 2025-12-31 with DuckDB
   (``build_features``, one Parquet file) and with Spark (``read_orders`` from the Parquet
   file, ``feature_frame``, a Parquet folder); scoring every customer with
   ``serving.batch.score_log`` and with ``serving.spark_batch.score_on_spark``;
3. checks that both engines wrote the same features and the same scores (1e-9), and
   prints seconds, the Spark / DuckDB ratio and the load average.

Spark runs on ``local[2]`` (``--master`` to change) with the driver memory of
``$REPURCHASE_SPARK_DRIVER_MEMORY`` (4g); its session start-up is timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

AS_OF = "2025-12-31"


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def save_pyfunc(model_path: Path, orders_path: Path, target: Path) -> str:
    """The pickled model as an MLflow pyfunc folder (as ``log_run`` logs it), for spark_udf."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from training.registry import RepurchasePyfunc, _pip_requirements

    if not target.exists():
        model = pickle.loads(model_path.read_bytes())
        orders = pd.read_parquet(orders_path).head(50_000)
        example = model.features(orders, model.spec_.training_cutoff).head(5)
        output = model.score_features(example, model.spec_.training_cutoff, "0")
        signature = infer_signature(example, output, params={"as_of": model.spec_.training_cutoff, "model_version": ""})
        mlflow.pyfunc.save_model(str(target), python_model=RepurchasePyfunc(), artifacts={"model": str(model_path)},
                                 signature=signature, pip_requirements=_pip_requirements())
    return str(target)


def part_features_duckdb(orders_path: str, out: str) -> dict:
    import pandas as pd

    from features.common.outputs import write_parquet
    from features.pipeline import build_features

    began = time.perf_counter()
    orders = pd.read_parquet(orders_path)
    frame = build_features(orders, AS_OF)
    write_parquet(frame, out)
    return {"seconds": time.perf_counter() - began, "customers": len(frame)}


def part_features_spark(orders_path: str, out: str, master: str) -> dict:
    from features.spark import feature_frame, open_spark, read_orders, write_spark_parquet

    began = time.perf_counter()
    with open_spark(master) as spark:
        started = time.perf_counter()
        log = read_orders(spark, orders_path)
        write_spark_parquet(feature_frame(log.orders, AS_OF), out)
        seconds = time.perf_counter() - started
        customers = spark.read.parquet(out).count()
    return {"seconds": seconds, "startup_seconds": started - began, "customers": customers}


def part_score_local(orders_path: str, model_path: str, out: str) -> dict:
    import pandas as pd

    from features.orders import OrderLog
    from serving.batch import score_log

    model = pickle.loads(Path(model_path).read_bytes())
    began = time.perf_counter()
    log = OrderLog(lines=pd.read_parquet(orders_path), source="synth")
    run = score_log(model, log, pd.Timestamp(AS_OF), Path(out))
    return {"seconds": time.perf_counter() - began, "customers": run.n_customers}


def part_score_spark(orders_path: str, pyfunc_path: str, out: str, master: str) -> dict:
    import pandas as pd

    from features.spark import open_spark, read_orders
    from serving.spark_batch import score_on_spark

    began = time.perf_counter()
    with open_spark(master) as spark:
        started = time.perf_counter()
        log = read_orders(spark, orders_path)
        run = score_on_spark(spark, log, pd.Timestamp(AS_OF), out, model_uri=pyfunc_path)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "startup_seconds": started - began, "customers": run.n_customers}


PARTS = {
    "features-duckdb": part_features_duckdb,
    "features-spark": part_features_spark,
    "score-local": part_score_local,
    "score-spark": part_score_spark,
}


def spawn(part: str, *args: str) -> dict:
    cpu_before = os.times()
    proc = subprocess.run([sys.executable, __file__, "--part", part, *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{part} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu_after = os.times()
    result["child_cpu_seconds"] = (cpu_after.children_user - cpu_before.children_user
                                   + cpu_after.children_system - cpu_before.children_system)
    return result


def check_equal(duck_path: Path, spark_path: Path, what: str) -> int:
    import numpy as np
    import pandas as pd

    duck = pd.read_parquet(duck_path).sort_values("customer_id", ignore_index=True)
    spark = pd.read_parquet(spark_path)
    spark = spark.assign(**{c: spark[c].astype(str) for c in spark.columns if isinstance(spark[c].dtype, pd.CategoricalDtype)})
    spark = spark[list(duck.columns)].sort_values("customer_id", ignore_index=True)
    assert duck["customer_id"].tolist() == spark["customer_id"].tolist(), f"{what}: customers differ"
    for name in duck.columns[1:]:
        a, b = duck[name], spark[name]
        if pd.api.types.is_numeric_dtype(a) and not pd.api.types.is_bool_dtype(a):
            a, b = a.to_numpy(float), b.to_numpy(float)
            close = np.isclose(a, b, rtol=1e-9, atol=1e-9) | (np.isnan(a) & np.isnan(b))
            assert close.all(), f"{what}: {name} differs for {(~close).sum()} customers"
        elif pd.api.types.is_datetime64_any_dtype(a):
            assert (a.astype("datetime64[us]") == b.astype("datetime64[us]")).all(), f"{what}: {name} differs"
        else:
            assert (a.astype(str) == b.astype(str)).all(), f"{what}: {name} differs"
    return len(duck)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.part:
        print(json.dumps({**PARTS[args.part](*rest), "peak_rss_gib": _peak_gib()}))
        return

    from bench_score import DATA, prepare

    orders_path, model_path = prepare(args.customers, args.seed)
    pyfunc = save_pyfunc(model_path, orders_path, DATA / f"pyfunc_{args.customers}_{args.seed}")
    print(f"{args.customers:,} customers from {orders_path.name}; Spark master {args.master}; {os.cpu_count()} CPUs; "
          f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    wanted = args.parts.split(",")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_spark_", dir=DATA) as tmp:
        tmp = Path(tmp)
        calls = {
            "features-duckdb": (str(orders_path), str(tmp / "features_duckdb.parquet")),
            "features-spark": (str(orders_path), str(tmp / "features_spark.parquet"), args.master),
            "score-local": (str(orders_path), str(model_path), str(tmp / "local" / "scores.parquet")),
            "score-spark": (str(orders_path), pyfunc, str(tmp / "spark" / "scores.parquet"), args.master),
        }
        for part in [p for p in PARTS if p in wanted]:
            r = results[part] = spawn(part, *calls[part])
            startup = f" (+{r['startup_seconds']:.1f} s Spark start-up)" if "startup_seconds" in r else ""
            print(f"{part:16s} {r['seconds']:7.1f} s{startup}, {r['customers']:,} customers, "
                  f"driver peak RSS {r['peak_rss_gib']:.2f} GiB, load {os.getloadavg()[0]:.1f}", flush=True)
        if {"features-duckdb", "features-spark"} <= results.keys():
            n = check_equal(tmp / "features_duckdb.parquet", tmp / "features_spark.parquet", "features")
            print(f"features equal (1e-9) on {n:,} customers; Spark / DuckDB: "
                  f"{results['features-spark']['seconds'] / results['features-duckdb']['seconds']:.2f}x the time")
        if {"score-local", "score-spark"} <= results.keys():
            n = check_equal(tmp / "local" / "scores.parquet", tmp / "spark" / "scores.parquet", "scores")
            print(f"scores equal (1e-9) on {n:,} customers; Spark / local: "
                  f"{results['score-spark']['seconds'] / results['score-local']['seconds']:.2f}x the time")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
