"""Symmetry-removal settings on offline data: endpoint accuracy vs the unaligned linear barrier.

    OMP_NUM_THREADS=1 python bench/wasym_sweep.py --grid mlp          # MLP: standard, old and new W-Asym defaults
    OMP_NUM_THREADS=1 python bench/wasym_sweep.py --grid tinyten      # TinyTen: n_fix fraction × κ
    OMP_NUM_THREADS=1 python bench/wasym_sweep.py --grid vgg          # VGG-11: a few TinyTen candidates
    OMP_NUM_THREADS=1 python bench/wasym_sweep.py --grid sigma        # σ-Asym TinyTen: FiGLU scale, depth
    OMP_NUM_THREADS=1 python bench/wasym_sweep.py --grid defaults     # the shipped defaults, every arch
    OMP_NUM_THREADS=1 python bench/wasym_sweep.py --grid forced       # asymmetric nets aligned anyway

Each row trains one or more seed pairs with the quickstart's endpoint recipe (SGD lr 0.05, momentum 0.9, wd 5e-4,
cosine, batch 64, no augmentation; ``--epochs``), then evaluates the linear path (``--points`` points, BN
recalibrated) without alignment and, for standard nets, after activation matching. Columns: endpoint test
accuracy (mean over both endpoints of every pair, ± std over endpoints), the unaligned linear test-loss barrier
(``barrier_chord/linear/test_loss``, mean ± std over pairs), the activation-aligned barrier (standard nets) or
the identity fraction of activation matching (asymmetric nets: the diagnostic), and the seconds per row.

This is how the TinyTen / VGG-11 W-Asym defaults (``study/core/models/convchain.py``) were chosen; the results
are in bench/RESULTS.md. The W-Asym settings are given as a fraction of each layer's fan-in and κ, turned into
the per-group ``n_fix``/``kappa`` options the models take (the same rule as the defaults).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.core import data as datasets  # noqa: E402
from study.core import models, trial  # noqa: E402
from study.core.models.layers import AsymLayerDefault, WAsymLayer  # noqa: E402


class MemoryCache:
    """An in-memory endpoint cache (the trial's EndpointCache protocol): each endpoint is trained once per run."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}

    def get_or_create(self, key: str, create: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]], *,
                      description: Mapping[str, Any]) -> tuple[Any, bool]:
        if key in self.entries:
            return self.entries[key], False
        state, metadata = create()

        @dataclass
        class Stored:
            state_dict: Mapping[str, torch.Tensor]
            metadata: dict[str, Any]

        self.entries[key] = Stored({k: v.clone() for k, v in state.items()}, dict(metadata))
        return self.entries[key], True


def wasym_options(arch: str, width: float, data: str, fraction: float, kappa: float,
                  head_fraction: float | None = None, head_kappa: float | None = None) -> dict[str, Any]:
    """Per-group ``n_fix``/``kappa`` for a ConvChain (TinyTen/VGG) with ``fraction`` of every conv's fan-in fixed."""
    shape, classes = datasets.shape_of(data)
    model = models.build(arch, num_classes=classes, in_shape=shape, width=width)
    n_fix, kappas = {}, {}
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        group = "head" if name == "head" else f"conv{name.split('.')[1]}"
        frac, kap = (head_fraction, head_kappa) if group == "head" else (fraction, kappa)
        frac = fraction if frac is None else frac
        kap = kappa if kap is None else kap
        fan_in = module.weight[0].numel()
        n_fix[group] = AsymLayerDefault(frac, kap).n_fix(fan_in, fan_in)
        kappas[group] = kap
    return {"n_fix": n_fix, "kappa": kappas}


@dataclass
class Setting:
    data: str
    arch: str
    width: float
    symmetry: str
    label: str
    options: dict[str, Any]


def grid(name: str) -> list[Setting]:
    out: list[Setting] = []
    if name == "mlp":
        for data in ("digits", "mnist1d"):
            first = 1
            for size in datasets.shape_of(data)[0]:
                first *= size
            for width in (0.25, 0.5):
                hidden = round(512 * width)
                clipped = lambda n, fan: n if n < fan else fan // 2  # noqa: E731  (the rule before issue 12)
                out.append(Setting(data, "mlp", width, "standard", "standard", {}))
                out.append(Setting(data, "mlp", width, "w_asym", "new default (fractions)", {}))
                old = {"layer0": clipped(64, first), "layer1": clipped(64, hidden), "layer2": clipped(64, hidden),
                       "output": clipped(256, hidden)}
                out.append(Setting(data, "mlp", width, "w_asym", "old default (clipped to fan-in // 2)",
                                   {"n_fix": old}))
                out.append(Setting(data, "mlp", width, "sigma_asym", "sigma (figlu_scale 1)", {}))
    elif name == "tinyten":
        data, arch, width = "digits", "tinyten", 0.5
        out.append(Setting(data, arch, width, "standard", "standard", {}))
        for fraction in (1 / 16, 1 / 8, 1 / 4):
            for kappa in (0.3, 1.0, 3.0):
                out.append(Setting(data, arch, width, "w_asym", f"fraction {fraction:.4g}, kappa {kappa:g}",
                                   wasym_options(arch, width, data, fraction, kappa, 1 / 8, kappa)))
    elif name == "vgg":
        data, arch, width = "digits", "vgg11", 0.125
        out.append(Setting(data, arch, width, "standard", "standard", {}))
        for fraction, kappa in ((1 / 8, 1.0), (1 / 8, 0.3), (1 / 4, 3.0)):
            out.append(Setting(data, arch, width, "w_asym", f"fraction {fraction:.4g}, kappa {kappa:g}",
                               wasym_options(arch, width, data, fraction, kappa, 1 / 8, kappa)))
    elif name == "sigma":
        for data, arch, width in (("digits", "mlp", 0.25), ("digits", "tinyten", 0.5)):
            out.append(Setting(data, arch, width, "standard", "standard", {}))
            for scale in (1.0, 4.0, 16.0):
                out.append(Setting(data, arch, width, "sigma_asym", f"figlu_scale {scale:g}",
                                   {"figlu_scale": scale}))
    elif name == "defaults":
        for data, arch, width in (("digits", "mlp", 0.25), ("mnist1d", "mlp", 0.25), ("digits", "tinyten", 0.5),
                                  ("digits", "tinyten", 1.0)):
            for symmetry in ("standard", "w_asym", "sigma_asym"):
                out.append(Setting(data, arch, width, symmetry, "default", {}))
    else:
        raise SystemExit(f"unknown grid {name!r}")
    return out


def describe_n_fix(setting: Setting) -> str:
    if setting.symmetry != "w_asym":
        return ""
    shape, classes = datasets.shape_of(setting.data)
    model = models.build(setting.arch, symmetry="w_asym", num_classes=classes, in_shape=shape, width=setting.width,
                         **setting.options)
    layers = [m for m in model.modules() if isinstance(m, WAsymLayer)]
    parts = [f"{m.n_fix}/{m.weight[0].numel()}" for m in layers]
    return " ".join(parts) if len(parts) <= 4 else f"{parts[0]} {parts[1]} … {parts[-1]}"


def run_setting(setting: Setting, pairs: list[tuple[int, int]], recipe: dict[str, Any], points: int,
                cache: MemoryCache) -> dict[str, Any]:
    start = time.perf_counter()
    accs, barriers, aligned, identity = [], [], [], []
    for seeds in pairs:
        base = {"data": {"name": setting.data},
                "model": {"arch": setting.arch, "width": setting.width, "symmetry": setting.symmetry,
                          "options": setting.options},
                "train": recipe, "seeds": list(seeds), "eval": {"points": points}, "device": "cpu"}
        m = trial.run({**base, "align": {"method": "none"}}, store=cache)["metrics"]
        accs += [m["endpoint_a/test_acc"], m["endpoint_b/test_acc"]]
        barriers.append(m["barrier_chord/linear/test_loss"])
        m = trial.run({**base, "align": {"method": "activation", "samples": 500}}, store=cache)["metrics"]
        if setting.symmetry == "standard":
            aligned.append(m["barrier_chord/linear/test_loss"])
        else:
            identity.append(m["align/identity_fraction"])

    def ms(values: list[float]) -> str:
        if not values:
            return ""
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    return {"acc": ms(accs), "barrier": ms(barriers), "aligned": ms(aligned) or (f"id {ms(identity)}" if identity else ""),
            "seconds": time.perf_counter() - start, "acc_mean": statistics.mean(accs),
            "barrier_mean": statistics.mean(barriers)}


def figlu_equivariance(scales: tuple[float, ...] = (1.0, 4.0, 16.0), channels: tuple[int, ...] = (8, 32, 256),
                       samples: int = 4096) -> None:
    """How far FiGLU is from commuting with a permutation, on BN-like inputs x ~ N(0, 1) (no training).

    ‖σ(Px) − Pσ(x)‖ / ‖σ(x)‖ for a uniformly random permutation P: 0 for any elementwise nonlinearity (a
    standard net keeps its symmetry), and the larger it is the more FiGLU breaks it. Also the share of σ(x)
    that is the symmetric, linear part x/2 (what FiGLU tends to as the scale goes to 0)."""
    from study.core.models.layers import FiGLU
    print("| C | figlu_scale | ‖σ(Px) − Pσ(x)‖ / ‖σ(x)‖ | ‖x/2‖ / ‖σ(x)‖ | corr(σ(x), x/2) |")
    print("|---:|---:|---:|---:|---:|")
    for c in channels:
        for scale in scales:
            gen = torch.Generator().manual_seed(0)
            layer = FiGLU(c, scale)
            layer.init_fixed(gen)
            x = torch.randn(samples, c, generator=gen)
            perm = torch.randperm(c, generator=gen)
            with torch.no_grad():
                out = layer(x)
                broken = (layer(x[:, perm]) - out[:, perm]).norm() / out.norm()
                half = (0.5 * x).norm() / out.norm()
                corr = torch.corrcoef(torch.stack([out.flatten(), 0.5 * x.flatten()]))[0, 1]
            print(f"| {c} | {scale:g} | {broken:.3f} | {half:.3f} | {corr:.3f} |")
    print()


def forced_alignment(pairs: list[tuple[int, int]], recipe: dict[str, Any], points: int, cache: MemoryCache) -> None:
    """Is a trained asymmetric net still (nearly) permutation-symmetric? Apply activation matching's permutations
    to B anyway (not a symmetry there: the fixed tensors stay) and measure what the trial never does: B's test
    accuracy after the permutation and the linear barrier from A to the permuted B. If the permuted B keeps its
    accuracy and the barrier drops as for a standard net, the symmetry removal left an approximate symmetry."""
    from study.core import align, metrics
    from study.core import permutation as P
    from study.core.config import parse
    from study.core.evaluate import evaluate, path_profile
    from study.core.paths import Path as WeightPath, trainable_state

    print("| data | arch | width | symmetry | options | acc B | acc π(B) | barrier A–B | barrier A–π(B) | "
          "identity fraction |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|")
    settings = [("digits", "mlp", 0.25, "sigma_asym", {}), ("digits", "tinyten", 0.5, "standard", {}),
                ("digits", "tinyten", 0.5, "sigma_asym", {}), ("digits", "tinyten", 0.5, "w_asym", {})]
    device = torch.device("cpu")
    for data_name, arch, width, symmetry, options in settings:
        for seeds in pairs:
            cfg = parse({"data": {"name": data_name}, "model": {"arch": arch, "width": width, "symmetry": symmetry,
                                                                "options": options},
                         "train": recipe, "seeds": list(seeds), "device": "cpu"})
            data = trial.load_data(cfg, device)
            (a, _), (b, _) = (trial.endpoint(cfg, data, s, device, store=cache) for s in seeds)
            inputs = data.batch("train", slice(0, 500))[0]
            result = align.match(a, b, method="activation", data=inputs)
            permuted = P.apply(b, result.perms)
            row = []
            for other in (b, permuted):
                row.append(evaluate(other, data, "test")["acc"])
            for other in (b, permuted):
                path = WeightPath(trainable_state(a), trainable_state(other), kind="linear")
                profile = path_profile(a, path, data, points=points)
                row.append(metrics.summarize(profile, "linear")["barrier_chord/linear/test_loss"])
            print(f"| {data_name} | {arch} | {width:g} | {symmetry} | {options or 'default'} | {row[0]:.3f} | "
                  f"{row[1]:.3f} | {row[2]:.3f} | {row[3]:.3f} | {result.diagnostics['identity_fraction']:.3f} |",
                  flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=["mlp"], help="mlp, tinyten, vgg, sigma, defaults, forced")
    parser.add_argument("--pairs", type=int, default=2, help="seed pairs per row: (0, 1), (2, 3), ...")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--points", type=int, default=9)
    parser.add_argument("--only", default=None, help="run only rows whose label contains this text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = {"epochs": args.epochs, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "augment": False}
    pairs = [(2 * i, 2 * i + 1) for i in range(args.pairs)]
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()} CPU, 1 thread; "
          f"torch {torch.__version__}; command: OMP_NUM_THREADS=1 python bench/wasym_sweep.py {' '.join(sys.argv[1:])}")
    print(f"recipe: {recipe}; seed pairs {pairs}; {args.points} points\n")
    if set(args.grid) - {"forced"}:
        print("| data | arch | width | symmetry | setting | n_fix/fan-in per layer | endpoint test acc | "
              "unaligned barrier | aligned barrier / identity | s |")
        print("|---|---|---:|---|---|---|---:|---:|---:|---:|")
    if "sigma" in args.grid:
        figlu_equivariance()
    cache = MemoryCache()  # endpoints shared by every grid of this run (the standard rows repeat)
    for name in args.grid:
        if name == "forced":
            forced_alignment(pairs, recipe, args.points, cache)
            continue
        for setting in grid(name):
            if args.only and args.only not in setting.label and setting.symmetry != "standard":
                continue
            r = run_setting(setting, pairs, recipe, args.points, cache)
            print(f"| {setting.data} | {setting.arch} | {setting.width:g} | {setting.symmetry} | {setting.label} | "
                  f"{describe_n_fix(setting)} | {r['acc']} | {r['barrier']} | {r['aligned']} | {r['seconds']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
