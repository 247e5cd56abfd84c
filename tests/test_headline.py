"""The study's closing headline: conditions in columns, the other swept factors in rows, means over seeds."""

from __future__ import annotations

import math

import pandas as pd

from analysis.headline import headline

LINEAR = "barrier_chord/linear/test_loss"


def _table() -> pd.DataFrame:
    rows = []
    conditions = [("standard", "none", 1.0), ("standard", "weight", 0.1), ("w_asym", "none", 0.05)]
    for arch, scale in (("mlp", 1.0), ("tinyten", 10.0)):
        for seeds, shift in (("[0, 1]", 0.0), ("[2, 3]", 0.2)):
            for symmetry, method, value in conditions:
                rows.append({"model.arch": arch, "model.symmetry": symmetry, "align.method": method, "seeds": seeds,
                             "status": "FINISHED", "run": "x", "run_id": "y", "error": "",
                             LINEAR: scale * (value + shift)})
    rows.append({**rows[0], "status": "FAILED", LINEAR: math.nan})
    return pd.DataFrame(rows)


def test_headline_puts_conditions_in_columns_and_averages_seed_pairs():
    text = headline(_table())
    lines = text.splitlines()
    assert "mean over 2 seed pair(s)" in lines[0]
    header = lines[1].split()
    assert header[-4:] == ["standard", "standard", "+weight", "W-Asym"]     # 'standard +weight' is one column
    mlp = next(line for line in lines if line.startswith("mlp")).split()
    tinyten = next(line for line in lines if line.startswith("tinyten")).split()
    assert mlp[1:] == ["1.100", "0.200", "0.150"]
    assert tinyten[1:] == ["11.000", "2.000", "1.500"]


def test_no_condition_factor_or_no_finished_trial_gives_no_headline():
    table = _table()
    assert headline(table.drop(columns=["model.symmetry", "align.method"])) == ""
    assert headline(table.assign(status="FAILED")) == ""
