"""The founding papers' qualitative claims, measured on offline data: one row per claim, numbers and a verdict.

    python bench/science.py                   # every claim, 3 seed pairs (about 15-25 minutes on 2 CPU cores)
    python bench/science.py --quick           # small nets, 2 seed pairs: what tests/test_science.py runs
    python bench/science.py --claims width_effect --pairs 5 --json out.json

Each claim is a function registered in ``CLAIMS`` (bench/claims.py: settings, rows, running trials; the STE and
REPAIR claims live in bench/science_methods.py): it runs real trials (``study.core.trial.run``, endpoints shared
through one temporary endpoint store, so the unaligned and aligned variants of a pair compare the same two
trained networks) and returns a :class:`Row` with the means ± std over seed pairs and whether the paper's
inequality holds. A row that fails is a finding or a setting too small to show the effect; ``bench/RESULTS.md``
says which, it is not hidden.

Verdicts compare means (the claims are orderings, not significance tests); the numbers beside them show the
spread, so a reader can judge how firm each ordering is.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import (
    CLAIMS,
    LINEAR_LOSS,
    Row,
    Settings,
    claim,
    mean,
    measure,
    merged,
    stats,
)

from study.store.endpoints import EndpointStore


def _recipe(settings: Settings, *, epochs: int, quick_epochs: int, **kwargs: Any) -> dict[str, Any]:
    return {"epochs": quick_epochs if settings.quick else epochs, "batch_size": 64, "augment": False, **kwargs}


def _mlp(settings: Settings, width: float | None = None) -> dict[str, Any]:
    """Digits MLP with Lim et al.'s optimiser (AdamW) and LayerNorm/GELU (the architecture's defaults); 3×512
    units (3×128 with ``quick``) unless ``width`` says otherwise."""
    width = width if width is not None else (0.25 if settings.quick else 1.0)
    return {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": width},
            "train": _recipe(settings, epochs=30, quick_epochs=12, optimizer="adamw", lr=1e-3, weight_decay=1e-2,
                             schedule="cosine"),
            "align": {"samples": 1000}, "eval": {"points": 9 if settings.quick else 17}}


def _tinyten(settings: Settings, width: float) -> dict[str, Any]:
    return {"data": {"name": "digits"}, "model": {"arch": "tinyten", "width": width},
            "train": _recipe(settings, epochs=12, quick_epochs=6, lr=0.05, weight_decay=5e-4),
            "align": {"samples": 1000}, "eval": {"points": 9 if settings.quick else 13}}


@claim("lim_mlp_ordering")
def lim_mlp_ordering(settings: Settings) -> Row:
    """Lim et al.: W-Asym ≈ weight-matched < activation-matched < σ-Asym < standard unaligned (MLP)."""
    variants = {"w_asym": {"model": {"symmetry": "w_asym"}},
                "weight": {"align": {"method": "weight"}},
                "activation": {"align": {"method": "activation"}},
                "sigma_asym": {"model": {"symmetry": "sigma_asym"}},
                "standard": {}}
    values = measure(settings, _mlp(settings), variants)[LINEAR_LOSS]
    m = {k: mean(values, k) for k in values}
    verdict = max(m["w_asym"], m["weight"]) < m["activation"] < m["sigma_asym"] < m["standard"]
    return Row("lim_mlp_ordering", "Lim et al. 2024", "max(W-Asym, weight) < activation < σ-Asym < standard",
               stats(values), verdict, note="linear test-loss barrier (chord), digits MLP 3×512, AdamW",
               values=values)


@claim("width_effect")
def width_effect(settings: Settings) -> Row:
    """The unaligned barrier falls with width; the aligned one is far lower at every width."""
    widths = (0.0625, 0.5) if settings.quick else (0.0625, 0.25, 1.0)
    values: dict[str, list[float]] = {}
    for width in widths:
        got = measure(settings, _mlp(settings, width), {f"none@{width}": {},
                                                          f"weight@{width}": {"align": {"method": "weight"}}})
        values.update(got[LINEAR_LOSS])
    unaligned = [mean(values, f"none@{w}") for w in widths]
    aligned = [mean(values, f"weight@{w}") for w in widths]
    falls = all(a > b for a, b in itertools.pairwise(unaligned))
    far_lower = all(a <= 0.5 * u for a, u in zip(aligned, unaligned))
    return Row("width_effect", "Entezari et al. 2022; Ainsworth et al. 2023",
               "unaligned barrier falls with width; weight-matched ≤ ½ unaligned at every width",
               stats(values), falls and far_lower, note=f"MLP widths {list(widths)} (×512 units)", values=values)


@claim("tatro_bezier")
def tatro_bezier(settings: Settings) -> Row:
    """Tatro et al.: Bezier curves beat the linear path; aligned curves are at least as good as unaligned ones."""
    base = merged(_tinyten(settings, 0.5), {"curve": {"kind": "bezier", "train": _recipe(
        settings, epochs=8, quick_epochs=4, lr=0.05, weight_decay=5e-4)}})
    metrics = (LINEAR_LOSS, "barrier_chord/bezier/test_loss", "acc_min/bezier/test", "acc_avg/bezier/test")
    got = measure(settings, base, {"none": {}, "activation": {"align": {"method": "activation"}}}, metrics)
    values = {f"{kind}/{label}": v for metric, kind in zip(metrics, ("linear", "bezier", "acc_min", "acc_avg"))
              for label, v in got[metric].items()}
    m = {k: float(np.mean(v)) for k, v in values.items()}
    bezier_below_linear = all(m[f"bezier/{a}"] < m[f"linear/{a}"] for a in ("none", "activation"))
    aligned_no_worse = (m["acc_min/activation"] >= m["acc_min/none"] - 0.005
                        and m["acc_avg/activation"] >= m["acc_avg/none"] - 0.005)
    return Row("tatro_bezier", "Tatro et al. 2020", "Bezier < linear barrier; aligned acc_min, acc_avg ≥ unaligned",
               stats(values), bezier_below_linear and aligned_no_worse,
               note="TinyTen ×0.5 on digits, 3-bend Bezier; acc in fractions", values=values)


@claim("robust_alignment")
def robust_alignment(settings: Settings) -> Row:
    """Tatro et al.: between PGD-trained endpoints, alignment lowers the robust barrier too."""
    attack = {"eps": 0.03, "steps": 3}
    base = merged(_tinyten(settings, 0.5), {"train": {"attack": attack}, "eval": {"attack": attack}})
    metric = "robust/barrier_chord/linear/test_loss"
    got = measure(settings, base, {"none": {}, "activation": {"align": {"method": "activation"}}},
                  (LINEAR_LOSS, metric))
    values = {**{f"clean/{k}": v for k, v in got[LINEAR_LOSS].items()},
              **{f"robust/{k}": v for k, v in got[metric].items()}}
    verdict = mean(values, "robust/activation") < mean(values, "robust/none")
    return Row("robust_alignment", "Tatro et al. 2020", "robust barrier aligned < unaligned (PGD ε=0.03 endpoints)",
               stats(values), verdict, note="TinyTen ×0.5 on digits, PGD-trained, linear path", values=values)


@claim("sigma_asym_conv")
def sigma_asym_conv(settings: Settings) -> Row:
    """Lim et al.: σ-Asym (FiGLU) and W-Asym conv nets have lower unaligned barriers than standard ones."""
    variants = {"standard": {}, "sigma_asym": {"model": {"symmetry": "sigma_asym"}},
                "w_asym": {"model": {"symmetry": "w_asym"}}}
    values = measure(settings, _tinyten(settings, 0.5), variants)[LINEAR_LOSS]
    standard = mean(values, "standard")  # "lower" means by a fifth at least: a seed-noise difference is no effect
    verdict = mean(values, "sigma_asym") < 0.8 * standard and mean(values, "w_asym") < 0.8 * standard
    return Row("sigma_asym_conv", "Lim et al. 2024", "σ-Asym and W-Asym TinyTen ≤ 0.8 × standard TinyTen (unaligned)",
               stats(values), verdict, note="TinyTen ×0.5 on digits, linear path, no alignment", values=values)


import science_methods  # noqa: E402,F401  (registers the STE and REPAIR claims after the papers')


def run(names: Sequence[str], settings: Settings) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="science-endpoints-") as root:
        settings = Settings(pairs=settings.pairs, quick=settings.quick, store=EndpointStore(root))
        for name in names:
            start = time.perf_counter()
            row = CLAIMS[name](settings)
            row.note = (row.note + "; " if row.note else "") + f"{time.perf_counter() - start:.0f} s"
            print(row.line(), flush=True)
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", nargs="+", choices=list(CLAIMS), default=list(CLAIMS))
    parser.add_argument("--pairs", type=int, default=None, help="seed pairs per variant (default 3; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small nets and few epochs (the test suite's subset)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    pairs = args.pairs or (2 if args.quick else 3)
    if pairs < 2:
        parser.error("--pairs must be at least 2 (a spread needs two seed pairs)")
    torch.set_num_threads(1)
    print(f"# bench/science.py on {platform.machine()} CPU ({torch.get_num_threads()} thread), torch "
          f"{torch.__version__}, {pairs} seed pairs{' (quick)' if args.quick else ''}; values: mean±std over pairs")
    rows = run(args.claims, Settings(pairs=pairs, quick=args.quick))
    print(f"# {sum(r.verdict for r in rows)}/{len(rows)} claims hold")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in asdict(r).items()} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
