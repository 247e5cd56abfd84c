"""Barrier metrics against hand-computed values on profiles where the three definitions disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study import metrics
from study.metrics import acc_avg, acc_min, barrier_chord, barrier_mean, barrier_mid, path_length, summarize

T5 = [0.0, 0.25, 0.5, 0.75, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# The three barriers
# ---------------------------------------------------------------------------------------------------------------
def test_chord_mean_and_mid_differ_on_unequal_endpoints_with_an_off_centre_bump():
    loss = [1.0, 2.8, 2.0, 3.5, 3.0]
    # chord (1−t)·1 + t·3 = 1 + 2t  ->  [1, 1.5, 2, 2.5, 3]
    # L − chord                    ->  [0, 1.3, 0, 1.0, 0]       => barrier_chord = 1.3 (at t = 0.25)
    # max L − (1 + 3)/2 = 3.5 − 2                                => barrier_mean  = 1.5 (at t = 0.75)
    # L(0.5) − 2 = 2.0 − 2                                       => barrier_mid   = 0.0
    assert barrier_chord(T5, loss) == pytest.approx(1.3)
    assert barrier_mean(loss) == pytest.approx(1.5)
    assert barrier_mid(T5, loss) == pytest.approx(0.0)


def test_chord_barrier_can_exceed_mean_barrier():
    loss = [1.0, 2.4, 2.0, 2.5, 3.0]
    # chord [1, 1.5, 2, 2.5, 3]; L − chord = [0, 0.9, 0, 0, 0]  => barrier_chord = 0.9
    # max L = 3.0 (the endpoint) − 2                            => barrier_mean  = 1.0
    assert barrier_chord(T5, loss) == pytest.approx(0.9)
    assert barrier_mean(loss) == pytest.approx(1.0)
    t = [0.0, 0.1, 0.5, 1.0]
    loss = [1.0, 2.9, 2.0, 3.0]
    # chord at 0.1 = 1.2; 2.9 − 1.2                             => barrier_chord = 1.7
    # max L = 3.0 − 2                                           => barrier_mean  = 1.0 < chord
    # L(0.5) − 2                                                => barrier_mid   = 0.0
    assert barrier_chord(t, loss) == pytest.approx(1.7)
    assert barrier_mean(loss) == pytest.approx(1.0)
    assert barrier_mid(t, loss) == pytest.approx(0.0)


def test_a_straight_line_between_unequal_endpoints_has_no_chord_barrier_but_a_mean_barrier():
    loss = [1.0, 1.5, 2.0, 2.5, 3.0]
    assert barrier_chord(T5, loss) == pytest.approx(0.0, abs=1e-12)
    assert barrier_mid(T5, loss) == pytest.approx(0.0, abs=1e-12)
    # max L − mean of endpoints = 3 − 2: the mean barrier is |L(1) − L(0)|/2 even without any bump
    assert barrier_mean(loss) == pytest.approx(1.0)


def test_a_path_below_the_chord_gives_zero_chord_and_negative_mid_barrier_unclipped():
    loss = [2.0, 1.0, 0.5, 1.0, 2.0]
    assert barrier_chord(T5, loss) == 0.0  # the endpoints themselves give exactly 0
    assert barrier_mean(loss) == 0.0
    assert barrier_mid(T5, loss) == pytest.approx(-1.5)  # 0.5 − 2


def test_flat_profile_has_zero_barriers():
    flat = [0.7] * 5
    assert barrier_chord(T5, flat) == 0.0
    assert barrier_mean(flat) == 0.0
    assert barrier_mid(T5, flat) == 0.0


def test_mid_is_interpolated_on_an_even_grid():
    t = np.linspace(0.0, 1.0, 4)  # 0, 1/3, 2/3, 1: no point at 1/2
    loss = [1.0, 4.0, 7.0, 1.0]
    # L(1/2) halfway between 4 and 7 = 5.5; minus (1 + 1)/2     => 4.5
    assert barrier_mid(t, loss) == pytest.approx(4.5)
    # and the on-grid value is used as is on an odd grid
    assert barrier_mid(T5, [1.0, 9.0, 4.0, 9.0, 1.0]) == pytest.approx(3.0)


@pytest.mark.parametrize("t, values, match", [
    ([0.0, 1.0], [1.0, 2.0], "at least 3"),
    ([0.0, 0.5, 0.9], [1.0, 2.0, 3.0], "start at 0 and end at 1"),
    ([0.1, 0.5, 1.0], [1.0, 2.0, 3.0], "start at 0 and end at 1"),
    ([0.0, 0.6, 0.4, 1.0], [1.0, 2.0, 3.0, 4.0], "strictly increasing"),
    ([0.0, 0.5, 0.5, 1.0], [1.0, 2.0, 3.0, 4.0], "strictly increasing"),
    ([0.0, 0.5, 1.0], [1.0, 2.0, 3.0, 4.0], "differ in length"),
    ([[0.0, 0.5, 1.0]], [[1.0, 2.0, 3.0]], "one-dimensional"),
    ([0.0, float("nan"), 1.0], [1.0, 2.0, 3.0], "non-finite"),
])
def test_bad_grids_raise(t, values, match):
    with pytest.raises(ValueError, match=match):
        barrier_chord(t, values)
    with pytest.raises(ValueError, match=match):
        barrier_mid(t, values)


def test_barrier_mean_needs_three_points():
    with pytest.raises(ValueError, match="at least 3"):
        barrier_mean([1.0, 2.0])


def test_nan_propagates_instead_of_hiding_a_diverged_point():
    assert np.isnan(barrier_chord(T5, [1.0, np.nan, 1.0, 1.0, 1.0]))
    assert np.isnan(barrier_mean([1.0, np.nan, 1.0]))


# ---------------------------------------------------------------------------------------------------------------
# Accuracy along the path, path length
# ---------------------------------------------------------------------------------------------------------------
def test_acc_avg_weights_longer_segments_more():
    acc = [1.0, 1.0, 0.0]
    # long segment (3) between two accurate points, short one (1) into a bad point:
    # (3·(1+1)/2 + 1·(1+0)/2) / 4 = 3.5 / 4
    assert acc_avg(acc, [0.0, 3.0, 1.0]) == pytest.approx(0.875)
    # equal segments: (1 + 0.5) / 2
    assert acc_avg(acc, [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    # neither is the plain mean 2/3
    assert np.mean(acc) == pytest.approx(2 / 3)


def test_acc_avg_with_zero_length_falls_back_to_plain_mean():
    assert acc_avg([0.9, 0.9, 0.9], [0.0, 0.0, 0.0]) == pytest.approx(0.9)
    assert acc_avg([0.2, 0.5, 0.8], [0.0, 0.0, 0.0]) == pytest.approx(0.5)


def test_acc_avg_validates_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        acc_avg([0.5, 0.5, 0.5], [0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        acc_avg([0.5, 0.5, 0.5], [0.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=r"segment_lengths\[0\] must be 0"):
        acc_avg([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])


def test_acc_min_and_path_length():
    assert acc_min([0.9, 0.4, 0.8]) == pytest.approx(0.4)
    assert path_length([0.0, 1.5, 2.5, 1.0]) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        path_length([0.0, -1.0])


# ---------------------------------------------------------------------------------------------------------------
# summarize
# ---------------------------------------------------------------------------------------------------------------
def _profile(robust: bool = False, segment_length: bool = True) -> pd.DataFrame:
    data = {
        "t": T5,
        "train_loss": [0.1, 0.5, 0.3, 0.2, 0.1],
        "train_acc": [1.0, 0.9, 0.95, 0.97, 1.0],
        "test_loss": [1.0, 2.8, 2.0, 3.5, 3.0],
        "test_acc": [0.9, 0.6, 0.7, 0.5, 0.8],
    }
    if robust:
        data |= {"robust_test_loss": [2.0, 4.0, 3.0, 3.0, 2.0], "robust_test_acc": [0.5, 0.2, 0.3, 0.3, 0.5]}
    if segment_length:
        data["segment_length"] = [0.0, 1.0, 1.0, 1.0, 1.0]
    return pd.DataFrame(data)


CLEAN_KEYS = {
    f"{kind}/linear/{split}_{q}" for kind in ("barrier_chord", "barrier_mean", "barrier_mid")
    for split in ("train", "test") for q in ("loss", "error")
} | {f"{kind}/linear/{split}" for kind in ("acc_min", "acc_avg", "endpoint_acc") for split in ("train", "test")
     } | {"path_length/linear"}
ROBUST_TEST_KEYS = {
    f"robust/{kind}/linear/test_{q}" for kind in ("barrier_chord", "barrier_mean", "barrier_mid")
    for q in ("loss", "error")
} | {"robust/acc_min/linear/test", "robust/acc_avg/linear/test", "robust/endpoint_acc/linear/test"}


def test_summarize_clean_key_set_and_values():
    summary = summarize(_profile(), "linear")
    assert set(summary) == CLEAN_KEYS
    assert len(CLEAN_KEYS) == 6 * 2 + 3 * 2 + 1
    assert all(isinstance(v, float) for v in summary.values())
    assert summary["barrier_chord/linear/test_loss"] == pytest.approx(1.3)
    assert summary["barrier_mean/linear/test_loss"] == pytest.approx(1.5)
    assert summary["barrier_mid/linear/test_loss"] == pytest.approx(0.0)
    # error = 1 − acc = [0.1, 0.4, 0.3, 0.5, 0.2]; chord 0.1 + 0.1t -> [0.1, 0.125, 0.15, 0.175, 0.2]
    assert summary["barrier_chord/linear/test_error"] == pytest.approx(0.325)  # 0.5 − 0.175
    assert summary["barrier_mean/linear/test_error"] == pytest.approx(0.35)  # 0.5 − 0.15
    assert summary["barrier_mid/linear/test_error"] == pytest.approx(0.15)  # 0.3 − 0.15
    assert summary["acc_min/linear/test"] == pytest.approx(0.5)
    # equal segments: (0.75 + 0.65 + 0.6 + 0.65) / 4
    assert summary["acc_avg/linear/test"] == pytest.approx(0.6625)
    assert summary["endpoint_acc/linear/test"] == pytest.approx(0.85)
    assert summary["path_length/linear"] == pytest.approx(4.0)


def test_summarize_robust_key_set():
    summary = summarize(_profile(robust=True), "linear")
    assert set(summary) == CLEAN_KEYS | ROBUST_TEST_KEYS
    assert summary["robust/barrier_chord/linear/test_loss"] == pytest.approx(2.0)  # 4 − 2 at t = 0.25
    assert summary["robust/acc_min/linear/test"] == pytest.approx(0.2)
    assert set(summary) == set(metrics.metric_names("linear", robust_splits=("test",)))


def test_summarize_without_segment_length_leaves_out_arc_length_metrics():
    summary = summarize(_profile(segment_length=False), "bezier")
    assert not any(k.startswith(("acc_avg/", "path_length/")) for k in summary)
    assert "barrier_chord/bezier/test_loss" in summary
    assert set(summary) == set(metrics.metric_names("bezier", segment_length=False))


def test_metric_kinds_cover_every_emitted_name():
    summary = summarize(_profile(robust=True), "linear")
    kinds = {name.removeprefix("robust/").split("/")[0] for name in summary}
    assert kinds == set(metrics.METRIC_KINDS)


def test_model_with_itself_has_zero_barriers_and_plain_accuracy():
    constant = pd.DataFrame({"t": T5, "train_loss": [0.3] * 5, "train_acc": [0.91] * 5, "test_loss": [0.4] * 5,
                             "test_acc": [0.88] * 5, "segment_length": [0.0] * 5})
    summary = summarize(constant, "linear")
    for key, value in summary.items():
        if key.startswith("barrier_"):
            assert value == 0.0, key
    assert summary["acc_avg/linear/test"] == pytest.approx(0.88)
    assert summary["acc_min/linear/test"] == pytest.approx(0.88)
    assert summary["path_length/linear"] == 0.0


def test_summarize_rejects_incomplete_or_malformed_profiles():
    with pytest.raises(ValueError, match="'test_acc'"):
        summarize(_profile().drop(columns="test_acc"), "linear")
    with pytest.raises(ValueError, match="no 't' column"):
        summarize(_profile().drop(columns="t"), "linear")
    with pytest.raises(ValueError, match="strictly increasing"):
        summarize(_profile().iloc[[0, 2, 1, 3, 4]].reset_index(drop=True), "linear")
    with pytest.raises(ValueError, match="no '"):
        summarize(pd.DataFrame({"t": T5}), "linear")
