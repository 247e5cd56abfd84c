"""The comparison a study ends with: each condition's barrier side by side, one row per setting.

The two papers' question is the same one: how much of the barrier between two independently trained networks
is a permutation barrier? So the headline puts the conditions that answer it in columns (a standard net
unaligned, the same net after each alignment method, the nets without symmetries) and everything else that was
swept (architecture, width, PGD ε, ...) in rows, each cell the mean over seed pairs. It reads the results table
of :func:`study.tracking.schema.results_table` (one row per trial run), so it needs no MLflow of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

#: The factors whose levels are the headline's columns; the other swept factors (but the seeds) are its rows.
CONDITION_FACTORS = ("model.symmetry", "align.method")
#: (metric, what it is), shown in this order when the table has them.
HEADLINE_METRICS = (("barrier_chord/linear/test_loss", "linear path"),
                    ("barrier_chord/bezier/test_loss", "Bezier curve"),
                    ("robust/barrier_chord/linear/test_loss", "linear path, robust (PGD) loss"))
_SYMMETRY_NAMES = {"standard": "standard", "w_asym": "W-Asym", "sigma_asym": "σ-Asym"}
_META = ("status", "error", "run", "run_id", "seeds")


def _condition(row: pd.Series, columns: Sequence[str]) -> str:
    symmetry = str(row.get("model.symmetry", "standard")) if "model.symmetry" in columns else "standard"
    method = str(row.get("align.method", "none")) if "align.method" in columns else "none"
    name = _SYMMETRY_NAMES.get(symmetry, symmetry)
    if method in ("none", "nan", "None"):
        return name
    return f"{name} +{method}" + (" (diag.)" if symmetry != "standard" else "")


def _order(labels: Sequence[str]) -> list[str]:
    """Standard first, then its alignments, then the asymmetric nets: the order the papers argue in."""
    rank = {"standard": 0, "W-Asym": 2, "σ-Asym": 3}
    return sorted(labels, key=lambda label: (rank.get(label.split(" +")[0], 4), " +" in label, label))


def headline(table: pd.DataFrame, metrics: Sequence[tuple[str, str]] = HEADLINE_METRICS) -> str:
    """The headline comparison as text ('' when the study has no condition factor or no finished trial)."""
    if table.empty or "status" not in table:
        return ""
    finished = table[table["status"] == "FINISHED"]
    present = [c for c in CONDITION_FACTORS if c in finished.columns]
    if finished.empty or not present:
        return ""
    finished = finished.assign(condition=finished.apply(_condition, axis=1, columns=present))
    rows = [c for c in finished.columns if c not in (*present, *_META, "condition") and "/" not in c
            and finished[c].astype(str).nunique() > 1]
    pairs = finished["seeds"].astype(str).nunique() if "seeds" in finished else 1
    blocks = []
    for metric, what in metrics:
        if metric not in finished or finished[metric].isna().all():
            continue
        frame = finished.assign(**{c: finished[c].astype(str) for c in rows})
        pivot = frame.pivot_table(index=rows or None, columns="condition", values=metric, aggfunc="mean") \
            if rows else frame.groupby("condition")[metric].mean().to_frame().T
        pivot = pivot[_order(list(pivot.columns))]
        if not rows:
            pivot.index = ["all trials"]
        text = pivot.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
        blocks.append(f"{what}: test-loss barrier ({metric}), mean over {pairs} seed pair(s); lower = better "
                      f"connected\n{text}")
    return "\n\n".join(blocks)
