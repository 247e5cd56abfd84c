"""The trial configuration: a validated, typed view of the nested dict a trial receives.

Every check that can fail without compute happens here, so a typo or an impossible value is reported before
any endpoint is trained. Errors name the dotted path of the bad key (``trial.align.method``) so a search
space author can find it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from study.core import data as datasets
from study.core import models
from study.core.runtime import Runtime
from study.core import align
from study.core.attacks import AttackConfig
from study.core.paths import COEFFICIENTS
from study.core.evaluate import EVAL_BATCH_SIZE
from study.core.train import Recipe
from study.common.errors import ConfigError
from study.common.identity import content_key
from study.common.validation import (check_bool, check_choice, check_mapping, check_number, check_seed, check_string,
                                     reject_unknown_keys, unknown_choice)

DEVICES = ("auto", "cpu", "cuda")
#: Version of what a config's defaults build, hashed into every endpoint and trial key: raised when a default
#: changes the trained weights or the results (2: W-Asym n_fix as a fraction of fan-in), so an older store or
#: study folder is never served results its config no longer describes.
IDENTITY_FORMAT = 2

# Upper limits: values no machine could run, so above one it is a typo (1e9 for 1e3), refused before any compute.
#: ``model.width`` multiplies every layer's channels (parameters grow with its square). At 64 the default MLP
#: has 32,768 units per layer (2.2e9 parameters), ResNet-20 1.1e9 and VGG-11 3.8e10, past what one accelerator
#: can train (the spec also caps the parameter count, ``study.sweep.spec.MAX_PARAMETERS``); widths in use are
#: fractions or small multiples, so a larger value is a typo.
MAX_WIDTH = 64
MAX_BENDS = 64  # bends of a curve (Garipov et al. use 3; each bend is a full copy of the network's weights)
MAX_EVAL_POINTS = 10_000  # points of an evaluation grid along a path (each is a BN recalibration + 3 splits)
MAX_BATCH_SIZE = 2**20
MAX_PLANE_GRID = 101  # points per axis of eval.plane (each is a BN recalibration + 2 splits; 101² ≈ 10^4)
MAX_SAMPLES = 10**8  # samples of a data set, an alignment batch or an evaluation subset
#: Architecture options with integer values, and their limits: more than 64 layers or 65,536 units per layer
#: (before ``width``) is not a network any trial here could train.
MODEL_INT_OPTIONS = {"depth": (1, 64), "hidden": (1, 2**16)}
#: Integer options of the data sets' loaders and their limits (any other integer option: [0, MAX_SAMPLES]).
DATA_INT_OPTIONS = {"n_train": (1, MAX_SAMPLES), "n_test": (1, MAX_SAMPLES), "num_samples": (10, MAX_SAMPLES),
                    "num_classes": (2, 100_000), "prototypes": (1, 10_000), "dof": (1, 10**6)}
#: A generated data set lives on the trial's device as uint8: 256 GiB of it fits on no accelerator.
MAX_DATA_BYTES = 2**38


def _check_keys(path: str, given: Mapping[str, Any], allowed: list[str]) -> None:
    try:
        reject_unknown_keys(path, given, allowed)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _wrap(path: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``build`` and re-raise its ValueError/TypeError with the config path in front."""
    try:
        return build(*args, **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path}: {error}") from error


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    data_root: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_string("name", self.name)
        if self.name not in datasets.available():
            raise unknown_choice("data set", self.name, datasets.available())
        check_string("data_root", self.data_root, allow_none=True)
        check_bool("download", self.download)
        check_mapping("options", self.options)
        allowed = datasets.loader_options(self.name)
        reject_unknown_keys(f"options of data set {self.name!r}", self.options, list(allowed))
        check_number("val_fraction", self.val_fraction, low=0, high=1, high_open=True)
        check_seed("split_seed", self.split_seed)
        _check_data_options(self.options, allowed)

    def identity(self) -> dict[str, Any]:
        """What determines the data (not where it lives): part of an endpoint's key."""
        return {"name": self.name, "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                "options": dict(self.options)}


def _check_data_options(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Each loader option against the type of its default (and the limits above): the loaders only run in the
    trial, after the study has started."""
    for key, value in options.items():
        where, default = f"options.{key}", defaults[key]
        if "seed" in key:
            check_seed(where, value)
        elif isinstance(default, bool):
            check_bool(where, value)
        elif isinstance(default, int):
            low, high = DATA_INT_OPTIONS.get(key, (0, MAX_SAMPLES))
            check_number(where, value, integer=True, low=low, high=high)
        elif isinstance(default, float):
            if key.endswith("fraction"):
                check_number(where, value, low=0, high=1, low_open=True, high_open=True)
            else:
                check_number(where, value, low=0)
        elif isinstance(default, (tuple, list)):
            if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 4:
                raise ValueError(f"{where} must be a list of 1 to 4 sizes, got {value!r}")
            for size in value:
                check_number(f"{where}[]", size, integer=True, low=1, high=2**16)
    if {"in_shape", "n_train", "n_test"} <= set(defaults):  # a generated data set: its size is known up front
        merged = {**defaults, **options}
        sample = 1
        for size in merged["in_shape"]:
            sample *= int(size)
        total = (int(merged["n_train"]) + int(merged["n_test"])) * sample
        if total > MAX_DATA_BYTES:
            raise ValueError(f"options: n_train + n_test samples of in_shape {list(merged['in_shape'])} are "
                             f"{total:.3g} bytes, more than the {MAX_DATA_BYTES // 2**30} GiB any device could hold")


def _check_symmetry_option(key: str, value: Any) -> None:
    """``n_fix`` (an integer >= 0), ``kappa`` (a number >= 0): one value for every layer group or a mapping per
    group; ``figlu_scale`` (a number > 0). Against the layers' fan-in they are checked when the model is built."""
    if key == "figlu_scale":
        check_number(f"options.{key}", value, low=0, low_open=True)
        return
    values = check_mapping(f"options.{key}", value).items() if isinstance(value, Mapping) else [(None, value)]
    for group, v in values:
        where = f"options.{key}" + (f".{group}" if group is not None else "")
        if key == "n_fix":
            check_number(where, v, integer=True, low=0)
        else:
            check_number(where, v, low=0)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "mlp"
    width: float = 1.0
    symmetry: str = "standard"
    mask_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_string("arch", self.arch)
        check_mapping("options", self.options)
        models.resolve_options(self.arch, self.options)  # unknown arch/option -> ValueError now
        check_string("symmetry", self.symmetry)
        for option, owner in (("n_fix", "w_asym"), ("kappa", "w_asym"), ("figlu_scale", "sigma_asym")):
            if option in self.options and self.symmetry != owner:
                raise ValueError(f"option {option!r} only applies to symmetry {owner!r}, not {self.symmetry!r}")
        if self.symmetry not in ("standard", "w_asym", "sigma_asym"):
            raise unknown_choice("symmetry", self.symmetry, ["standard", "w_asym", "sigma_asym"])
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not 0 < self.width <= MAX_WIDTH:
            raise ValueError(f"width must be > 0 and <= {MAX_WIDTH} (a multiplier of every layer's channels), "
                             f"got {self.width!r}")
        check_seed("mask_seed", self.mask_seed)
        for key, value in self.options.items():
            if key in models.SYMMETRY_OPTIONS:
                _check_symmetry_option(key, value)
            elif key in MODEL_INT_OPTIONS:
                low, high = MODEL_INT_OPTIONS[key]
                check_number(f"options.{key}", value, integer=True, low=low, high=high)


@dataclass(frozen=True)
class AlignConfig:
    method: str = "none"
    samples: int = 1000  # alignment batch: the first N training samples, no augmentation (Tatro: 10,000)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_string("method", self.method)
        check_mapping("options", self.options)
        align.check_options(self.method, self.options)  # a typo in an option fails here, not after training
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 1 <= self.samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be an integer >= 1 and <= {MAX_SAMPLES}, got {self.samples!r}")
        check_seed("seed", self.seed)
        _check_align_options(self.method, self.options)


def _check_align_options(method: str, options: Mapping[str, Any]) -> None:
    """Option values against the type of the method's default, before any compute (the method itself checks
    them only when it runs, after both endpoints are trained)."""
    defaults = align.METHODS[method].defaults()
    choices = {("activation", "similarity"): align.activation.SIMILARITIES, ("pam", "init"): align.pam.INITS}
    for key, value in options.items():
        where, default = f"options.{key}", defaults.get(key)
        if isinstance(default, bool):
            check_bool(where, value)
        elif isinstance(default, int):  # counts: at least 1, except the ones pam allows to be 0
            low = 0 if (method, key) in (("pam", "perm_steps"), ("pam", "samples")) else 1
            check_number(where, value, integer=True, low=low, high=MAX_SAMPLES)
        elif isinstance(default, float):
            check_number(where, value, low=0, low_open=(method, key) in (("pam", "perm_lr"), ("ste", "lr")))
        elif (method, key) in choices:
            check_choice(where, value, choices[method, key])
        elif isinstance(default, str):
            check_string(where, value)
        elif key == "recipe" and value is not None:
            for name, option in (("epochs", "curve_epochs"), ("batch_size", "batch_size")):  # as pam refuses them
                if method == "pam" and name in check_mapping(where, value):
                    raise ValueError(f"{where}: set the curve step's {name} with the pam option {option!r}, not here")
            Recipe.from_dict(check_mapping(where, value))


@dataclass(frozen=True)
class CurveConfig:
    kind: str = "bezier"
    bends: int = 3
    seed: int = 0
    train: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        curves = [k for k in COEFFICIENTS if k != "linear"]
        check_string("kind", self.kind)
        if self.kind not in curves:
            raise unknown_choice("curve kind (the linear path is always evaluated)", self.kind, curves)
        if isinstance(self.bends, bool) or not isinstance(self.bends, int) or not 3 <= self.bends <= MAX_BENDS:
            raise ValueError(f"bends must be an integer >= 3 (endpoints included) and <= {MAX_BENDS}, "
                             f"got {self.bends!r}")
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class PlaneConfig:
    """``eval.plane``: a ``grid`` × ``grid`` evaluation over [−margin, 1 + margin]² of the plane's coordinates."""

    grid: int = 11
    margin: float = 0.2

    def __post_init__(self) -> None:
        check_number("grid", self.grid, integer=True, low=2, high=MAX_PLANE_GRID)
        check_number("margin", self.margin, low=0, high=10)


@dataclass(frozen=True)
class EvalConfig:
    points: int = 25
    attack: AttackConfig | None = None
    robust_splits: tuple[str, ...] = ("test",)
    batch_size: int = EVAL_BATCH_SIZE
    max_samples: int | None = None
    bf16: bool = True  # autocast evaluation forward passes on CUDA (ignored on CPU)
    #: The loss-surface plane through θ_A, the curve's middle bend and θ_B (study.core.plane); None: off.
    #: Needs a curve (checked in :func:`parse`).
    plane: PlaneConfig | None = None
    #: Ensemble (averaged softmax of the endpoints) and merge (θ(½) of every path) metrics (study.core.merging).
    merge: bool = True
    #: Endpoint quality: an endpoint whose test accuracy is below this fraction in [0, 1] is under-trained
    #: (metric ``endpoints/under_trained``), so a low barrier between bad models is not read as connectivity.
    #: None: halfway from chance to perfect, 1/K + (1 − 1/K)/2 for K classes (0.55 for 10); 0 flags nothing.
    min_endpoint_acc: float | None = None
    #: REPAIR (study.core.repair) at every evaluated point of every path: each hidden unit's pre-activation
    #: mean and std reset to the interpolation of the endpoints'. Off: the profiles of the plain interpolation.
    repair: bool = False
    #: BatchNorm recalibration budget (study.core.bn): None, the whole training split (Garipov et al.'s policy);
    #: N >= 1: the first N clean training images, the same ones at every evaluated point (N >= the split: all).
    bn_samples: int | None = None

    def endpoint_acc_threshold(self, num_classes: int) -> float:
        """The test accuracy below which an endpoint counts as under-trained, for ``num_classes`` classes."""
        if self.min_endpoint_acc is not None:
            return float(self.min_endpoint_acc)
        chance = 1.0 / num_classes
        return chance + 0.5 * (1.0 - chance)

    def __post_init__(self) -> None:
        if self.min_endpoint_acc is not None:
            check_number("min_endpoint_acc", self.min_endpoint_acc, low=0, high=1)
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be true or false, got {self.bf16!r}")
        if not isinstance(self.merge, bool):
            raise ValueError(f"merge must be true or false, got {self.merge!r}")
        check_bool("repair", self.repair)
        check_number("batch_size", self.batch_size, integer=True, low=1, high=MAX_BATCH_SIZE)
        if isinstance(self.points, bool) or not isinstance(self.points, int) or not 3 <= self.points <= MAX_EVAL_POINTS:
            raise ValueError(f"points must be an integer >= 3 (the grid includes t=0, t=1 and a middle) and "
                             f"<= {MAX_EVAL_POINTS}, got {self.points!r}")
        if self.max_samples is not None:
            check_number("max_samples", self.max_samples, integer=True, low=1, high=MAX_SAMPLES)
        if self.bn_samples is not None:
            check_number("bn_samples", self.bn_samples, integer=True, low=1, high=MAX_SAMPLES)
        if isinstance(self.robust_splits, (str, bytes)) or not isinstance(self.robust_splits, (list, tuple)):
            raise ValueError(f"robust_splits must be a list of splits ({', '.join(datasets.SPLITS)}), "
                             f"got {self.robust_splits!r}")
        for split in self.robust_splits:
            if not isinstance(split, str) or split not in datasets.SPLITS:
                raise ValueError(f"robust_splits: unknown split {split!r}; allowed: {', '.join(datasets.SPLITS)}")
        if len(set(self.robust_splits)) != len(self.robust_splits):
            raise ValueError(f"robust_splits: a split is listed twice in {list(self.robust_splits)}")


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig
    model: ModelConfig
    train: Recipe
    seeds: tuple[int, int]
    align: AlignConfig
    curve: CurveConfig | None
    eval: EvalConfig
    device: str = "auto"
    runtime: Runtime = field(default_factory=Runtime)  # how the device is used; in keys only via Runtime.identity

    def endpoint_description(self, seed: int) -> dict[str, Any]:
        """Everything that determines one trained endpoint (hashed into its store key)."""
        out = {"format": IDENTITY_FORMAT, "data": self.data.identity(), "model": asdict(self.model),
               "train": self.train.identity(), "seed": int(seed)}
        if self.runtime.identity(training=True):  # CPU bf16 trains other endpoints (the default adds nothing)
            out["runtime"] = self.runtime.identity(training=True)
        return out

    def endpoint_key(self, seed: int) -> str:
        """The endpoint's content key (its store key and MLflow ``trial_key``)."""
        return content_key(self.endpoint_description(seed))

    def identity(self) -> dict[str, Any]:
        """What determines a pair trial's results: hashed into its key (``study.sweep.spec.trial_key``).

        The recipes enter through :meth:`Recipe.identity` (settings that cannot change trained weights are
        pinned), and ``runtime`` (how the device is used) is left out, so a study resumed with another runtime
        setting or validation batch size continues instead of starting every trial again; except its
        :meth:`Runtime.identity` (CPU bf16), which changes results beyond rounding."""
        out = {"format": IDENTITY_FORMAT, **self.to_dict()}
        out.pop("runtime")
        if self.runtime.identity():
            out["runtime"] = self.runtime.identity()
        out["train"] = self.train.identity()
        if self.curve is not None:
            out["curve"]["train"] = self.curve.train.identity()
        for name, default in (("plane", None), ("merge", True), ("min_endpoint_acc", None),
                              ("bn_samples", None)):  # a default keeps older keys
            if out["eval"].get(name, default) == default:
                out["eval"].pop(name, None)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["train"] = self.train.to_dict()
        if self.curve is not None:
            out["curve"]["train"] = self.curve.train.to_dict()
        return out


def _attack(path: str, value: Any) -> AttackConfig | None:
    if value is None:
        return None
    _check_keys(path, value, [f.name for f in fields(AttackConfig)])
    attack = _wrap(path, AttackConfig, **value)
    return None if attack.disabled else attack


def _section(path: str, cls: type, value: Any, nested: Mapping[str, Any] | None = None) -> Any:
    value = {} if value is None else value
    _check_keys(path, value, [f.name for f in fields(cls)])
    kwargs = dict(value)
    for key, convert in (nested or {}).items():
        if key in kwargs:
            kwargs[key] = convert(f"{path}.{key}", kwargs[key])
    return _wrap(path, cls, **kwargs)


def parse(config: Mapping[str, Any], path: str = "trial") -> TrialConfig:
    """Validate a nested trial dict and return the typed config; raises :class:`ConfigError`."""
    _check_keys(path, config, [f.name for f in fields(TrialConfig)])
    seeds = config.get("seeds", (0, 1))
    if (not isinstance(seeds, (list, tuple)) or len(seeds) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{path}.seeds must be a pair of integers [seed_a, seed_b], got {seeds!r}")
    for seed in seeds:
        _wrap(f"{path}.seeds", check_seed, "each seed", seed)
    if seeds[0] == seeds[1]:
        raise ConfigError(f"{path}.seeds must differ (two independently trained endpoints), got {list(seeds)}")
    recipe = lambda p, v: _wrap(p, Recipe.from_dict, v or {})  # noqa: E731
    device = config.get("device", "auto")
    if not isinstance(device, str) or (device not in DEVICES and re.fullmatch(r"cuda:[0-9]{1,3}", device) is None):
        raise ConfigError(f"{path}.device: unknown device {device!r}; allowed: {', '.join(DEVICES)}, cuda:N")
    curve = config.get("curve")
    plane = config.get("eval").get("plane") if isinstance(config.get("eval"), Mapping) else None
    if plane is not None and curve is None:
        raise ConfigError(f"{path}.eval.plane: the plane runs through θ_A, the curve's middle bend and θ_B, so it "
                          f"needs a curve; add a `curve:` section (e.g. {{kind: bezier, bends: 3}}) or set "
                          f"eval.plane to null")
    return TrialConfig(
        data=_section(f"{path}.data", DataConfig, config.get("data")),
        model=_section(f"{path}.model", ModelConfig, config.get("model")),
        train=recipe(f"{path}.train", config.get("train")),
        seeds=(int(seeds[0]), int(seeds[1])),
        align=_section(f"{path}.align", AlignConfig, config.get("align")),
        curve=None if curve is None else _section(f"{path}.curve", CurveConfig, curve, {"train": recipe}),
        eval=_section(f"{path}.eval", EvalConfig, config.get("eval"),
                      {"attack": _attack, "robust_splits": lambda p, v: tuple(v) if isinstance(v, list) else v,
                       "plane": lambda p, v: None if v is None else _section(p, PlaneConfig, v)}),
        device=str(device),
        runtime=_section(f"{path}.runtime", Runtime, config.get("runtime")),
    )
