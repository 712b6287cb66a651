"""The whole job on the built-in CDNOW log, as `repurchase quickstart` runs it."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from features.io import atomic_path
from features.orders import load_order_log

QUICKSTART_SOURCE = "cdnow"


def run_quickstart(out_dir: Path, *, console: Console, tracking_uri: str) -> dict:
    """Load and validate CDNOW, then run each stage that is available; returns the summary."""
    with console.status("loading and validating the CDNOW order log ..."):
        log = load_order_log(QUICKSTART_SOURCE)
    summary = log.summary()
    table = Table(title=f"order log: {summary['source']}", show_header=False)
    for key in ("customers", "orders", "first_order", "last_order", "revenue"):
        value = summary[key]
        table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "orders_summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    console.print(f"results in {out_dir}/")
    return summary
