"""Barrier and accuracy metrics: hand-computed values where the three barrier definitions disagree, and
``summarize`` against an independent re-implementation of its docstrings on random, constructed and real profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.core import metrics
from study.core.metrics import acc_avg, acc_min, barrier_chord, barrier_mean, barrier_mid, path_length, summarize

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
    # neither is the plain mean 2/3: the weights matter
    assert acc_avg(acc, [0.0, 3.0, 1.0]) != pytest.approx(2 / 3)


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
# summarize against an independent re-implementation of its docstrings
# ---------------------------------------------------------------------------------------------------------------
# Written from the definitions in study/core/metrics.py's docstrings only, in plain Python loops (no numpy), so a
# mistake shared by the two would have to be made twice in different code. The metric *names* are derived here
# from the profile's columns by summarize's documented rule, never from a list kept next to the code.
def _ref_at_half(t: list[float], v: list[float]) -> float:
    for i in range(len(t) - 1):
        if t[i] <= 0.5 <= t[i + 1]:
            w = (0.5 - t[i]) / (t[i + 1] - t[i])
            return v[i] + w * (v[i + 1] - v[i])
    raise AssertionError("grid does not span 1/2")


def _ref_barriers(t: list[float], v: list[float]) -> dict[str, float]:
    ends = (v[0] + v[-1]) / 2
    return {
        "barrier_chord": max(vi - ((1 - ti) * v[0] + ti * v[-1]) for ti, vi in zip(t, v)),
        "barrier_mean": max(v) - ends,
        "barrier_mid": _ref_at_half(t, v) - ends,
    }


def _ref_acc_avg(acc: list[float], lengths: list[float]) -> float:
    total = sum(lengths[1:])
    if total == 0:
        return sum(acc) / len(acc)
    return sum(lengths[i] * (acc[i - 1] + acc[i]) / 2 for i in range(1, len(acc))) / total


def reference_summary(profile: pd.DataFrame, path: str) -> dict[str, float]:
    t = [float(x) for x in profile["t"]]
    lengths = [float(x) for x in profile["segment_length"]] if "segment_length" in profile else None
    out: dict[str, float] = {}
    for column_prefix, name_prefix in (("", ""), ("robust_", "robust/")):
        for split in ("train", "test"):
            if f"{column_prefix}{split}_loss" not in profile:
                continue
            loss = [float(x) for x in profile[f"{column_prefix}{split}_loss"]]
            acc = [float(x) for x in profile[f"{column_prefix}{split}_acc"]]
            for quantity, values in (("loss", loss), ("error", [1 - a for a in acc])):
                for kind, value in _ref_barriers(t, values).items():
                    out[f"{name_prefix}{kind}/{path}/{split}_{quantity}"] = value
            out[f"{name_prefix}acc_min/{path}/{split}"] = min(acc)
            if lengths is not None:
                out[f"{name_prefix}acc_avg/{path}/{split}"] = _ref_acc_avg(acc, lengths)
            out[f"{name_prefix}endpoint_acc/{path}/{split}"] = (acc[0] + acc[-1]) / 2
    if lengths is not None:
        out[f"path_length/{path}"] = sum(lengths)
    return out


def _assert_matches_reference(profile: pd.DataFrame, path: str) -> dict[str, float]:
    summary = summarize(profile, path)
    expected = reference_summary(profile, path)
    assert sorted(summary) == sorted(expected)
    for key, value in expected.items():
        assert isinstance(summary[key], float), key
        assert summary[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    return summary


def _random_grid(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(3, 30))
    if rng.random() < 0.5:
        return np.linspace(0.0, 1.0, n)
    inner = np.sort(rng.choice(np.arange(1, 1000), size=n - 2, replace=False) / 1000.0)
    return np.concatenate([[0.0], inner, [1.0]])


def _random_profile(rng: np.random.Generator) -> pd.DataFrame:
    t = _random_grid(rng)
    data: dict[str, np.ndarray] = {"t": t}
    columns = [(prefix, split) for prefix in ("", "robust_") for split in ("train", "test")]
    chosen = [c for c in columns if rng.random() < 0.6] or [columns[int(rng.integers(len(columns)))]]
    for prefix, split in chosen:
        data[f"{prefix}{split}_loss"] = rng.gamma(2.0, 1.0, t.size)
        data[f"{prefix}{split}_acc"] = rng.random(t.size)
    if rng.random() < 0.7:
        lengths = rng.exponential(1.0, t.size) * (rng.random(t.size) < 0.8)  # some zero-length segments
        lengths[0] = 0.0
        data["segment_length"] = lengths if rng.random() < 0.9 else np.zeros(t.size)
    return pd.DataFrame(data)


def test_summarize_agrees_with_a_reimplementation_on_random_profiles():
    rng = np.random.default_rng(2024)
    seen = set()
    for _ in range(300):
        profile = _random_profile(rng)
        summary = _assert_matches_reference(profile, "bezier")
        seen.add(frozenset(c for c in profile.columns if c != "t"))
        assert any(k.startswith("robust/") for k in summary) == any(c.startswith("robust_") for c in profile)
    assert len(seen) >= 20  # the random profiles really cover many column combinations


def test_hand_computed_profile_agrees_with_the_reimplementation():
    profile = pd.DataFrame({"t": T5, "train_loss": [0.1, 0.5, 0.3, 0.2, 0.1], "train_acc": [1.0, 0.9, 0.95, 0.97, 1.0],
                            "test_loss": [1.0, 2.8, 2.0, 3.5, 3.0], "test_acc": [0.9, 0.6, 0.7, 0.5, 0.8],
                            "segment_length": [0.0, 1.0, 1.0, 1.0, 1.0]})
    summary = _assert_matches_reference(profile, "linear")
    # and against values worked out by hand (see the first test above for the loss column)
    assert summary["barrier_chord/linear/test_loss"] == pytest.approx(1.3)
    # error = 1 − acc = [0.1, 0.4, 0.3, 0.5, 0.2]; chord 0.1 + 0.1t -> [0.1, 0.125, 0.15, 0.175, 0.2]
    assert summary["barrier_chord/linear/test_error"] == pytest.approx(0.325)  # 0.5 − 0.175
    assert summary["barrier_mean/linear/test_error"] == pytest.approx(0.35)  # 0.5 − 0.15
    assert summary["barrier_mid/linear/test_error"] == pytest.approx(0.15)  # 0.3 − 0.15
    assert summary["acc_avg/linear/test"] == pytest.approx(0.6625)  # (0.75 + 0.65 + 0.6 + 0.65) / 4
    assert summary["endpoint_acc/linear/test"] == pytest.approx(0.85)
    assert summary["path_length/linear"] == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------------------------
# summarize on constructed profiles whose barriers are known without computing them
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_a_flat_profile_has_zero_barriers_and_its_accuracy_everywhere(seed):
    rng = np.random.default_rng(seed)
    t = _random_grid(rng)
    loss, acc = float(rng.gamma(2.0)), float(rng.random())
    lengths = rng.exponential(1.0, t.size)
    lengths[0] = 0.0
    profile = pd.DataFrame({"t": t, "test_loss": loss, "test_acc": acc, "robust_test_loss": 2 * loss,
                            "robust_test_acc": acc / 2, "segment_length": lengths})
    summary = summarize(profile, "linear")
    barriers = {k: v for k, v in summary.items() if "barrier_" in k}
    assert len(barriers) == 2 * 2 * 3  # clean and robust, loss and error, three kinds
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in barriers.values()), barriers
    for prefix, a in (("", acc), ("robust/", acc / 2)):
        for kind in ("acc_min", "acc_avg", "endpoint_acc"):
            assert summary[f"{prefix}{kind}/linear/test"] == pytest.approx(a), (prefix, kind)
    assert summary["path_length/linear"] == pytest.approx(lengths.sum())


@pytest.mark.parametrize("height", [0.05, 1.0, 7.5])
@pytest.mark.parametrize("ends", [(1.0, 1.0), (0.5, 2.5), (3.0, 0.2)])
def test_a_bump_on_the_chord_has_that_chord_barrier(height, ends):
    """Loss = chord + a tent of height h (and accuracy = chord − a dip of depth h/20): barrier_chord is h; the
    midpoint barrier is the tent's value at ½; barrier_mean is max L − ½(L(0) + L(1)) ≥ |L(1) − L(0)|/2."""
    t = np.linspace(0.0, 1.0, 21)  # 0.5 on the grid
    l0, l1 = ends
    chord = (1 - t) * l0 + t * l1
    for centre, half_width in ((0.5, 0.2), (0.2, 0.1), (0.85, 0.1)):
        tent = np.clip(1 - np.abs(t - centre) / half_width, 0.0, None)
        acc_chord = (1 - t) * 0.9 + t * 0.7
        profile = pd.DataFrame({"t": t, "test_loss": chord + height * tent,
                                "test_acc": acc_chord - height / 20 * tent})
        summary = summarize(profile, "linear")
        at_half = float(np.clip(1 - abs(0.5 - centre) / half_width, 0.0, None))
        assert summary["barrier_chord/linear/test_loss"] == pytest.approx(height), centre
        assert summary["barrier_mid/linear/test_loss"] == pytest.approx(height * at_half, abs=1e-12), centre
        assert summary["barrier_chord/linear/test_error"] == pytest.approx(height / 20), centre
        mean = summary["barrier_mean/linear/test_loss"]
        assert mean >= abs(l1 - l0) / 2 - 1e-12
        if l0 == l1:
            assert mean == pytest.approx(height)
        assert summary["acc_min/linear/test"] == pytest.approx(float(np.min(acc_chord - height / 20 * tent)))


def test_a_profile_below_its_chord_has_no_chord_barrier_and_a_negative_mid_barrier():
    t = np.linspace(0.0, 1.0, 11)
    sag = 2.0 - 1.5 * np.sin(np.pi * t)  # endpoints 2, middle 0.5
    summary = summarize(pd.DataFrame({"t": t, "test_loss": sag, "test_acc": 0.5 + 0 * t}), "linear")
    assert summary["barrier_chord/linear/test_loss"] == pytest.approx(0.0, abs=1e-12)
    assert summary["barrier_mid/linear/test_loss"] == pytest.approx(-1.5)
    assert summary["barrier_mean/linear/test_loss"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# summarize on real profiles (study.core.evaluate.path_profile of small networks)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    """Two real linear-path profiles (study.core.evaluate.path_profile) of tiny MLPs on a tiny data set: a model
    with itself, and two different models with robust columns for both splits; and that model's own test
    accuracy. About a second on one CPU thread."""
    from study.core import data as datasets
    from study.core import models
    from study.core.attacks import AttackConfig
    from study.core.evaluate import evaluate, path_profile
    from study.core.paths import Path, trainable_state

    data = datasets.load("synthetic", in_shape=(12,), n_train=96, n_test=64, val_fraction=0.0)
    a, b = (models.build("mlp", num_classes=data.num_classes, in_shape=data.in_shape, width=0.0625, seed=s,
                         mean=data.mean, std=data.std).eval() for s in (0, 1))
    same = path_profile(a, Path(trainable_state(a), trainable_state(a)), data, points=5)
    different = path_profile(a, Path(trainable_state(a), trainable_state(b)), data, points=5,
                             attack=AttackConfig(eps=0.1, steps=1), robust_splits=("train", "test"))
    return {"same": same, "different": different, "own_test_acc": evaluate(a, data, "test")["acc"]}


def test_a_model_with_itself_has_zero_barriers_and_its_own_accuracy(real):
    profile = real["same"]
    summary = _assert_matches_reference(profile, "linear")
    barriers = {k: v for k, v in summary.items() if "barrier_" in k}
    assert len(barriers) == 2 * 2 * 3  # train and test, loss and error, three kinds
    assert all(abs(v) < 1e-5 for v in barriers.values()), barriers
    assert summary["path_length/linear"] == pytest.approx(0.0, abs=1e-5)
    for kind in ("acc_min", "acc_avg", "endpoint_acc"):
        assert summary[f"{kind}/linear/test"] == pytest.approx(real["own_test_acc"]), kind


def test_robust_metrics_appear_exactly_for_the_splits_with_robust_columns(real):
    both = real["different"]
    assert {"robust_train_loss", "robust_test_acc"} <= set(both.columns)
    for kept in [("train", "test"), ("test",), ("train",), ()]:
        dropped = [f"robust_{s}_{q}" for s in ("train", "test") if s not in kept for q in ("loss", "acc")]
        summary = _assert_matches_reference(both.drop(columns=dropped), "linear")
        robust_splits = {name.rsplit("/", 1)[1].split("_")[0] for name in summary if name.startswith("robust/")}
        assert robust_splits == set(kept)
        # robust names are the clean names of those splits with a prefix (path_length is per path, not per split)
        clean = {name for name in summary if not name.startswith(("robust/", "path_length/"))}
        assert {n.removeprefix("robust/") for n in summary if n.startswith("robust/")} == {
            n for n in clean if n.rsplit("/", 1)[1].split("_")[0] in kept}
    with pytest.raises(ValueError, match="robust_test_acc"):
        summarize(both.drop(columns="robust_test_acc"), "linear")


def test_real_profiles_between_different_models_agree_with_the_reimplementation(real):
    profile = real["different"]
    summary = _assert_matches_reference(profile, "linear")
    assert summary["path_length/linear"] > 0
    _assert_matches_reference(profile.drop(columns="segment_length"), "bezier")


def test_metric_names_and_kinds_describe_what_summarize_emits(real):
    """metric_names/METRIC_KINDS are public claims about summarize's output: check them on real profiles."""
    full = real["different"]
    kinds = set()
    for drop in ([], ["robust_train_loss", "robust_train_acc"], ["segment_length"],
                 ["train_loss", "train_acc", "robust_train_loss", "robust_train_acc"]):
        profile = full.drop(columns=drop)
        summary = summarize(profile, "bezier")
        splits = [s for s in ("train", "test") if f"{s}_loss" in profile]
        robust = [s for s in ("train", "test") if f"robust_{s}_loss" in profile]
        names = metrics.metric_names("bezier", splits=splits, robust_splits=robust,
                                     segment_length="segment_length" in profile)
        assert sorted(names) == sorted(summary)
        kinds |= {name.removeprefix("robust/").split("/")[0] for name in summary}
    assert kinds == set(metrics.METRIC_KINDS)


def test_summarize_rejects_incomplete_or_malformed_profiles():
    profile = pd.DataFrame({"t": T5, "test_loss": [1.0, 2.8, 2.0, 3.5, 3.0], "test_acc": [0.9, 0.6, 0.7, 0.5, 0.8]})
    with pytest.raises(ValueError, match="'test_acc'"):
        summarize(profile.drop(columns="test_acc"), "linear")
    with pytest.raises(ValueError, match="no 't' column"):
        summarize(profile.drop(columns="t"), "linear")
    with pytest.raises(ValueError, match="strictly increasing"):
        summarize(profile.iloc[[0, 2, 1, 3, 4]].reset_index(drop=True), "linear")
    with pytest.raises(ValueError, match="no '"):
        summarize(pd.DataFrame({"t": T5}), "linear")
    with pytest.raises(ValueError, match="path name"):
        summarize(profile, "a/b")
