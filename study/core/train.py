"""The one training loop: endpoints now, path ("curve") modules later.

It is generic over any ``nn.Module`` that maps a batch of [0, 1] inputs to logits, so a curve module whose
forward samples a point on a path trains with the same code; ``extra_loss`` and ``parameters`` are the two hooks
such a module needs (its own weight-norm term, and training only the bends).

Two properties matter more than speed tricks here:
- Reproducibility: data order, augmentation and attack starts all come from one ``torch.Generator`` seeded
  with ``seed`` on the data's device, so the same recipe and seed on CPU gives bit-identical weights.
- No host stalls: losses and accuracies are summed on the device and read once per epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter
from torch.optim.lr_scheduler import LambdaLR

from study.core.runtime import Runtime, mixed_precision
from study.core.attacks import AttackConfig, pgd
from study.core.data import Dataset
from study.core.evaluate import EVAL_BATCH_SIZE, evaluate
from study.common.validation import check_choice, check_number, reject_unknown_keys

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine")

# Limits past which a value is a typo, refused before any compute: schedules in the literature run a few hundred
# to a few thousand epochs, so 100,000 (per endpoint, and every study trains many) is beyond any budget, and a
# batch of 2**20 CIFAR images with its activations fits on no device.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 2**20

# Offsets the robust-evaluation generator's seed from the training generator's, so the attack's random
# starts at evaluation time neither consume nor mirror the training stream.
_EVAL_SEED_OFFSET = 0x9E3779B97F4A7C15


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss; raised so a sweep can record the trial as failed, not hang on NaNs."""


@dataclass(frozen=True)
class Recipe:
    """Everything about how a model is trained, except the model, the data and the seed.

    ``to_dict`` is JSON-safe and stable (numbers normalised to float/int, a disabled attack stored as ``None``);
    ``identity`` is the part of it hashed to identify trained endpoints (only what can change the weights).
    Notes on fields:
    - ``momentum``/``nesterov`` apply to SGD only; AdamW uses its default betas (nesterov=True with AdamW is
      rejected rather than silently ignored).
    - ``warmup_epochs`` may be fractional; ``step_milestones`` are fractions of all training steps.
    - ``attack``: Madry adversarial training, the loss is computed on PGD examples only (drawn in train mode,
      without touching BatchNorm running statistics). ``AttackConfig(eps=0)`` is normalised to ``None``.
    - ``bf16`` autocasts forward passes to bfloat16 on CUDA only; on CPU it is ignored.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_milestones: tuple[float, ...] = (0.5, 0.75)
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    attack: AttackConfig | None = None
    augment: bool = True
    bf16: bool = True
    eval_batch_size: int = EVAL_BATCH_SIZE

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:  # normalised values on a frozen dataclass
            object.__setattr__(self, name, value)

        for name, high in (("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH_SIZE), ("eval_batch_size", MAX_BATCH_SIZE)):
            _check_number(name, getattr(self, name), integer=True, low=1)
            if getattr(self, name) > high:
                raise ValueError(f"Recipe.{name} must be an integer in [1, {high}], got {getattr(self, name)!r}")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        set_("lr", _check_number("lr", self.lr, low=0, low_open=True))
        set_("momentum", _check_number("momentum", self.momentum, low=0, high=1, high_open=True))
        set_("weight_decay", _check_number("weight_decay", self.weight_decay, low=0))
        set_("warmup_epochs", _check_number("warmup_epochs", self.warmup_epochs, low=0, high=self.epochs))
        set_("step_gamma", _check_number("step_gamma", self.step_gamma, low=0, high=1, low_open=True))
        set_("label_smoothing", _check_number("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True))
        for name in ("nesterov", "augment", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Recipe.{name} must be True or False, got {getattr(self, name)!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError(
                f"Recipe.nesterov=True needs optimizer='sgd' with momentum > 0, got optimizer={self.optimizer!r}, "
                f"momentum={self.momentum!r}"
            )
        set_("step_milestones", _check_milestones(self.step_milestones))
        if self.attack is not None and not isinstance(self.attack, AttackConfig):
            raise ValueError(f"Recipe.attack must be an AttackConfig or None, got {self.attack!r}")
        if self.attack is not None and self.attack.disabled:
            set_("attack", None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """Build from a plain mapping (YAML/JSON/search space); ``attack`` may be a nested mapping."""
        reject_unknown_keys("Recipe", d, [f.name for f in fields(cls)])
        kwargs = dict(d)
        attack = kwargs.get("attack")
        if isinstance(attack, Mapping):
            reject_unknown_keys("Recipe.attack", attack, [f.name for f in fields(AttackConfig)])
            kwargs["attack"] = AttackConfig(**attack)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict that ``from_dict`` turns back into an equal recipe."""
        d = asdict(self)
        d["step_milestones"] = list(self.step_milestones)
        return d

    def identity(self) -> dict[str, Any]:
        """What of the recipe determines the trained weights: part of an endpoint's store key.

        ``to_dict`` with every setting that training cannot read pinned to its default (pinned rather than
        dropped, so the keys of recipes that already used the defaults, and the endpoints stored under them,
        stay valid), hence two recipes that train the same weights share a key:
        - ``eval_batch_size``: only the per-epoch val pass uses it, and that pass changes neither the weights
          nor BN statistics (eval mode) nor the training random stream (it has its own generator);
        - ``step_milestones``, ``step_gamma``: read by the ``step`` schedule only;
        - ``momentum``, ``nesterov``: SGD only (AdamW uses its default betas);
        - ``attack.alpha``: ``None`` means ``eps / 4``, so it is stored as the step size actually taken.
        Everything else can change the weights (``bf16`` included: it is ignored on CPU but not on CUDA).
        """
        defaults = Recipe()
        pinned: dict[str, Any] = {"eval_batch_size": defaults.eval_batch_size}
        if self.schedule != "step":
            pinned.update(step_milestones=defaults.step_milestones, step_gamma=defaults.step_gamma)
        if self.optimizer != "sgd":
            pinned.update(momentum=defaults.momentum, nesterov=defaults.nesterov)
        d = asdict(self) | pinned
        d["step_milestones"] = list(d["step_milestones"])
        if self.attack is not None and self.attack.alpha is not None and self.attack.alpha == self.attack.eps / 4:
            d["attack"] = {**d["attack"], "alpha": None}
        return d


@dataclass
class TrainResult:
    """The trained model (same object as passed in, left in eval mode) and one metrics dict per epoch."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_schedule(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier as a function of the optimizer step (0-based): linear warmup, then constant/step/cosine.

    Per step rather than per epoch so that short runs (a few epochs on a toy set) still get a smooth cosine and
    fractional warmups. Warmup ramps ``1/W, 2/W, ..., 1``; the cosine then decays from 1 towards 0 over the
    remaining steps (the last step's factor is small but positive); step decay multiplies by ``step_gamma`` at
    each milestone (a fraction of all steps).
    """
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    milestones = [round(m * total) for m in recipe.step_milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.schedule == "constant":
            return 1.0
        if recipe.schedule == "step":
            return recipe.step_gamma ** sum(step >= m for m in milestones)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    *,
    seed: int,
    device: torch.device | str | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    extra_loss: Callable[[], Tensor] | None = None,
    parameters: Iterable[Parameter] | None = None,
    before_step: Callable[[], None] | None = None,
    validate: bool = True,
    resume: Mapping[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Train ``model`` on ``data``'s train split with ``recipe``; evaluate on val after every epoch.

    ``device`` defaults to the data's device; data and model are moved there. ``extra_loss()`` is added to each
    step's loss (evaluated outside autocast, in full precision). ``parameters`` restricts what is optimised
    (default: all of the model's parameters that require grad); weight decay applies to all of them.
    ``before_step()`` runs before each minibatch (a curve draws its t there, so a PGD attack on the batch
    attacks the same θ(t) that is trained). ``validate=False`` skips the per-epoch val pass (a curve's val
    metrics at one random t mean little).
    ``checkpoint(state)`` is called after every epoch with everything needed to continue (weights, optimizer,
    schedule, random generators, history); ``train(..., resume=state)`` continues from it and gives the same
    weights as an uninterrupted run. The state is plain tensors and numbers (loadable with weights_only=True).
    ``callback`` gets each epoch's metrics dict, which is also appended to ``history``: ``epoch, step, lr``
    (the LR of the epoch's last step), ``train_loss, train_acc`` (running averages of the optimised cross-entropy
    over the epoch, on PGD examples under an attack, with label smoothing), ``val_loss, val_acc``,
    ``val_robust_loss, val_robust_acc`` (with an attack), ``train_objective`` (with ``extra_loss``), ``seconds``
    (wall time of the epoch, validation included). The model is left in eval mode. ``runtime`` picks the memory
    format and compilation (:class:`study.core.runtime.Runtime`; default: its per-device defaults).
    Raises ``DivergenceError`` when an epoch's loss is not finite.
    """
    device = torch.device(device) if device is not None else data.device
    data = data.to(device)
    n = data.size("train")
    net = (runtime or Runtime()).prepare(model, device, images=n * recipe.epochs)  # model, or a compiled model
    if n == 0:
        raise ValueError(f"data set {data.name!r} has an empty train split")
    params = [p for p in (model.parameters() if parameters is None else parameters) if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: all of them have requires_grad=False")
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    optimizer = _make_optimizer(params, recipe)
    scheduler = LambdaLR(optimizer, lr_schedule(recipe, steps_per_epoch))
    generator = torch.Generator(device=device).manual_seed(seed)
    eval_generator = torch.Generator(device=device).manual_seed((seed + _EVAL_SEED_OFFSET) % 2**63)
    history: list[dict[str, Any]] = []
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"].to("cpu"))
        eval_generator.set_state(resume["eval_generator"].to("cpu"))
        history = [dict(h) for h in resume["history"]]
        first_epoch = int(resume["epoch"]) + 1
        logger.info("resuming training after epoch %d of %d", first_epoch - 1, recipe.epochs)
    runtime = runtime or Runtime()  # its scope says whether CPU bf16 autocast applies (the fast profile)
    for epoch in range(first_epoch, recipe.epochs + 1):
        start = time.perf_counter()
        with runtime.scope(device, training=True):
            sums, lr = _train_epoch(net, data, recipe, optimizer, scheduler, generator, extra_loss, before_step)
        train_loss, train_acc, train_objective = (s / n for s in sums.tolist())  # the epoch's one host sync
        if not math.isfinite(train_objective):
            raise DivergenceError(
                f"training diverged in epoch {epoch}/{recipe.epochs}: mean train objective is {train_objective} "
                f"(optimizer={recipe.optimizer!r}, lr={recipe.lr:g}, warmup_epochs={recipe.warmup_epochs:g}); "
                f"try a lower lr (e.g. {recipe.lr / 10:g}) or a warmup"
            )
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
        }
        if extra_loss is not None:
            metrics["train_objective"] = train_objective
        if validate:
            with runtime.scope(device, training=True):  # the val pass sees the weights as trained
                metrics.update(_validate(net, data, recipe, device, eval_generator))
        metrics["seconds"] = time.perf_counter() - start
        logger.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        history.append(metrics)
        if callback is not None:
            callback(metrics)
        if checkpoint is not None:
            checkpoint({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                        "eval_generator": eval_generator.get_state(), "history": history})
    model.eval()
    return TrainResult(model=model, history=history)


def _train_epoch(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    generator: torch.Generator,
    extra_loss: Callable[[], Tensor] | None,
    before_step: Callable[[], None] | None,
) -> tuple[Tensor, float]:
    """One pass over the train split in a seeded random order.

    Returns device-side sums ``[cross-entropy, correct, objective]`` over samples (read by the caller once) and
    the LR used by the last step.
    """
    model.train()
    n, device = data.size("train"), data.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    lr = optimizer.param_groups[0]["lr"]
    for index in torch.randperm(n, generator=generator, device=device).split(recipe.batch_size):
        x, y = data.batch("train", index, augment=recipe.augment, generator=generator)
        if before_step is not None:
            before_step()
        with mixed_precision(device, recipe.bf16):
            if recipe.attack is not None:
                x = pgd(model, x, y, recipe.attack, generator=generator)
            logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        objective = loss + extra_loss() if extra_loss is not None else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        batch = y.shape[0]
        correct = (logits.detach().argmax(dim=1) == y).sum().double()
        sums += torch.stack([loss.detach().double() * batch, correct, objective.detach().double() * batch])
    return sums, lr


def _validate(
    model: nn.Module, data: Dataset, recipe: Recipe, device: torch.device, generator: torch.Generator
) -> dict[str, float]:
    """Clean val metrics, plus robust ones under the training attack when there is one."""
    runs = {"val": None} if recipe.attack is None else {"val": None, "val_robust": recipe.attack}
    out: dict[str, float] = {}
    with mixed_precision(device, recipe.bf16):
        for prefix, attack in runs.items():
            result = evaluate(model, data, "val", batch_size=recipe.eval_batch_size, attack=attack, generator=generator)
            out[f"{prefix}_loss"], out[f"{prefix}_acc"] = result["loss"], result["acc"]
    return out


def _make_optimizer(params: list[Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay
        )
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


# --- validation helpers -------------------------------------------------------------------------------------------


def _check_number(name: str, value: Any, **bounds: Any) -> Any:
    return check_number(f"Recipe.{name}", value, **bounds)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    check_choice(f"Recipe.{name}", value, allowed)


def _check_milestones(milestones: Any) -> tuple[float, ...]:
    """Milestones as a tuple of strictly increasing fractions in (0, 1) (lists from YAML become tuples)."""
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
        raise ValueError(f"Recipe.step_milestones must be a sequence of fractions in (0, 1), got {milestones!r}")
    values = tuple(
        _check_number("step_milestones[]", m, low=0, high=1, low_open=True, high_open=True) for m in milestones
    )
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"Recipe.step_milestones must be strictly increasing, got {list(values)}")
    return values


