"""Backtest metrics, each checked against a value worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    calibration_bins,
    classification_metrics,
    decile_mape,
    expected_calibration_error,
    lift_and_capture,
    normalized_gini,
    regression_metrics,
    timing_metrics,
)


def test_auc_brier_and_logloss_on_a_tiny_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8])
    m = classification_metrics(y, p)
    # 4 positive-negative pairs; (0.4 vs 0.6) is the only one ranked wrongly.
    assert m["auc"] == pytest.approx(3 / 4)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.04) / 4)
    assert m["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.4) + np.log(0.4) + np.log(0.8)) / 4)
    assert m["base_rate"] == 0.5
    # precision at each positive by rank: 0.8 -> 1/1, 0.4 -> 2/3; AP = (1 + 2/3) / 2
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3) / 2)


def test_ece_of_perfectly_calibrated_bins_is_zero_and_of_a_bias_is_the_bias():
    y = np.array([0, 1] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.7)) == pytest.approx(0.2)


def test_calibration_bins_hold_equal_counts_even_through_ties():
    # 7 customers in 3 bins: sizes 3, 2, 2 by rank; the tie at 0.2 is split between bins 1 and 2.
    p = np.array([0.9, 0.2, 0.1, 0.2, 0.2, 0.5, 0.1])
    y = np.array([1, 0, 0, 1, 0, 1, 0])
    predicted, observed, sizes = calibration_bins(y, p, n_bins=3)
    assert sizes.tolist() == [3, 2, 2]
    # sorted (stable): 0.1 (y0), 0.1 (y0), 0.2 (y0) | 0.2 (y1), 0.2 (y0) | 0.5 (y1), 0.9 (y1)
    assert predicted == pytest.approx([0.4 / 3, 0.2, 0.7])
    assert observed == pytest.approx([0.0, 0.5, 1.0])
    assert expected_calibration_error(y, p, n_bins=3) == pytest.approx(
        3 / 7 * 0.4 / 3 + 2 / 7 * 0.3 + 2 / 7 * 0.3)


def test_lift_and_capture_at_top_decile():
    y = np.array([1] + [0] * 9 + [1] * 2 + [0] * 8)  # 20 rows, 3 positives
    score = np.arange(20, 0, -1, dtype=float)  # row 0 scores highest
    lift, capture = lift_and_capture(y, score, 0.1)  # top 2 rows: one positive
    assert lift == pytest.approx((1 / 2) / (3 / 20))
    assert capture == pytest.approx(1 / 3)


def test_normalized_gini_is_one_for_perfect_and_minus_one_for_reversed_order():
    actual = np.array([0.0, 0.0, 5.0, 10.0])
    assert normalized_gini(actual, actual) == pytest.approx(1.0)
    assert normalized_gini(actual, -actual) == pytest.approx(-1.0)
    assert abs(normalized_gini(actual, np.array([1.0, 4.0, 2.0, 3.0]))) < 1.0


def test_decile_mape_by_hand():
    actual = np.array([10.0, 0.0, 4.0, 4.0])
    predicted = np.array([8.0, 6.0, 1.0, 2.0])  # two bins by predicted rank: {8,6}, {2,1}
    # bin 1: actual 10, predicted 14 -> 0.4 ; bin 2: actual 8, predicted 3 -> 0.625
    assert decile_mape(actual, predicted, n_bins=2) == pytest.approx((0.4 + 0.625) / 2)
    m = regression_metrics(actual, predicted)
    assert m["total_actual"] == 18.0 and m["total_predicted"] == 17.0


def test_timing_metrics_are_censoring_aware():
    days = np.array([10.0, 40.0, 90.0, 90.0, 20.0])
    censored = np.array([False, False, True, True, False])
    nan = np.nan
    m = timing_metrics(
        days,
        censored,
        p10=[5, 45, 30, nan, nan],
        p50=[12, 60, 70, nan, nan],
        p90=[20, nan, 80, nan, nan],
    )
    assert m["n_reordered"] == 3 and m["n_with_p50"] == 2
    assert m["p50_mae_days"] == pytest.approx((2 + 20) / 2)
    # row 0 inside; row 1 below p10; row 2 censored but band ends at 80; row 3 censored, band beyond H;
    # row 4 reordered although the band lies beyond the horizon
    assert m["coverage_p10_p90"] == pytest.approx(2 / 5)
    assert m["coverage_p10_p90_reordered"] == pytest.approx(1 / 3)


def test_shape_mismatch_and_nan_scores_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        classification_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([0, 1], [0.5, np.nan])
