"""The benchmark suite: throughput, pair-trial seconds, achieved TFLOP/s, and the speed-up over the
straightforward fp32 DataLoader baseline (bench/baseline_trial.py), all measured in one run.

    python bench/suite.py [--device cuda|cpu] [--archs tinyten resnet20 resnet32] [--n-train 50000]
                          [--n-test 10000] [--epochs 10] [--points 25] [--repeats 1] [--skip-baseline]
                          [--quickstart-cpu]

Workload: synthetic CIFAR-shaped data (3×32×32, 10 classes, offline, no augmentation), batch 128, SGD momentum
0.9, lr 0.05, cosine. Per architecture it prints
- images/s of endpoint training (clean), curve fitting (3-bend Bezier) and PGD training (5 L∞ steps), each an
  epoch over ``--tp-samples`` images after a short warm-up, through ``study.core.train`` (curve: ``trial.fit_curve``);
- achieved TFLOP/s of endpoint training (FLOPs of one training step counted with ``FlopCounterMode``, times the
  images trained, over the time) and, on CUDA, its share of the device's dense bf16 peak;
- seconds of one pair trial through ``study.core.trial.run`` (2 endpoints × E epochs, activation alignment on up to
  10k images, 3-bend Bezier curve E epochs, ``--points`` points on the linear path and on the curve, each with
  BN recalibration over the training set) with its per-phase split;
- the baseline's seconds for the same trial and the ratio baseline/ours.
and ends with Markdown tables for bench/RESULTS.md. On CPU, small defaults are used unless given explicitly.
``--repeats N`` keeps the fastest of N interleaved runs of everything timed (shared machines are noisy: on the
2-core development machine one phase once took 12× its usual time). The CUDA defaults run the baseline for
several minutes per architecture (the issue measured 317–355 s for TinyTen, 784–818 s for ResNet-32 on an H100).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baseline_trial  # noqa: E402  (bench/ is not a package)
import equal_work  # noqa: E402

from study.core import config as trial_config, data as datasets, models
from study.core import trial  # noqa: E402
from study.core.attacks import AttackConfig  # noqa: E402
from study.core.paths import trainable_state  # noqa: E402
from study.core.runtime import mixed_precision  # noqa: E402
from study.core.train import Recipe, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IN_SHAPE = (3, 32, 32)
BATCH = 128
DEFAULTS = {"cuda": {"n_train": 50000, "n_test": 10000, "epochs": 10, "points": 25, "tp_samples": 10240},
            "cpu": {"n_train": 2000, "n_test": 500, "epochs": 1, "points": 5, "tp_samples": 1024}}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched against torch.cuda.get_device_name in order.
PEAKS_BF16 = (("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAKS_BF16 if key.lower() in device_name.lower()), None)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return model


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"


def trial_dict(arch: str, args: argparse.Namespace, device: torch.device, *, epochs: int | None = None,
               profile: str | None = None) -> dict:
    """The pair-trial config every measurement here shares (the baseline mirrors it); ``profile``: the
    ``trial.runtime.profile`` (default: the first of ``--profiles``)."""
    recipe = {"epochs": epochs or args.epochs, "batch_size": BATCH, "augment": False}
    return {"data": {"name": "synthetic", "val_fraction": 0.0,
                     "options": {"in_shape": list(IN_SHAPE), "n_train": args.n_train, "n_test": args.n_test}},
            "model": {"arch": arch}, "train": recipe, "seeds": [0, 1],
            "align": {"method": "activation", "samples": args.align_samples},
            "curve": {"kind": "bezier", "bends": 3, "train": recipe}, "eval": {"points": args.points},
            "device": str(device), "runtime": runtime_overrides(args, profile)}


def runtime_overrides(args: argparse.Namespace, profile: str | None = None) -> dict:
    """``trial.runtime`` from the command line (unset switches keep their per-device defaults)."""
    chosen = {"parallel_points": args.parallel_points, "channels_last": args.channels_last, "compile": args.compile,
              "cpu_bf16": args.cpu_bf16, "profile": profile or args.profiles[0]}
    return {k: v for k, v in chosen.items() if v is not None}


def build(arch: str, data: datasets.Dataset, seed: int, device: torch.device) -> torch.nn.Module:
    return models.build(arch, num_classes=data.num_classes, in_shape=data.in_shape, seed=seed, mean=data.mean,
                        std=data.std).to(device)


def head(data: datasets.Dataset, n: int) -> datasets.Dataset:
    """The first ``n`` training images only (val is empty here; test is unused by training)."""
    return replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])


def train_flops_per_image(arch: str, data: datasets.Dataset, device: torch.device) -> float:
    """FLOPs of one training step (forward + backward, as trained: bf16 autocast on CUDA) per image."""
    model = build(arch, data, 0, device).train()
    x, y = data.batch("train", slice(0, BATCH))
    with FlopCounterMode(display=False) as counter:
        with mixed_precision(device, True):
            logits = model(x).float()
        F.cross_entropy(logits, y).backward()
    return counter.get_total_flops() / len(y)


def throughput(arch: str, data: datasets.Dataset, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s of an epoch over ``tp_samples`` images after a two-batch warm-up epoch of the same kind; the
    fastest of ``--repeats`` epochs."""
    n = args.tp_samples
    warm, timed = head(data, min(2 * BATCH, n)), head(data, n)
    clean = Recipe(epochs=args.repeats, batch_size=BATCH, augment=False)
    best = lambda history: min(h["seconds"] for h in history)  # noqa: E731
    robust = replace(clean, attack=AttackConfig(eps=8 / 255, steps=args.pgd_steps))
    out = {}
    for name, recipe in (("endpoint", clean), ("pgd", robust)):
        model = build(arch, data, 0, device)
        train(model, warm, replace(recipe, epochs=1), seed=0, device=device)
        out[name] = n / best(train(model, timed, recipe, seed=1, device=device).history)
    a, b = build(arch, data, 0, device), build(arch, data, 1, device)
    theta_a, theta_b = trainable_state(a), trainable_state(b)
    for subset, epochs in ((warm, 1), (timed, args.repeats)):
        cfg = trial_config.parse(trial_dict(arch, args, device, epochs=epochs))
        history = trial.fit_curve(cfg, a, theta_a, theta_b, subset, device)[1]
    out["curve"] = n / best(history)
    return out


def split(timings: dict[str, float]) -> str:
    return " / ".join(f"{timings.get(k, 0.0):.1f}" for k in ("setup", "endpoints", "align", "curve", "eval"))


def quickstart_seconds() -> tuple[float, int]:
    """Wall seconds of ``study run searchspaces/quickstart.yaml`` into a temporary folder, and its exit code."""
    exe = Path(sys.executable).with_name("study")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "study.cli"]
    with tempfile.TemporaryDirectory(prefix="symstudy-bench-") as out:
        start = time.perf_counter()
        code = subprocess.run([*command, "run", str(REPO / "searchspaces" / "quickstart.yaml"), "--out", out,
                               "--quiet"], cwd=REPO, stdout=subprocess.DEVNULL).returncode
        return time.perf_counter() - start, code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=["tinyten", "resnet20", "resnet32"], choices=models.available())
    parser.add_argument("--n-train", type=int, help="training images (CUDA default 50000, CPU 2000)")
    parser.add_argument("--n-test", type=int, help="test images (CUDA default 10000, CPU 500)")
    parser.add_argument("--epochs", type=int, help="epochs per endpoint and for the curve (CUDA 10, CPU 1)")
    parser.add_argument("--points", type=int, help="evaluation points per path (CUDA 25, CPU 5)")
    parser.add_argument("--tp-samples", type=int, help="images per timed throughput epoch (CUDA 10240, CPU 1024)")
    parser.add_argument("--align-samples", type=int, default=10000, help="alignment images (capped at n_train)")
    parser.add_argument("--pgd-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each pair trial (ours and the baseline, interleaved) and each timed throughput "
                             "epoch this many times and keep the fastest: for noisy, shared machines")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the fp32 DataLoader baseline")
    parser.add_argument("--parallel-points", type=int, help="trial.runtime.parallel_points (default: per device)")
    parser.add_argument("--channels-last", type=lambda v: {"true": True, "false": False}.get(v.lower(), v.lower()),
                        choices=[True, False, "eval", "auto"],
                        help="trial.runtime.channels_last: true/false/eval/auto (default: auto, per device and profile)")
    parser.add_argument("--compile", action="store_const", const=True, help="trial.runtime.compile = true")
    parser.add_argument("--cpu-bf16", type=lambda v: {"true": True, "false": False}.get(v.lower(), v.lower()),
                        choices=[True, False, "eval", "auto"],
                        help="trial.runtime.cpu_bf16: true/false/eval/auto (default: auto, i.e. per profile)")
    parser.add_argument("--quickstart-cpu", action="store_true",
                        help="also time `study run searchspaces/quickstart.yaml` (CPU, a few minutes)")
    parser.add_argument("--equal-work", action="store_true",
                        help="only the reference's pair trial (bench/equal_work.py) against the baseline doing the "
                             "same work, phase by phase, for each --profiles; no throughput section")
    parser.add_argument("--profiles", nargs="+", default=["default"], choices=["default", "fast"],
                        help="trial.runtime.profile values to time (the first one in the ordinary mode)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    for key in ("n_train", "n_test", "epochs", "tp_samples", "align_samples", "pgd_steps", "repeats"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.points is not None and args.points < 3:
        parser.error("--points must be >= 3")
    device = trial.resolve_device(args.device)
    defaults = DEFAULTS[device.type]
    filled = [k for k in defaults if getattr(args, k) is None]
    for key in filled:
        setattr(args, key, defaults[key])
    # whole batches only, so the timed epoch has no short last batch (unless the data set itself is smaller)
    args.tp_samples = min(max(BATCH, args.tp_samples // BATCH * BATCH), args.n_train)

    name = device_name(device)
    peak = peak_tflops(name) if device.type == "cuda" else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    align_n = min(args.align_samples, args.n_train)
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    print(f"# symstudy benchmark suite, {stamp}")
    print(f"device: {name}; torch {torch.__version__}; python {platform.python_version()}")
    command = shlex.join(["python", *sys.argv] if argv is None else ["python", "bench/suite.py", *argv])
    print(f"command: {command}")
    print(f"workload: synthetic 3x32x32, 10 classes, {args.n_train} train / {args.n_test} test images, batch "
          f"{BATCH}, no augmentation; pair trial = 2 endpoints x {epochs}, activation alignment on "
          f"{align_n} images, 3-bend Bezier {epochs}, "
          + (f"{args.points} points on the curve, each a BN recalibration over the training set + one test pass "
             f"(the reference's trial, bench/equal_work.py)" if args.equal_work else
             f"{args.points} points on the linear path and on the curve with BN recalibration at each")
          + (f"; fastest of {args.repeats} runs each" if args.repeats > 1 else ""))
    runtime = trial_config.parse(trial_dict(args.archs[0], args, device)).runtime
    print(f"runtime: {runtime}; points evaluated together: {runtime.points_together(device, args.points)}")
    if filled and device.type == "cpu":
        print("note: CPU defaults applied (" + ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}" for k in filled)
              + "); pass them explicitly to override")
    peak_text = f"{peak:.0f} TFLOP/s bf16 dense" if peak else "peak unknown"
    print(f"peak: {'n/a on CPU' if device.type == 'cpu' else peak_text}")

    if args.equal_work:
        return equal_work_mode(args, device, name, stamp, command)

    rows = []
    for arch in args.archs:
        data = datasets.load("synthetic", in_shape=IN_SHAPE, n_train=args.n_train, n_test=args.n_test,
                             val_fraction=0.0, device=device)
        params = models.count_parameters(build(arch, data, 0, device))["trainable"]
        flops = train_flops_per_image(arch, data, device)
        print(f"\n## {arch}: {params / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOP per training image")
        speed = throughput(arch, data, args, device)
        del data
        tflops = flops * speed["endpoint"] / 1e12
        share = f"{100 * tflops / peak:.1f}%" if peak else ("n/a" if device.type == "cpu" else "peak unknown")
        print(f"throughput ({args.tp_samples} images/epoch): endpoint {speed['endpoint']:.0f} img/s | curve "
              f"{speed['curve']:.0f} img/s | PGD-{args.pgd_steps} {speed['pgd']:.0f} img/s")
        print(f"endpoint training: {tflops:.3f} TFLOP/s achieved ("
              + (f"{share} of the {peak:.0f} TFLOP/s bf16 dense peak)" if peak else f"{share})"))

        results, bases = [], []
        for _ in range(args.repeats):  # interleaved, so a slow spell on a shared machine hits both alike
            results.append(trial.run(trial_dict(arch, args, device)))
            if not args.skip_baseline:
                bases.append(baseline_trial.run(arch, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
                                                points=args.points, align_samples=args.align_samples, device=device))
        result = min(results, key=lambda r: sum(r["timings"].values()))
        ours, metrics = result["timings"], result["metrics"]
        total = sum(ours.values())
        acc = (metrics["endpoint_a/test_acc"], metrics["endpoint_b/test_acc"])
        in_trial = flops * 2 * args.epochs * args.n_train / ours["endpoints"] / 1e12
        print(f"pair trial (ours, trial.run): {total:.2f} s = " + " + ".join(
            f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in ours.items()))
        print(f"  endpoint test acc {acc[0]:.3f} / {acc[1]:.3f}; endpoint phase {in_trial:.3f} TFLOP/s")
        row = {"arch": arch, "params": params, "flops": flops, **speed, "tflops": tflops, "share": share,
               "ours": total, "ours_split": split(ours), "acc": acc, "base": None}
        if bases:
            base = min(bases, key=lambda r: sum(r["timings"].values()))
            b_total = sum(base["timings"].values())
            b_acc = (base["metrics"]["endpoint_a/test_acc"], base["metrics"]["endpoint_b/test_acc"])
            print(f"pair trial (baseline, fp32 DataLoader): {b_total:.2f} s = " + " + ".join(
                f"{k} {v:.2f} s ({100 * v / b_total:.0f}%)" for k, v in base["timings"].items()))
            print(f"  endpoint test acc {b_acc[0]:.3f} / {b_acc[1]:.3f}")
            print(f"ratio baseline/ours: {b_total / total:.2f}x")
            row.update(base=b_total, base_split=split(base["timings"]), base_acc=b_acc)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    quickstart = quickstart_seconds() if args.quickstart_cpu else None
    if quickstart is not None:
        print(f"\nquickstart: `study run searchspaces/quickstart.yaml` {quickstart[0]:.1f} s wall "
              f"(exit {quickstart[1]})")

    print(f"\n### Markdown ({stamp}, {name}, torch {torch.__version__})\n")
    print(f"`{command}`\n")
    print("| arch | params | GFLOP/img (train) | endpoint img/s | curve img/s | PGD-%d img/s | endpoint TFLOP/s | "
          "of peak |" % args.pgd_steps)
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arch']} | {r['params'] / 1e6:.2f} M | {r['flops'] / 1e9:.3f} | {r['endpoint']:,.0f} | "
              f"{r['curve']:,.0f} | {r['pgd']:,.0f} | {r['tflops']:.3f} | {r['share']} |")
    print("\n| arch | pair trial, ours | setup / endpoints / align / curve / eval | baseline (fp32 DataLoader) | "
          "setup / endpoints / align / curve / eval | baseline/ours | endpoint test acc ours; baseline |")
    print("|---|---:|---|---:|---|---:|---|")
    for r in rows:
        acc = f"{r['acc'][0]:.3f}, {r['acc'][1]:.3f}"
        if r["base"] is None:
            print(f"| {r['arch']} | {r['ours']:.1f} s | {r['ours_split']} | skipped | | n/a | {acc} |")
        else:
            print(f"| {r['arch']} | {r['ours']:.1f} s | {r['ours_split']} | {r['base']:.1f} s | {r['base_split']} | "
                  f"{r['base'] / r['ours']:.2f}x | {acc}; {r['base_acc'][0]:.3f}, {r['base_acc'][1]:.3f} |")
    if quickstart is not None:
        print(f"\nQuickstart study (`study run searchspaces/quickstart.yaml`, CPU): {quickstart[0]:.1f} s wall"
              + ("" if quickstart[1] == 0 else f" (exit {quickstart[1]})"))
    write_json(args.json, {"mode": "suite", "date": stamp, "device": name, "torch": torch.__version__,
                           "command": command, "rows": rows})
    return 0


def write_json(path: Path | None, summary: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"\nJSON: {path}")


PHASES = ("setup", "endpoints", "align", "curve", "eval")


def equal_work_mode(args: argparse.Namespace, device: torch.device, name: str, stamp: str, command: str) -> int:
    """The reference's pair trial per architecture: ours under each runtime profile and the baseline, interleaved
    ``--repeats`` times (fastest kept), seconds by phase and ratios baseline/ours, in one run."""
    rows = []
    for arch in args.archs:
        ours: dict[str, list[dict]] = {profile: [] for profile in args.profiles}
        bases: list[dict] = []
        # Warm-up at a tiny size (kernel selection, allocator, lazy imports): whoever ran first paid for it.
        tiny = argparse.Namespace(**{**vars(args), "n_train": 2 * BATCH, "n_test": BATCH, "epochs": 1, "points": 3})
        for profile in args.profiles:
            equal_work.run(trial_dict(arch, tiny, device, profile=profile))
        if not args.skip_baseline:
            baseline_trial.run(arch, n_train=tiny.n_train, n_test=tiny.n_test, epochs=1, points=3,
                               align_samples=tiny.align_samples, device=device, equal_work=True)
        for _ in range(args.repeats):
            for profile in args.profiles:
                ours[profile].append(equal_work.run(trial_dict(arch, args, device, profile=profile)))
            if not args.skip_baseline:
                bases.append(baseline_trial.run(arch, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
                                                points=args.points, align_samples=args.align_samples, device=device,
                                                equal_work=True))
        fastest = lambda results: min(results, key=lambda r: sum(r["timings"].values()))  # noqa: E731
        base = fastest(bases) if bases else None
        print(f"\n## {arch}: equal-work pair trial")
        if base is not None:
            print(f"baseline (fp32 DataLoader): {sum(base['timings'].values()):.2f} s = " + " + ".join(
                f"{k} {base['timings'][k]:.2f}" for k in PHASES) + "; " + _metrics_text(base["metrics"]))
        for profile, results in ours.items():
            result = fastest(results)
            total = sum(result["timings"].values())
            row = {"arch": arch, "profile": profile, "ours_seconds": total, "metrics": result["metrics"],
                   "phases": {k: {"ours": result["timings"][k]} for k in PHASES}, "baseline_seconds": None,
                   "ratio": None}
            overrides = {k: v for k, v in runtime_overrides(args, profile).items() if k != "profile"}
            row["runtime"] = overrides
            text = f"ours, profile {profile}{' ' + str(overrides) if overrides else ''}: {total:.2f} s = " + " + ".join(
                f"{k} {result['timings'][k]:.2f}" for k in PHASES) + "; " + _metrics_text(result["metrics"])
            if base is not None:
                b_total = sum(base["timings"].values())
                row.update(baseline_seconds=b_total, ratio=b_total / total, baseline_metrics=base["metrics"])
                for k in PHASES:
                    row["phases"][k].update(baseline=base["timings"][k],
                                            ratio=base["timings"][k] / max(result["timings"][k], 1e-9))
                text += f"\n  ratio baseline/ours: {b_total / total:.2f}x (" + ", ".join(
                    f"{k} {row['phases'][k]['ratio']:.2f}x" for k in PHASES if k != "setup") + ")"
            print(text)
            rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n### Markdown ({stamp}, {name}, torch {torch.__version__})\n")
    print(f"`{command}`\n")
    print("| arch | profile | ours | endpoints / align / curve / eval | baseline | endpoints / align / curve / eval | "
          "baseline/ours | by phase (endpoints, align, curve, eval) | Bezier barrier ours; baseline |")
    print("|---|---|---:|---|---:|---|---:|---|---|")
    for r in rows:
        ph = r["phases"]
        split_ours = " / ".join(f"{ph[k]['ours']:.1f}" for k in PHASES[1:])
        barrier = f"{r['metrics']['barrier_chord/bezier/test_loss']:.4f}"
        if r["baseline_seconds"] is None:
            print(f"| {r['arch']} | {r['profile']} | {r['ours_seconds']:.1f} s | {split_ours} | skipped | | n/a | | "
                  f"{barrier} |")
            continue
        split_base = " / ".join(f"{ph[k]['baseline']:.1f}" for k in PHASES[1:])
        by_phase = ", ".join(f"{ph[k]['ratio']:.2f}x" for k in PHASES[1:])
        print(f"| {r['arch']} | {r['profile']} | {r['ours_seconds']:.1f} s | {split_ours} | "
              f"{r['baseline_seconds']:.1f} s | {split_base} | **{r['ratio']:.2f}x** | {by_phase} | {barrier}; "
              f"{r['baseline_metrics']['barrier_chord/bezier/test_loss']:.4f} |")
    write_json(args.json, {"mode": "equal-work", "date": stamp, "device": name, "torch": torch.__version__,
                           "command": command, "rows": rows})
    return 0


def _metrics_text(metrics: dict[str, float]) -> str:
    return (f"endpoint test acc {metrics['endpoint_a/test_acc']:.3f} / {metrics['endpoint_b/test_acc']:.3f}, "
            f"Bezier test-loss barrier {metrics['barrier_chord/bezier/test_loss']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
