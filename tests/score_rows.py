"""Score-contract rows for the targeting tests: one unremarkable customer, a frame of them, or a random population."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.contract import SCORE_COLUMNS, uplift_columns

AS_OF = pd.Timestamp("2025-06-30")


def score_row(customer_id: str, **values) -> dict:
    """One score-contract row: an unremarkable active customer unless told otherwise.

    ``churn_risk`` follows ``p_repurchase`` (1 - p) unless given.
    """
    row = {
        "customer_id": customer_id,
        "as_of": AS_OF,
        "horizon_days": 90,
        "p_alive": 0.9,
        "p_repurchase": 0.3,
        "expected_orders": 0.5,
        "expected_revenue": 20.0,
        "clv": 10.0,
        "next_order_days_p10": np.nan,
        "next_order_days_p50": np.nan,
        "next_order_days_p90": np.nan,
        "rfm_segment": "need_attention",
        "lifecycle_stage": "active",
        "model_version": "3",
        # a silver member two expected orders short of gold, unlikely to move
        "member_tier": "silver",
        "predicted_tier": "silver",
        "p_upgrade": 0.05,
        "p_downgrade": 0.0,
        "spend_to_next_tier": 80.0,
    }
    row.update(values)
    row.setdefault("churn_risk", 1.0 - row["p_repurchase"])
    return row


def scores_frame(rows: list[dict]) -> pd.DataFrame:
    """Score rows in contract order, then the uplift columns when the rows have them."""
    return pd.DataFrame(rows, columns=[*SCORE_COLUMNS, *uplift_columns(dict.fromkeys(k for row in rows for k in row))])


def random_scores(n: int, seed: int = 0, prefix: str = "c", **values) -> pd.DataFrame:
    """``n`` customers ``<prefix>0``, ``<prefix>1``, ... with random p_alive, p_repurchase (and the expected
    orders and revenue that follow from it) and CLV; every other column as :func:`score_row`, or ``values``."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    drawn = {
        "customer_id": [f"{prefix}{i}" for i in range(n)],
        "p_alive": rng.random(n),
        "p_repurchase": p,
        "expected_orders": p * 2,
        "expected_revenue": p * 100,
        "clv": rng.gamma(2.0, 50.0, n),
        "churn_risk": 1 - p,
    }
    return pd.DataFrame({**score_row("", **values), **drawn}, columns=list(SCORE_COLUMNS))


def experiment_rows(rng: np.random.Generator, rate_t: float, rate_h: float, n_t: int = 2000, n_h: int = 2000) -> pd.DataFrame:
    """Per-customer outcomes of a randomised campaign (``training.measure.compare`` input): buyers drawn at
    ``rate_t`` among ``n_t`` treated and ``rate_h`` among ``n_h`` held out, one order of 10.0 each."""
    bought = np.r_[rng.random(n_t) < rate_t, rng.random(n_h) < rate_h]
    return pd.DataFrame({"group": ["treatment"] * n_t + ["holdout"] * n_h, "bought": bought,
                         "orders": bought.astype(int), "revenue": bought * 10.0})
