"""The trial configuration: a validated, typed view of the nested dict a trial receives.

Every check that can fail without compute happens here, so a typo or an impossible value is reported before
any endpoint is trained. Errors name the dotted path of the bad key (``trial.align.method``) so a search
space author can find it.
"""

from __future__ import annotations

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
from study.common.validation import reject_unknown_keys, unknown_choice

DEVICES = ("auto", "cpu", "cuda")


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
        if self.name not in datasets.available():
            raise unknown_choice("data set", self.name, datasets.available())
        allowed = datasets.loader_options(self.name)
        reject_unknown_keys(f"options of data set {self.name!r}", self.options, list(allowed))
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {self.val_fraction!r}")

    def identity(self) -> dict[str, Any]:
        """What determines the data (not where it lives): part of an endpoint's key."""
        return {"name": self.name, "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                "options": dict(self.options)}


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "mlp"
    width: float = 1.0
    symmetry: str = "standard"
    mask_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        models.resolve_options(self.arch, self.options)  # unknown arch/option -> ValueError now
        for option, owner in (("n_fix", "w_asym"), ("kappa", "w_asym"), ("figlu_scale", "sigma_asym")):
            if option in self.options and self.symmetry != owner:
                raise ValueError(f"option {option!r} only applies to symmetry {owner!r}, not {self.symmetry!r}")
        if self.symmetry not in ("standard", "w_asym", "sigma_asym"):
            raise unknown_choice("symmetry", self.symmetry, ["standard", "w_asym", "sigma_asym"])
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width!r}")


@dataclass(frozen=True)
class AlignConfig:
    method: str = "none"
    samples: int = 1000  # alignment batch: the first N training samples, no augmentation (Tatro: 10,000)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        align.check_options(self.method, self.options)  # a typo in an option fails here, not after training
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}")


@dataclass(frozen=True)
class CurveConfig:
    kind: str = "bezier"
    bends: int = 3
    seed: int = 0
    train: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        curves = [k for k in COEFFICIENTS if k != "linear"]
        if self.kind not in curves:
            raise unknown_choice("curve kind (the linear path is always evaluated)", self.kind, curves)
        if not isinstance(self.bends, int) or self.bends < 3:
            raise ValueError(f"bends must be an integer >= 3 (endpoints included), got {self.bends!r}")


@dataclass(frozen=True)
class EvalConfig:
    points: int = 25
    attack: AttackConfig | None = None
    robust_splits: tuple[str, ...] = ("test",)
    batch_size: int = EVAL_BATCH_SIZE
    max_samples: int | None = None
    bf16: bool = True  # autocast evaluation forward passes on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be true or false, got {self.bf16!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.points, int) or self.points < 3:
            raise ValueError(f"points must be an integer >= 3 (the grid includes t=0, t=1 and a middle), "
                             f"got {self.points!r}")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 1):
            raise ValueError(f"max_samples must be null or an integer >= 1, got {self.max_samples!r}")
        for split in self.robust_splits:
            if split not in datasets.SPLITS:
                raise ValueError(f"robust_splits: unknown split {split!r}; allowed: {', '.join(datasets.SPLITS)}")


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
    runtime: Runtime = field(default_factory=Runtime)  # how the device is used; not part of any result's identity

    def endpoint_description(self, seed: int) -> dict[str, Any]:
        """Everything that determines one trained endpoint (hashed into its store key)."""
        return {"format": 1, "data": self.data.identity(), "model": asdict(self.model),
                "train": self.train.identity(), "seed": int(seed)}

    def endpoint_key(self, seed: int) -> str:
        """The endpoint's content key (its store key and MLflow ``trial_key``)."""
        return content_key(self.endpoint_description(seed))

    def identity(self) -> dict[str, Any]:
        """What determines a pair trial's results: hashed into its key (``study.sweep.spec.trial_key``).

        The recipes enter through :meth:`Recipe.identity` (settings that cannot change trained weights are
        pinned), and ``runtime`` (how the device is used) is left out, so a study resumed with another runtime
        setting or validation batch size continues instead of starting every trial again."""
        out = self.to_dict()
        out.pop("runtime")
        out["train"] = self.train.identity()
        if self.curve is not None:
            out["curve"]["train"] = self.curve.train.identity()
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
    if seeds[0] == seeds[1]:
        raise ConfigError(f"{path}.seeds must differ (two independently trained endpoints), got {list(seeds)}")
    recipe = lambda p, v: _wrap(p, Recipe.from_dict, v or {})  # noqa: E731
    device = config.get("device", "auto")
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ConfigError(f"{path}.device: unknown device {device!r}; allowed: {', '.join(DEVICES)}, cuda:N")
    curve = config.get("curve")
    return TrialConfig(
        data=_section(f"{path}.data", DataConfig, config.get("data")),
        model=_section(f"{path}.model", ModelConfig, config.get("model")),
        train=recipe(f"{path}.train", config.get("train")),
        seeds=(int(seeds[0]), int(seeds[1])),
        align=_section(f"{path}.align", AlignConfig, config.get("align")),
        curve=None if curve is None else _section(f"{path}.curve", CurveConfig, curve, {"train": recipe}),
        eval=_section(f"{path}.eval", EvalConfig, config.get("eval"),
                      {"attack": _attack, "robust_splits": lambda p, v: tuple(v)}),
        device=str(device),
        runtime=_section(f"{path}.runtime", Runtime, config.get("runtime")),
    )
