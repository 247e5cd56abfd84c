"""Data sets as device-resident tensors, batched by index.

Why tensors and not a DataLoader: the data sets symstudy uses (mnist1d, digits, MNIST, CIFAR) fit in device
memory, and a trial evaluates dozens of points along a path; per-sample Python in the hot loop would dominate.
Pixels are kept in [0, 1] (normalisation lives inside the model) so that PGD's epsilon is in pixel units.

Entry point: ``load(name, ...)``; ``available()`` lists the names and ``loader_options(name)`` a set's options.
Offline sets (mnist1d, digits, synthetic) need no files; torchvision sets are read from ``data_root``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import random
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from study.common.errors import DatasetNotFoundError
from study.common.validation import reject_unknown_keys, unknown_choice

_log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """Train/val/test tensors plus what a model needs to know about them.

    ``*_x`` hold inputs either as ``uint8`` (scaled by 1/255 when batched, to keep CIFAR small on the GPU) or as
    ``float32`` already in [0, 1]. ``*_y`` are ``int64`` class indices.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    in_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"  # "none" | "crop_flip"

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """The raw (x, y) tensors of one split."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def size(self, name: str) -> int:
        return int(self.split(name)[1].shape[0])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> "Dataset":
        """A copy whose tensors live on ``device`` (no copy if they already do)."""
        device = torch.device(device)
        moved = {f"{s}_{k}": getattr(self, f"{s}_{k}").to(device) for s in SPLITS for k in ("x", "y")}
        return replace(self, **moved)

    def batch(
        self,
        split: str,
        index: Tensor | slice | None = None,
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Float inputs in [0, 1] and labels for ``index`` of ``split``, augmented on the device if asked.

        Read-only: for float32 data without an index or augmentation, ``x`` is the stored tensor itself
        (no copy per batch), so a caller must not modify it in place."""
        x, y = self.split(split)
        if index is not None:
            x, y = x[index], y[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if augment and self.augment != "none":
            x = AUGMENTATIONS[self.augment](x, generator)
        return x, y


def random_crop_flip(x: Tensor, generator: torch.Generator | None, padding: int = 4) -> Tensor:
    """Random crop with zero padding plus horizontal flip, for a whole batch at once on its device.

    Each sample gets its own offset; the crop is done with two gathers instead of a Python loop so it costs
    a few kernels per batch whatever the batch size. The random draws are made on the generator's device and
    then moved, so a CPU generator works for CUDA data and gives the same crops on either.
    """
    n, _, h, w = x.shape
    draw_on = generator.device if generator is not None else x.device
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # [n, w]
    c = x.shape[1]
    wp = padded.shape[-1]
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, wp))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    flip = (torch.rand(n, generator=generator, device=draw_on) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


AUGMENTATIONS = {"crop_flip": random_crop_flip}


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every loader may need besides its own options."""

    data_root: Path | None
    download: bool


@dataclass(frozen=True)
class _Source:
    """A loader's answer: the full training set (``load`` carves val out of it) and the test set."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None  # None: computed on the train split
    std: tuple[float, ...] | None = None
    augment: str = "none"


Loader = Callable[..., _Source]
Shape = tuple[tuple[int, ...], int]  # (input shape without the batch axis, number of classes)
DATASETS: dict[str, Loader] = {}
SHAPES: dict[str, Callable[[Mapping[str, Any]], Shape]] = {}


def register(name: str, shape: Shape | Callable[[Mapping[str, Any]], Shape]) -> Callable[[Loader], Loader]:
    """Add a loader under ``name``; its keyword-only parameters are the options ``load`` accepts for it.

    ``shape`` is what the data set looks like without loading it (or a function of the loader's options giving
    it), so a study spec can check every model against its data before anything is downloaded or generated."""

    def add(loader: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is registered twice")
        DATASETS[name] = loader
        SHAPES[name] = shape if callable(shape) else (lambda options, fixed=shape: fixed)
        return loader

    return add


def shape_of(name: str, options: Mapping[str, Any] | None = None) -> Shape:
    """(input shape, classes) of data set ``name`` with ``options``, without loading it."""
    _lookup(name)
    return SHAPES[name]({**loader_options(name), **(options or {})})


def available() -> list[str]:
    """Names ``load`` accepts."""
    return sorted(DATASETS)


def loader_options(name: str) -> dict[str, Any]:
    """The options ``load`` accepts for data set ``name``, with their defaults (for CLIs and error messages)."""
    params = inspect.signature(_lookup(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def load(
    name: str,
    *,
    data_root: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Dataset:
    """Load data set ``name`` with a validation split carved from its training set, on ``device``.

    The val split depends only on ``split_seed`` (not on any training seed), so every endpoint of a study sees the
    same train/val partition; the test set never depends on it.
    """
    loader = _lookup(name)
    _check_options(name, options)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    root = None if data_root is None else Path(data_root).expanduser()
    source = loader(_Context(data_root=root, download=download), **options)
    train_index, val_index = _val_split(int(source.train_y.shape[0]), val_fraction, split_seed)
    train_x, train_y = source.train_x[train_index], source.train_y[train_index]
    mean, std = (source.mean, source.std) if source.mean is not None else _channel_stats(train_x)
    data = Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=source.train_x[val_index],
        val_y=source.train_y[val_index],
        test_x=source.test_x,
        test_y=source.test_y,
        in_shape=tuple(int(s) for s in source.train_x.shape[1:]),
        num_classes=source.num_classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        augment=source.augment,
    )
    _log.info(
        "data set %s: train %d, val %d, test %d, in_shape %s, %d classes",
        name, data.size("train"), data.size("val"), data.size("test"), data.in_shape, data.num_classes,
    )
    return data.to(device)


def _lookup(name: str) -> Loader:
    """The loader of ``name``, or a ValueError that lists the choices and the likeliest typo fix."""
    if name in DATASETS:
        return DATASETS[name]
    raise unknown_choice("data set", name, available())


def _check_options(name: str, given: dict[str, Any]) -> None:
    reject_unknown_keys(f"options of data set {name!r}", given, loader_options(name))


def _val_split(n: int, val_fraction: float, split_seed: int) -> tuple[Tensor, Tensor]:
    """Sorted (train, val) indices of a seeded random partition of ``range(n)``."""
    n_val = int(round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units; flat inputs ([N, D]) get one scalar each."""
    xf = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    dims = tuple(d for d in range(xf.ndim) if d != 1) if xf.ndim > 2 else tuple(range(xf.ndim))
    var, mean = torch.var_mean(xf, dim=dims, correction=0)
    std = var.sqrt().clamp_min(1e-6)  # a constant channel must not divide by zero inside the model
    return tuple(mean.reshape(-1).tolist()), tuple(std.reshape(-1).tolist())


# --------------------------------------------------------------------------------------------------------------
# Offline data sets
# --------------------------------------------------------------------------------------------------------------


@register("mnist1d", ((40,), 10))
def _mnist1d(ctx: _Context, *, seed: int = 42, num_samples: int = 5000) -> _Source:
    """MNIST-1D (Greydanus 2020), generated locally: 40-d signals, 10 classes, the package's 80/20 split.

    Values are mapped affinely to [0, 1] with the training set's global min/max (test values clipped), so that
    attacks and pixel-unit epsilons mean the same as for images.
    """
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.seed, args.num_samples = int(seed), int(num_samples)
    spec = {k: v for k, v in sorted(vars(args).items()) if k != "url"}
    spec["mnist1d_version"] = _package_version("mnist1d")
    path = cache_dir(ctx.data_root) / f"mnist1d-{_digest(spec)}.npz"
    arrays = _cached_arrays(path, lambda: _generate_mnist1d(args))
    low, high = float(arrays["x"].min()), float(arrays["x"].max())
    return _Source(
        train_x=_unit_interval(arrays["x"], low, high),
        train_y=torch.from_numpy(arrays["y"].astype(np.int64)),
        test_x=_unit_interval(arrays["x_test"], low, high),
        test_y=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=10,
    )


def _generate_mnist1d(args: Any) -> dict[str, np.ndarray]:
    """``make_dataset`` without ``get_dataset``'s pickles in the cwd, leaving the global RNGs as they were.

    (``make_dataset`` reseeds Python's and NumPy's global generators, which would silently change whatever the
    caller draws next.)
    """
    import mnist1d.data

    py_state, np_state = random.getstate(), np.random.get_state()
    start = time.perf_counter()
    try:
        raw = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    _log.info("generated mnist1d (%d samples) in %.2f s", args.num_samples, time.perf_counter() - start)
    return {key: np.asarray(raw[key]) for key in ("x", "y", "x_test", "y_test")}


def _unit_interval(x: np.ndarray, low: float, high: float) -> Tensor:
    scaled = (x - low) / max(high - low, 1e-12)
    return torch.from_numpy(np.clip(scaled, 0.0, 1.0).astype(np.float32))


@register("digits", ((1, 8, 8), 10))
def _digits(ctx: _Context, *, test_fraction: float = 0.2, test_seed: int = 0) -> _Source:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16) as [N, 1, 8, 8] floats in [0, 1].

    The test split is stratified and seeded by ``test_seed``, deliberately not by ``split_seed``: the test set
    must stay the same whichever train/val partition a study uses.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32))[:, None]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=test_seed, stratify=bunch.target
    )
    train, test = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))
    return _Source(train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test], num_classes=10)


@register("synthetic", lambda o: (tuple(int(s) for s in o["in_shape"]), int(o["num_classes"])))
def _synthetic(
    ctx: _Context,
    *,
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    n_train: int = 5000,
    n_test: int = 1000,
    noise: float = 0.1,
    nuisance: float = 1.0,
    contrast: float = 0.25,
    prototypes: int = 4,
    dof: int = 48,
    seed: int = 0,
) -> _Source:
    """Class-conditional smooth images (or signals) of any shape, deterministic in ``seed``.

    Each class has ``prototypes`` smooth random patterns; a sample is
    ``clip(0.5 + contrast * (a * prototype + nuisance * smooth_noise) + noise * white_noise, 0, 1)`` with
    ``a ~ U(0.5, 1.5)``. The smooth noise lives in the same low-frequency space as the prototypes (about ``dof``
    degrees of freedom whatever the shape), so it cannot be projected out and difficulty barely depends on the
    shape: with the defaults a linear model reaches about 65-85 % test accuracy, a small MLP about 90-96 %, and a
    small conv net learns it too. Stored as uint8 to stay small on the device.
    """
    shape = tuple(int(s) for s in in_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"in_shape must be a non-empty tuple of positive sizes, got {in_shape!r}")
    gen = torch.Generator().manual_seed(int(seed))
    protos = _smooth_patterns(num_classes * prototypes, shape, dof, gen).reshape(num_classes, prototypes, *shape)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        which = torch.randint(prototypes, (n,), generator=gen)
        amplitude = (0.5 + torch.rand(n, generator=gen)).reshape(n, *(1,) * len(shape))
        signal = amplitude * protos[y, which] + nuisance * _smooth_patterns(n, shape, dof, gen)
        x = 0.5 + contrast * signal + noise * torch.randn(n, *shape, generator=gen)
        return x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8), y

    train_x, train_y = sample(int(n_train))
    test_x, test_y = sample(int(n_test))
    return _Source(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=int(num_classes))


_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _smooth_patterns(n: int, shape: tuple[int, ...], dof: int, gen: torch.Generator) -> Tensor:
    """``n`` zero-mean, unit-std low-frequency patterns of ``shape``: a coarse random grid, upsampled.

    ``shape`` is (D,) for flat signals or (C, *spatial) with 1-3 spatial axes; the coarse grid has about ``dof``
    entries in all.
    """
    channels, spatial = (1, shape) if len(shape) == 1 else (shape[0], shape[1:])
    if len(spatial) not in _INTERPOLATION:
        raise ValueError(f"synthetic supports 1-3 spatial axes, got in_shape {shape}")
    side = (max(dof, 1) / channels) ** (1.0 / len(spatial))
    grid = tuple(min(s, max(2, round(side))) for s in spatial)
    coarse = torch.randn(n, channels, *grid, generator=gen)
    mode = _INTERPOLATION[len(spatial)]
    fine = torch.nn.functional.interpolate(coarse, size=spatial, mode=mode, align_corners=False)
    dims = tuple(range(1, fine.ndim))
    fine = (fine - fine.mean(dims, keepdim=True)) / fine.std(dims, keepdim=True).clamp_min(1e-6)
    return fine.reshape(n, *shape)



# --------------------------------------------------------------------------------------------------------------
# torchvision data sets (read from data_root; downloaded only when asked)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VisionSpec:
    name: str
    cls_name: str  # attribute of torchvision.datasets
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_shape: tuple[int, ...]
    augment: str = "none"


_VISION = (
    _VisionSpec("mnist", "MNIST", 10, (0.1307,), (0.3081,), (1, 28, 28)),
    _VisionSpec("fashion_mnist", "FashionMNIST", 10, (0.2860,), (0.3530,), (1, 28, 28)),
    _VisionSpec("cifar10", "CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32),
                "crop_flip"),
    _VisionSpec("cifar100", "CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (3, 32, 32),
                "crop_flip"),
)


def _vision_loader(spec: _VisionSpec) -> Loader:
    """A loader for one torchvision set (a closure, so the spec is not mistaken for a user option)."""

    def loader(ctx: _Context) -> _Source:
        root = _require_root(spec.name, ctx.data_root)
        train_x, train_y = _read_vision(spec, root, train=True, download=ctx.download)
        test_x, test_y = _read_vision(spec, root, train=False, download=ctx.download)
        return _Source(train_x, train_y, test_x, test_y, spec.num_classes, spec.mean, spec.std, spec.augment)

    loader.__doc__ = f"torchvision {spec.cls_name} as uint8 [N, C, H, W] tensors."
    return loader


def _require_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ValueError(f"data set {name!r} is read from disk: pass data_root (CLI --data-root)")
    return root


def _read_vision(spec: _VisionSpec, root: Path, *, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """One split of a torchvision set via its ``.data``/``.targets`` arrays (no per-sample PIL)."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.cls_name)
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as err:
        if "not found" not in str(err):
            raise
        folder = root / (getattr(cls, "base_folder", None) or Path(cls.__name__, "raw"))
        raise DatasetNotFoundError(
            f"data set {spec.name!r} not found (or corrupted) in {folder}; pass download=True "
            f"(CLI --download) to fetch it into {root}"
        ) from err
    return _as_nchw_uint8(ds.data), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def _as_nchw_uint8(data: Any) -> Tensor:
    """MNIST's [N, H, W] tensor or CIFAR's [N, H, W, C] array as a contiguous uint8 [N, C, H, W] tensor."""
    x = data if isinstance(data, Tensor) else torch.from_numpy(np.ascontiguousarray(data))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.to(torch.uint8).contiguous()


for _spec in _VISION:
    register(_spec.name, (_spec.in_shape, _spec.num_classes))(_vision_loader(_spec))


# --------------------------------------------------------------------------------------------------------------
# Cache of generated arrays
# --------------------------------------------------------------------------------------------------------------


def cache_dir(data_root: str | Path | None = None) -> Path:
    """Where generated data sets are cached: ``data_root``, else $SYMSTUDY_CACHE, else ~/.cache/symstudy."""
    if data_root is not None:
        return Path(data_root).expanduser()
    return Path(os.environ.get("SYMSTUDY_CACHE") or "~/.cache/symstudy").expanduser()


def _cached_arrays(path: Path, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from the .npz at ``path``, or ``make()`` written there atomically (a broken cache is rebuilt)."""
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            _log.warning("ignoring unreadable cache %s (%s); regenerating", path, err)
    arrays = make()
    try:
        _write_npz_atomically(path, arrays)
    except OSError as err:  # a read-only cache must not stop a run
        _log.warning("could not cache %s (%s)", path, err)
    return arrays


def _write_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Concurrent workers may generate the same file; ``os.replace`` makes the last complete one win."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
