"""A finished trial's files: profiles as CSV, a plot of loss/accuracy along each path, the result as JSON.

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


def write_trial(directory: Path, profiles: Mapping[str, pd.DataFrame], record: Mapping[str, Any],
                title: str = "") -> Path:
    """Write ``profiles.csv``, ``profiles.png`` and then ``result.json`` (the trial's record) into ``directory``.

    ``result.json`` comes last and atomically: its presence means the trial finished and everything else is
    there (:class:`study.sweep.folder.StudyFolder`)."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "profiles.csv", profile_table(profiles).to_csv(index=False))
    plot_profiles(profiles, directory / "profiles.png", title)
    atomic_write(directory / "result.json", json.dumps(record, indent=2, default=str), durable=True)
    return directory
