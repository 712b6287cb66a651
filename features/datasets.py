"""Built-in order logs shipped inside the ``lifetimes`` wheel (CDNOW), read by path.

``lifetimes.datasets`` imports ``pkg_resources`` at import time, which recent setuptools
no longer ships, so the files are located from the installed package's location instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

BUILTIN_SOURCES = {
    "cdnow": "CDNOW_master.txt",
    "cdnow-sample": "CDNOW_sample.txt",
}


def lifetimes_datasets_dir() -> Path:
    """Folder of the data files inside the installed ``lifetimes`` package."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the 'lifetimes' package is not installed; run `make quickstart` or `uv sync`")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


def load_cdnow(name: str = "cdnow") -> pd.DataFrame:
    """CDNOW order log as raw order lines: customer_id, order_ts, quantity, amount.

    ``cdnow`` is the master log (23,570 customers who first bought in Q1 1997, orders to
    June 1998); ``cdnow-sample`` is the 1/10 sample (2,357 customers) of Fader, Hardie &
    Lee (2005). Customer ids keep CDNOW's zero padding so both logs name a customer alike.
    """
    path = lifetimes_datasets_dir() / BUILTIN_SOURCES[name]
    if name == "cdnow":
        raw = pd.read_csv(path, sep=r"\s+", header=0, dtype={"customer_id": str, "date": str})
    else:
        raw = pd.read_csv(
            path,
            sep=r"\s+",
            header=None,
            names=["customer_id", "sample_index", "date", "number_of_cds", "dollar_value"],
            dtype={"customer_id": str, "sample_index": str, "date": str},
        )
    return pd.DataFrame(
        {
            "customer_id": raw["customer_id"].astype("str"),
            "order_ts": pd.to_datetime(raw["date"], format="%Y%m%d").astype("datetime64[ns]"),
            "quantity": raw["number_of_cds"].astype("float64"),
            "amount": raw["dollar_value"].astype("float64"),
        }
    )
