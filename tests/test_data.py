"""The data-set registry: offline sets, the mnist1d cache, torchvision sets on disk, augmentation.

Nothing here touches the network: an autouse fixture makes every socket connect fail, and the torchvision sets
are faked on disk in their real file formats.
"""

from __future__ import annotations

import pickle
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from study.core import data as data_mod
from study.core.data import Dataset, DatasetNotFoundError, available, load, random_crop_flip

VISION_SETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")

# name -> (load options, in_shape, stored dtype, train+val size, test size); small where the size is ours to pick
OFFLINE: dict[str, tuple[dict[str, Any], tuple[int, ...], torch.dtype, int, int]] = {
    "mnist1d": ({}, (40,), torch.float32, 4000, 1000),
    "digits": ({}, (1, 8, 8), torch.float32, 1437, 360),
    "synthetic": ({"in_shape": (3, 16, 16), "n_train": 600, "n_test": 200}, (3, 16, 16), torch.uint8, 600, 200),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, and no writes to the real ~/.cache."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("SYMSTUDY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mnist1d cache for the module, so the full-size set is generated once."""
    return tmp_path_factory.mktemp("shared_cache")


def _load(name: str, root: Path, **kwargs: Any) -> Dataset:
    return load(name, data_root=root if name == "mnist1d" else None, **OFFLINE[name][0], **kwargs)


def _rows(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    """One hashable key per sample (input bytes plus label), for set algebra between splits."""
    flat = x.reshape(x.shape[0], -1).contiguous().numpy()
    return [row.tobytes() + bytes([int(label)]) for row, label in zip(flat, y.tolist())]


def _assert_same(a: Dataset, b: Dataset, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    for split in splits:
        for ta, tb in zip(a.split(split), b.split(split)):
            assert torch.equal(ta, tb), split


# ---------------------------------------------------------------------------------------------- offline sets


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_offline_set_shapes_types_range_and_labels(name: str, shared_cache: Path) -> None:
    _, in_shape, dtype, n_train_val, n_test = OFFLINE[name]
    ds = _load(name, shared_cache)
    assert ds.name == name and ds.in_shape == in_shape and ds.num_classes == 10
    assert ds.size("train") + ds.size("val") == n_train_val and ds.size("test") == n_test
    assert ds.size("val") == round(0.1 * n_train_val)
    channels = 1 if len(in_shape) == 1 else in_shape[0]
    assert len(ds.mean) == len(ds.std) == channels and min(ds.std) > 0
    for split in ("train", "val", "test"):
        x_raw, y_raw = ds.split(split)
        assert x_raw.dtype == dtype and tuple(x_raw.shape[1:]) == in_shape and y_raw.dtype == torch.int64
        x, y = ds.batch(split)
        assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.01
        assert set(y.tolist()) == set(range(10)), f"{split} misses classes"
    per_channel = ds.batch("train")[0].transpose(0, 1).reshape(channels, -1)
    std, mean = torch.std_mean(per_channel, dim=1, correction=0)
    assert torch.allclose(torch.tensor(ds.mean), mean, atol=1e-4)
    assert torch.allclose(torch.tensor(ds.std), std, atol=1e-4)


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_val_is_a_seeded_partition_of_train_and_test_is_fixed(name: str, shared_cache: Path) -> None:
    full = _load(name, shared_cache, val_fraction=0.0)
    assert full.size("val") == 0 and tuple(full.val_x.shape) == (0, *full.in_shape)
    everything = sorted(_rows(full.train_x, full.train_y))

    split = _load(name, shared_cache)
    train, val = _rows(split.train_x, split.train_y), _rows(split.val_x, split.val_y)
    assert not set(train) & set(val)
    assert sorted(train + val) == everything

    _assert_same(split, _load(name, shared_cache))  # deterministic

    other = _load(name, shared_cache, split_seed=1)
    assert set(_rows(other.val_x, other.val_y)) != set(val)
    assert sorted(_rows(other.train_x, other.train_y) + _rows(other.val_x, other.val_y)) == everything
    _assert_same(other, split, splits=("test",))
    _assert_same(full, split, splits=("test",))


def test_offline_sets_load_on_the_requested_device() -> None:
    ds = load("digits", device="meta")
    assert all(t.device.type == "meta" for s in ("train", "val", "test") for t in ds.split(s))


# ---------------------------------------------------------------------------------------------- mnist1d


def test_mnist1d_is_cached_and_leaves_no_pickles_and_global_rngs_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnist1d.data

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)

    first = load("mnist1d", data_root=tmp_path / "root", num_samples=1000)
    assert np.random.rand() == expected, "generating mnist1d reseeded numpy's global RNG"
    assert list(workdir.iterdir()) == []
    assert len(list((tmp_path / "root").glob("mnist1d-*.npz"))) == 1

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mnist1d was regenerated instead of read from the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    _assert_same(first, load("mnist1d", data_root=tmp_path / "root", num_samples=1000))
    with pytest.raises(AssertionError, match="regenerated"):  # other generation args are another cache entry
        load("mnist1d", data_root=tmp_path / "root", num_samples=1000, seed=7)


def test_mnist1d_cache_location_comes_from_env_and_a_broken_cache_is_rebuilt(tmp_path: Path) -> None:
    first = load("mnist1d", num_samples=500)  # SYMSTUDY_CACHE points into tmp_path (autouse fixture)
    (entry,) = (tmp_path / "cache").glob("mnist1d-*.npz")
    entry.write_bytes(b"not a zip file")
    _assert_same(first, load("mnist1d", num_samples=500))
    with np.load(entry, allow_pickle=False) as npz:
        assert set(npz.files) == {"x", "y", "x_test", "y_test"}


def test_mnist1d_is_rescaled_with_train_min_max_and_seed_changes_it(shared_cache: Path) -> None:
    ds = load("mnist1d", data_root=shared_cache, val_fraction=0.0)
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    (entry,) = shared_cache.glob("mnist1d-*.npz")
    with np.load(entry, allow_pickle=False) as raw:
        low, high = raw["x"].min(), raw["x"].max()
        expected = np.clip((raw["x_test"] - low) / (high - low), 0.0, 1.0)
    assert np.allclose(ds.test_x.numpy(), expected, atol=1e-6)
    clipped = data_mod._unit_interval(np.array([-1.0, 0.0, 1.0, 2.0, 3.0]), 0.0, 2.0)
    assert clipped.dtype == torch.float32 and clipped.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    other = load("mnist1d", data_root=shared_cache, val_fraction=0.0, seed=1, num_samples=1000)
    assert other.size("train") == 800 and other.size("test") == 200
    assert not torch.equal(ds.test_x[:200], other.test_x)


# ---------------------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("in_shape", [(40,), (1, 8, 8), (3, 32, 32)])
def test_synthetic_shapes_and_seeds(in_shape: tuple[int, ...]) -> None:
    opts = {"in_shape": in_shape, "n_train": 300, "n_test": 100, "num_classes": 5}
    a = load("synthetic", **opts)
    assert a.in_shape == in_shape and a.num_classes == 5 and tuple(a.test_x.shape) == (100, *in_shape)
    assert set(a.test_y.tolist()) == set(range(5))
    _assert_same(a, load("synthetic", **opts))
    b = load("synthetic", seed=1, **opts)
    assert not torch.equal(a.train_x, b.train_x) and not torch.equal(a.test_x, b.test_x)


def test_synthetic_accepts_a_list_shape_and_rejects_a_bad_one() -> None:
    assert load("synthetic", in_shape=[2, 12], n_train=50, n_test=20).in_shape == (2, 12)
    with pytest.raises(ValueError, match="in_shape"):
        load("synthetic", in_shape=(3, 0, 8))


def test_synthetic_has_signal_but_is_not_linearly_trivial() -> None:
    """A ridge-regression classifier is far above chance (0.1) and far from perfect."""
    ds = load("synthetic", in_shape=(40,), n_train=2000, n_test=1000, val_fraction=0.0)
    (x, y), (xt, yt) = ds.batch("train"), ds.batch("test")
    center = x.mean(0)
    x, xt = (x - center).double(), (xt - center).double()
    targets = torch.nn.functional.one_hot(y, 10).double()
    w = torch.linalg.solve(x.T @ x + torch.eye(x.shape[1], dtype=torch.float64), x.T @ targets)
    accuracy = ((xt @ w).argmax(1) == yt).double().mean().item()
    assert 0.4 < accuracy < 0.9


# ---------------------------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name", VISION_SETS)
def test_missing_torchvision_set_says_where_and_how_to_download(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load(name, data_root=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path) in message and "download=True" in message and "--download" in message and name in message


@pytest.mark.parametrize("name", VISION_SETS)
def test_torchvision_set_needs_data_root(name: str) -> None:
    with pytest.raises(ValueError, match="data_root"):
        load(name)


def _write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_fake_cifar10_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real format (Python-3 pickles of {'data': uint8 [N, 3072] in CHW order, 'labels': [...]}), md5 checks off."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {name: (rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, 10, 4).tolist())
               for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    for name, (pixels, labels) in batches.items():
        _write_pickle(folder / name, {"data": pixels, "labels": labels, "batch_label": name})
    _write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})

    ds = load("cifar10", data_root=tmp_path, val_fraction=0.0)
    train_pixels = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.train_x.dtype == torch.uint8 and tuple(ds.train_x.shape) == (20, 3, 32, 32)
    assert torch.equal(ds.train_x, torch.from_numpy(train_pixels.reshape(20, 3, 32, 32)))
    assert ds.train_y.tolist() == train_labels and ds.train_y.dtype == torch.int64
    assert torch.equal(ds.test_x, torch.from_numpy(batches["test_batch"][0].reshape(4, 3, 32, 32)))
    assert ds.test_y.tolist() == batches["test_batch"][1]
    assert ds.in_shape == (3, 32, 32) and ds.augment == "crop_flip" and len(ds.mean) == 3


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The big-endian IDX format of the MNIST files (type 0x08 = uint8)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fake_mnist_on_disk(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[prefix][0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[prefix][1])

    ds = load("mnist", data_root=tmp_path, val_fraction=0.0)
    assert ds.train_x.dtype == torch.uint8 and tuple(ds.train_x.shape) == (12, 1, 28, 28)
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays["train"][0]))
    assert ds.train_y.tolist() == arrays["train"][1].tolist()
    assert torch.equal(ds.test_x[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert ds.in_shape == (1, 28, 28) and ds.augment == "none" and ds.mean == (0.1307,)


# ---------------------------------------------------------------------------------------------- augmentation


def _windows(x: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every shifted window of the zero-padded image."""
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    return [padded[:, i : i + h, j : j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]


def test_random_crop_flip_is_a_padded_window_and_seeded() -> None:
    x = torch.rand(16, 3, 8, 8) + 0.1  # no zeros in the image, so padding is recognisable
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape
    flipped = 0
    for sample, result in zip(x, out):
        plain = any(torch.equal(result, window) for window in _windows(sample, 2))
        mirrored = any(torch.equal(result.flip(-1), window) for window in _windows(sample, 2))
        assert plain != mirrored, "not exactly one (possibly flipped) window of the padded input"
        flipped += mirrored
    assert 0 < flipped < 16, "flips are not random"
    assert sum(not torch.equal(r, s) for r, s in zip(out, x)) >= 8, "almost nothing was cropped or flipped"
    assert torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(0), padding=2))
    assert not torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(1), padding=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_crop_flip_with_cpu_generator_matches_on_cuda() -> None:
    x = torch.rand(8, 3, 8, 8)
    cpu = random_crop_flip(x, torch.Generator().manual_seed(0))
    cuda = random_crop_flip(x.cuda(), torch.Generator().manual_seed(0))
    assert torch.equal(cpu, cuda.cpu())


def _tiny(augment: str) -> Dataset:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.int64).reshape(2, 3, 4, 4).to(torch.uint8)
    y = torch.tensor([0, 1])
    empty_x, empty_y = x[:0], y[:0]
    return Dataset("tiny", x, y, empty_x, empty_y, x, y, (3, 4, 4), 2, (0.5,) * 3, (0.25,) * 3, augment)


def test_batch_scales_uint8_and_augments_only_when_asked() -> None:
    ds = _tiny("crop_flip")
    x, y = ds.batch("train", torch.tensor([1]))
    assert x.dtype == torch.float32 and torch.allclose(x, ds.train_x[1:].float() / 255.0) and y.tolist() == [1]
    augmented, _ = ds.batch("train", augment=True, generator=torch.Generator().manual_seed(0))
    assert augmented.shape == (2, 3, 4, 4) and not torch.equal(augmented, ds.batch("train")[0])
    plain = _tiny("none")
    assert torch.equal(plain.batch("train", augment=True)[0], plain.batch("train")[0])


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_set() -> None:
    assert available() == sorted(["mnist1d", "digits", "synthetic", *VISION_SETS])
    assert set(data_mod.DATASETS) == set(available())


def test_unknown_name_lists_allowed_and_suggests_closest() -> None:
    with pytest.raises(ValueError) as info:
        load("digts")
    message = str(info.value)
    assert "'digts'" in message and "did you mean 'digits'" in message
    assert all(name in message for name in available())


def test_unknown_option_is_named_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'colour'.*test_fraction, test_seed"):
        load("digits", colour=True)
    with pytest.raises(ValueError, match=r"'resize'.*none"):
        load("cifar10", data_root="/nonexistent", resize=64)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_val_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        load("digits", val_fraction=fraction)
