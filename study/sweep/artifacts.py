"""A finished trial's files: profiles as CSV, a plot of loss/accuracy along each path, the loss-surface plane
(``plane.csv``, ``plane.png``; with ``eval.plane``), the result as JSON.

Written by the trial process into the study folder (shared storage on a cluster); the driver attaches them
to the trial's MLflow run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd

from study.common.files import atomic_write

matplotlib.use("Agg")  # trials run headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402


def profile_table(profiles: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """All paths' profiles in one long table with a ``path`` column."""
    return pd.concat([df.assign(path=name) for name, df in profiles.items()], ignore_index=True)


def plot_profiles(profiles: Mapping[str, pd.DataFrame], path: Path, title: str = "") -> None:
    """Loss and accuracy against t for every path (train dashed, test solid, robust dotted)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, df) in enumerate(profiles.items()):
        color = f"C{i}"
        for column, style in (("train", "--"), ("test", "-"), ("robust_test", ":")):
            if f"{column}_loss" in df:
                label = f"{name} {column.replace('_', ' ')}"
                ax_loss.plot(df["t"], df[f"{column}_loss"], style, color=color, label=label)
                ax_acc.plot(df["t"], df[f"{column}_acc"], style, color=color, label=label)
    ax_loss.set(xlabel="t", ylabel="loss")
    ax_acc.set(xlabel="t", ylabel="accuracy")
    ax_acc.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLANE_QUANTITIES = {"test_loss": "test loss", "test_error": "test error", "train_loss": "train loss",
                    "train_error": "train error"}


def draw_plane(ax: Any, frame: pd.DataFrame, quantity: str = "test_loss", *, levels: Any = None,
               colorbar: bool = True) -> Any:
    """A filled contour of ``quantity`` (``{split}_loss`` or ``{split}_error``) over a plane frame
    (:func:`study.core.plane.plane_frame`), with θ_A, θ_B, the bend, the linear path (dashed) and the curve
    (solid) marked. Loss levels are log-spaced (as in Garipov et al.'s figures), error levels linear in [0, 1].
    Returns the contour set (for a shared colour bar)."""
    import numpy as np
    from matplotlib import colors

    grid = frame[frame["kind"] == "grid"]
    split, _, kind = quantity.rpartition("_")
    values = grid[f"{split}_loss"] if kind == "loss" else 1.0 - grid[f"{split}_acc"]
    table = grid.assign(value=values.to_numpy()).pivot(index="y", columns="x", values="value")
    x, y, z = table.columns.to_numpy(), table.index.to_numpy(), table.to_numpy()
    finite = z[np.isfinite(z)]
    if levels is None:
        if kind == "loss":
            low, high = max(float(finite.min()), 1e-4), max(float(finite.max()), 1e-4)
            levels = np.geomspace(low, high * 1.0001, 12) if high > low * 1.0001 else None
        else:
            low, high = float(finite.min()), float(finite.max())
            levels = np.linspace(low, high + 1e-6, 12) if high > low + 1e-6 else None
    norm = colors.LogNorm(vmin=levels[0], vmax=levels[-1]) if (kind == "loss" and levels is not None) else None
    if levels is None:  # a constant plane (a model with itself): one flat colour, said in the title
        contour = ax.contourf(x, y, z, levels=[float(finite.min()) - 1e-6, float(finite.max()) + 1e-6],
                              cmap="viridis")
        ax.text(0.5, 0.98, f"constant: {float(finite.mean()):.4g}", transform=ax.transAxes, ha="center",
                va="top", fontsize=7, color="white")
    else:
        contour = ax.contourf(x, y, z, levels=levels, cmap="viridis", norm=norm, extend="both")
        ax.contour(x, y, z, levels=levels, colors="k", linewidths=0.3, alpha=0.5, norm=norm)
    if colorbar:
        from matplotlib import ticker

        bar = ax.figure.colorbar(contour, ax=ax, shrink=0.9)
        if levels is not None:
            bar.set_ticks(list(levels[::2]))
        bar.ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        bar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        bar.set_label(PLANE_QUANTITIES.get(quantity, quantity), fontsize=7)
        bar.ax.tick_params(labelsize=6)
    marks = {k: frame[frame["kind"] == k] for k in ("endpoint_a", "endpoint_b", "bend", "curve")}
    a, b = marks["endpoint_a"], marks["endpoint_b"]
    if len(a) and len(b):
        ax.plot([a["x"].iloc[0], b["x"].iloc[0]], [a["y"].iloc[0], b["y"].iloc[0]], "--", color="white",
                linewidth=1, label="linear path")
    if len(marks["curve"]):
        curve = marks["curve"].sort_values("t")
        ax.plot(curve["x"], curve["y"], "-", color="white", linewidth=1.5, label="curve")
    for kind, marker, label in (("endpoint_a", "o", r"$\theta_A$"), ("endpoint_b", "o", r"$\theta_B$"),
                                ("bend", "X", "bend")):
        if len(marks[kind]):
            row = marks[kind].iloc[0]
            ax.plot(row["x"], row["y"], marker, color="white", markeredgecolor="black", markersize=6)
            ax.annotate(label, (row["x"], row["y"]), textcoords="offset points", xytext=(4, 4), color="white",
                        fontsize=7)
    ax.set_xticks([0, 0.5, 1])
    ax.set_yticks([0, 0.5, 1])
    ax.tick_params(labelsize=6)
    return contour


def plot_plane(frame: pd.DataFrame, path: Path, title: str = "") -> None:
    """``plane.png``: test loss and test error on the plane (axes in units of ‖θ_B − θ_A‖ and of the bend's
    offset from the line)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, quantity in zip(axes, ("test_loss", "test_error")):
        draw_plane(ax, frame, quantity)
        ax.set(xlabel=r"$x$ (units of $\|\theta_B-\theta_A\|$)", ylabel=r"$y$ (units of bend offset)",
               title=PLANE_QUANTITIES[quantity])
    degenerate = frame.attrs.get("degenerate") or []
    note = f" (degenerate: {', '.join(degenerate)})" if degenerate else ""
    fig.suptitle((title + note) if title else f"plane through θ_A, bend, θ_B{note}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_trial(directory: Path, profiles: Mapping[str, pd.DataFrame], record: Mapping[str, Any],
                title: str = "", plane: pd.DataFrame | None = None) -> Path:
    """Write ``profiles.csv``, ``profiles.png`` (with ``plane``: ``plane.csv`` and ``plane.png``) and then
    ``result.json`` (the trial's record) into ``directory``; the driver uploads the folder to the trial's run.

    ``result.json`` comes last and atomically: its presence means the trial finished and everything else is
    there (:class:`study.sweep.folder.StudyFolder`)."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "profiles.csv", profile_table(profiles).to_csv(index=False))
    plot_profiles(profiles, directory / "profiles.png", title)
    if plane is not None:
        atomic_write(directory / "plane.csv", plane.to_csv(index=False))
        plot_plane(plane, directory / "plane.png", title)
    atomic_write(directory / "result.json", json.dumps(record, indent=2, default=str), durable=True)
    return directory
