"""The score contract (DESIGN.md): the columns every score row has, in order, and their types.

Batch files, API responses and the pyfunc's output all follow it. Kept free of heavy
imports so that the rules engine and the service can name the columns cheaply.

Beyond DESIGN.md's list, the scores carry the RFM scores ``rfm_r``, ``rfm_f``, ``rfm_m``
(1-5, ``training.segments``) that ``rfm_segment`` follows from, so a segment can be read
off its own row, and the feature snapshot carries the same three values. After DESIGN.md's
list come the member-tier columns (``training.tiers``).
"""

from __future__ import annotations

SCORE_COLUMNS = (
    "customer_id",
    "as_of",
    "horizon_days",
    "p_alive",
    "p_repurchase",
    "expected_orders",
    "expected_revenue",
    "clv",
    "next_order_days_p10",
    "next_order_days_p50",
    "next_order_days_p90",
    "churn_risk",
    "rfm_r",
    "rfm_f",
    "rfm_m",
    "rfm_segment",
    "lifecycle_stage",
    "model_version",
    # Member tiers (training.tiers), after the contract's original columns.
    "member_tier",
    "predicted_tier",
    "p_upgrade",
    "p_downgrade",
    "spend_to_next_tier",
)
TIER_COLUMNS = SCORE_COLUMNS[-5:]
SCORE_DTYPES = {
    "customer_id": "str",
    "as_of": "datetime64[ns]",
    "horizon_days": "int64",
    **{c: "float64" for c in SCORE_COLUMNS[3:12]},
    **{c: "int64" for c in ("rfm_r", "rfm_f", "rfm_m")},
    "rfm_segment": "str",
    "lifecycle_stage": "str",
    "model_version": "str",
    "member_tier": "str",
    "predicted_tier": "str",
    **{c: "float64" for c in ("p_upgrade", "p_downgrade", "spend_to_next_tier")},
}
REASON_CODES = "reason_codes"
"""The optional column of explained scores (``score --explain``, ``"explain": true``)."""

UPLIFT = "uplift"
"""The optional column of scores from a model with an uplift part (``train --uplift``): the
largest change in P(an order within the window) that any learned action causes; NaN-free,
and absent (not NaN) when the model has no uplift part."""
UPLIFT_PREFIX = "uplift_"


def uplift_column(action: str) -> str:
    """The score column of one action's uplift: ``uplift_<action>``."""
    return f"{UPLIFT_PREFIX}{action}"


def uplift_columns(columns) -> list[str]:
    """The uplift columns among ``columns``: ``uplift`` first, then ``uplift_<action>`` in their order."""
    columns = list(columns)
    return [c for c in columns if c == UPLIFT] + [c for c in columns if c.startswith(UPLIFT_PREFIX)]
