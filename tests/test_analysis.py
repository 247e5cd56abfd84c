"""Analysis against a real sqlite MLflow store filled by the project's own StudyTracker with known metrics.

The study grid is quickstart-like (seed pairs × arch × symmetry × alignment × PGD eps). One trial FAILED without
metrics and one planned trial never ran; every expected number below is computed by hand from the values the
test logged (numpy mean/std, scipy's t quantile), never by the code under test.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from analysis.load import load, load_profiles
from study import cli
from mlflow.entities import Metric, Param

from study.tracking.schema import default_uri
from study.tracking.tracker import flatten_params

FACTORS = {
    "seeds": [[0, 1], [2, 3], [4, 5]],
    "model.arch": ["mlp", "tinyten"],
    "model.symmetry": ["standard", "w_asym"],
    "align.method": ["none", "weight"],
    "train.attack.eps": [0.0, 0.03],
}
SPEC = {"name": "fake", "trial": {"data": {"name": "digits"}, "model": {"width": 0.25}, "train": {"epochs": 1},
                                  "curve": {"kind": "bezier"}, "eval": {"points": 5}, "device": "cpu"},
        "factors": FACTORS, "resources": {"cpu": 1}}
FAILED_CELL = {"seeds": [4, 5], "model.arch": "mlp", "model.symmetry": "standard", "align.method": "weight",
               "train.attack.eps": 0.0}
MISSING_CELL = {"seeds": [2, 3], "model.arch": "tinyten", "model.symmetry": "w_asym", "align.method": "none",
                "train.attack.eps": 0.03}
PARTIAL_CELL = {"seeds": [0, 1], "model.arch": "tinyten", "model.symmetry": "standard", "align.method": "weight",
                "train.attack.eps": 0.03}  # finished, but one metric was never logged
PARTIAL_METRIC = "robust/barrier_chord/bezier/test_loss"
METRICS = ("barrier_chord/linear/test_loss", "barrier_chord/linear/test_error", "barrier_chord/bezier/test_loss",
           "robust/barrier_chord/linear/test_loss", "robust/barrier_chord/bezier/test_loss",
           "endpoint_a/test_acc", "endpoint_b/test_acc", "acc_avg/bezier/test", "acc_min/bezier/test",
           "acc_avg/linear/test")
T_GRID = np.linspace(0.0, 1.0, 5)


def _cells(factors=FACTORS):
    keys = list(factors)
    for values in itertools.product(*(factors[k] for k in keys)):
        yield dict(zip(keys, values))


def _values(index: int) -> dict[str, float]:
    rng = np.random.default_rng(1000 + index)
    return {m: float(np.round(rng.uniform(0.0, 1.0), 6)) for m in METRICS}


def _profile(index: int) -> pd.DataFrame:
    rng = np.random.default_rng(index)
    frames = []
    for path in ("linear", "bezier"):
        bump = np.sin(np.pi * T_GRID) * rng.uniform(0.1, 1.0)
        acc = 0.95 - 0.3 * bump
        frames.append(pd.DataFrame({"t": T_GRID, "train_loss": 0.1 + bump, "train_acc": acc, "test_loss": 0.2 + bump,
                                    "test_acc": acc - 0.02, "robust_test_loss": 0.4 + bump,
                                    "robust_test_acc": acc - 0.2, "segment_length": [0.0, 1.0, 1.0, 1.0, 1.0],
                                    "path": path}))
    return pd.concat(frames, ignore_index=True)


def _plane(index: int) -> pd.DataFrame:
    """A plane.csv as study.core.plane writes it: a bowl around the bend, markers for the plot."""
    axis = np.linspace(-0.2, 1.2, 5)
    rows = [{"kind": "grid", "i": i, "j": j, "x": x, "y": y, "t": np.nan, "off_plane": 0.0,
             "test_loss": 0.1 + (1 + index % 3) * ((x - 0.5) ** 2 + (y - 1) ** 2), "test_acc": 0.9 - 0.1 * x * y}
            for (i, x), (j, y) in itertools.product(enumerate(axis), enumerate(axis))]
    rows += [{"kind": k, "i": -1, "j": -1, "x": x, "y": y, "t": np.nan, "off_plane": 0.0}
             for k, x, y in (("endpoint_a", 0, 0), ("endpoint_b", 1, 0), ("bend", 0.5, 1))]
    rows += [{"kind": "curve", "i": -1, "j": -1, "x": t, "y": 2 * t * (1 - t), "t": t, "off_plane": 0.0}
             for t in np.linspace(0, 1, 11)]
    return pd.DataFrame(rows).assign(unit_x=3.0, unit_y=1.5)


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """Where the sqlite stores live: RAM (/dev/shm) when there is one, since every MLflow write is an fsynced
    sqlite commit (10+ ms each on a busy disk); else pytest's tmp folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="symstudy-analysis-", dir=shm))
        yield root
        shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("scratch")


@pytest.fixture
def tmp_study_root(scratch, request) -> Path:
    path = Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=scratch))
    return path


@pytest.fixture(scope="session")
def template_db(scratch) -> Path:
    """One migrated empty sqlite store per session (the alembic migration costs 2-3 s); tests copy it."""
    path = scratch / "template" / "mlflow.db"
    path.parent.mkdir()
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def make_study(root: Path, template: Path, *, spec=SPEC, profiles: bool = False, skip=MISSING_CELL,
               failed=FAILED_CELL, extra=None, planes: bool = False) -> tuple[Path, list[dict]]:
    """A study folder as `study run` leaves it (spec.yaml, mlflow.db, artifacts/): one experiment, a parent run
    tagged kind=study, one run per trial tagged and parametrised the way study.tracking does it."""
    study_dir = root / spec["name"]
    study_dir.mkdir(parents=True)
    (study_dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copyfile(template, study_dir / "mlflow.db")
    client = mlflow.MlflowClient(default_uri(study_dir))
    experiment = client.create_experiment(spec["name"], artifact_location=(study_dir / "mlartifacts").as_uri())
    parent = client.create_run(experiment, run_name=spec["name"], tags={"study": spec["name"], "kind": "study"})
    truth = []
    for index, cell in enumerate(_cells(spec["factors"])):
        if cell == skip:
            continue
        key = f"{index:016x}"
        flat = flatten_params(cell)  # "[0, 1]", "0.03", "trial.model.arch": exactly what the tracker logs
        tags = {"study": spec["name"], "kind": "trial", "trial_key": key, "mlflow.parentRunId": parent.info.run_id,
                **{f"factor.{k}": v for k, v in flat.items()}}
        values = {} if cell == failed else _values(index)
        if extra is not None and values:
            values.update(extra(cell, index))
        if cell == PARTIAL_CELL:
            del values[PARTIAL_METRIC]
        if cell == failed:
            tags["error"] = "RuntimeError: injected permanent failure"
        run_id = client.create_run(experiment, run_name=f"trial-{index}", tags=tags).info.run_id
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in values.items()],
                         params=[Param(k, v) for k, v in flat.items()])
        client.set_terminated(run_id, status="FAILED" if cell == failed else "FINISHED")
        if profiles and values:
            directory = study_dir / "artifacts" / key
            directory.mkdir(parents=True)
            _profile(index).to_csv(directory / "profiles.csv", index=False)
            if planes:
                _plane(index).to_csv(directory / "plane.csv", index=False)
        truth.append({**cell, "status": "FAILED" if cell == failed else "FINISHED", "key": key, "run_id": run_id,
                      **values})
    client.set_terminated(parent.info.run_id)
    return study_dir, truth


@pytest.fixture(scope="module")
def study(scratch, template_db) -> tuple[Path, pd.DataFrame]:
    study_dir, truth = make_study(Path(tempfile.mkdtemp(prefix="studies-", dir=scratch)), template_db)
    frame = pd.DataFrame(truth)
    frame["endpoint_mean/test_acc"] = (frame["endpoint_a/test_acc"] + frame["endpoint_b/test_acc"]) / 2
    frame["seeds"] = frame["seeds"].map(tuple)
    return study_dir, frame


# ---------------------------------------------------------------------------------------------------------------
# Expected numbers, by hand
# ---------------------------------------------------------------------------------------------------------------
def _interval(values) -> tuple[int, float, float, float]:
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n < 2:
        return n, (float(x.mean()) if n else np.nan), np.nan, np.nan
    std = float(np.std(x, ddof=1))
    return n, float(np.mean(x)), std, float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def _select(truth: pd.DataFrame, **where) -> pd.DataFrame:
    mask = np.ones(len(truth), dtype=bool)
    for column, value in where.items():
        mask &= truth[column.replace("__", ".")].map(lambda x: x == value).to_numpy(dtype=bool)
    return truth[mask]


def _planned(**where) -> int:
    return sum(all(cell[k.replace("__", ".")] == v for k, v in where.items()) for cell in _cells())


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_stats(table: pd.DataFrame, truth: pd.DataFrame, by: list[str], metrics: list[str]) -> None:
    """Every (group, metric) row of ``table`` equals the hand computation, failed and missing included."""
    groups = list(itertools.product(*(FACTORS[b] for b in by)))
    assert len(table) == len(groups) * len(metrics)
    assert list(table["metric"].unique()) == metrics
    for group in groups:
        where = {b.replace(".", "__"): v for b, v in zip(by, group)}
        rows = table
        for b, v in zip(by, group):
            rows = rows[rows[b] == v]
        members = _select(truth, **where)
        finished = members[members["status"] == "FINISHED"]
        for metric in metrics:
            row = rows[rows["metric"] == metric].iloc[0]
            n, mean, std, half = _interval(finished[metric])
            assert (row["n"], row["finished"]) == (n, len(finished)), (group, metric)
            assert row["failed"] == (members["status"] == "FAILED").sum()
            assert row["missing"] == _planned(**where) - len(members)
            assert row["mean"] == pytest.approx(mean, rel=1e-12)
            assert row["std"] == pytest.approx(std, rel=1e-12)
            assert row["ci95"] == pytest.approx(half, rel=1e-12)
            assert row["ci_low"] == pytest.approx(mean - half, rel=1e-12)
            assert row["ci_high"] == pytest.approx(mean + half, rel=1e-12)


def _check_paired(paired: pd.DataFrame, truth: pd.DataFrame, by: list[str], metrics: list[str]) -> None:
    """weight − none per (study, seed pair, every other factor), aggregated per group of ``by``."""
    others = [f for f in FACTORS if f != "align.method"]
    finished = truth[truth["status"] == "FINISHED"]
    assert set(paired["align.method"]) == {"weight"} and set(paired["baseline"]) == {"none"}
    for group in itertools.product(*(FACTORS[b] for b in by)):
        rows = paired
        for b, v in zip(by, group):
            rows = rows[rows[b] == v]
        for metric in metrics:
            diffs, planned_pairs = [], 0
            for cell in _cells():
                if cell["align.method"] != "none" or any(cell[b] != v for b, v in zip(by, group)):
                    continue
                planned_pairs += 1
                match = {k.replace(".", "__"): (tuple(cell[k]) if k == "seeds" else cell[k]) for k in others}
                base = _select(finished, align__method="none", **match)
                aligned = _select(finished, align__method="weight", **match)
                if len(base) and len(aligned):
                    diffs.append(aligned[metric].iloc[0] - base[metric].iloc[0])  # NaN if one lacks it
            row = rows[rows["metric"] == metric].iloc[0]
            n, mean, std, half = _interval(diffs)
            assert row["n"] == n and row["incomplete"] == planned_pairs - n, (group, metric)
            assert row["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
            assert row["std"] == pytest.approx(std, rel=1e-12)
            assert row["ci95"] == pytest.approx(half, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
def test_load_types_factors_and_keeps_failed_runs(study):
    study_dir, truth = study
    data = load([study_dir])
    runs = data.runs
    assert len(runs) == len(truth) == 47 and len(data.planned) == 48 and data.planned_from == {"fake": "spec"}
    assert runs["train.attack.eps"].dtype == np.float64 and set(runs["train.attack.eps"]) == {0.0, 0.03}
    assert str(runs["seed_a"].dtype) == "Int64" and set(zip(runs["seed_a"], runs["seed_b"])) == {(0, 1), (2, 3), (4, 5)}
    assert set(runs["seeds"]) == {"[0, 1]", "[2, 3]", "[4, 5]"}
    assert data.factors == list(FACTORS)
    failed = runs[runs["status"] == "FAILED"]
    assert len(failed) == 1 and failed["error"].iloc[0] == "RuntimeError: injected permanent failure"
    assert failed[list(METRICS)].isna().all(axis=None)
    merged = runs.merge(truth[["run_id", "barrier_chord/linear/test_loss"]], on="run_id", suffixes=("", "_truth"))
    np.testing.assert_array_equal(merged["barrier_chord/linear/test_loss"],
                                  merged["barrier_chord/linear/test_loss_truth"])


def test_several_studies_bundle_factors_and_plain_tracking_uri(study, tmp_study_root, template_db):
    study_dir, truth = study
    bundle_spec = {"name": "bundles", "trial": {}, "factors": {
        "trial": [{"model": {"arch": "mlp"}, "data": {"name": "mnist"}},
                  {"model": {"arch": "resnet20"}, "data": {"name": "cifar10"}}],
        "align.method": ["none", "weight"], "seeds": [[0, 1], [2, 3]]}}
    other, _ = make_study(tmp_study_root, template_db, spec=bundle_spec, skip=None, failed=None)
    runs = load([study_dir, other]).runs
    assert set(runs["study"]) == {"fake", "bundles"} and len(runs) == 47 + 8
    bundles = runs[runs["study"] == "bundles"]
    assert set(zip(bundles["model.arch"], bundles["data.name"])) == {("mlp", "mnist"), ("resnet20", "cifar10")}
    assert "trial.model.arch" not in runs

    # Any tracking URI, by experiment name: the grid is inferred (combinations seen × seed pairs seen).
    data = load(tracking_uri=default_uri(study_dir), experiments=["fake"])
    assert data.planned_from == {"fake": "inferred"} and len(data.planned) == 48
    assert data.runs["study_dir"].eq("").all()


def test_profiles_join_local_files_and_mlflow_artifacts(tmp_study_root, template_db):
    study_dir, truth = make_study(tmp_study_root, template_db, profiles=True)
    moved = next(t for t in truth if t["status"] == "FINISHED")
    local = study_dir / "artifacts" / moved["key"] / "profiles.csv"
    mlflow.MlflowClient(default_uri(study_dir)).log_artifact(moved["run_id"], str(local))
    local.unlink()  # only MLflow has it now
    profiles = load_profiles(load([study_dir]).runs)
    assert profiles["run_id"].nunique() == 46 and profiles.attrs["missing"] == []
    assert len(profiles) == 46 * 2 * len(T_GRID)
    fetched = profiles[profiles["run_id"] == moved["run_id"]]
    assert fetched["model.arch"].iloc[0] == moved["model.arch"] and set(fetched["path"]) == {"linear", "bezier"}


# ---------------------------------------------------------------------------------------------------------------
# Named tables: exact numbers, failed and missing runs counted
# ---------------------------------------------------------------------------------------------------------------
def _table_via_cli(capsys, study_dir: Path, *args: str, stem: str | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    code, out, err = _run_cli(capsys, "table", *args[:1], str(study_dir), "--format", "csv", *args[1:])
    assert code == 0, err
    printed = pd.read_csv(io.StringIO(out))
    stem = stem or args[0]
    written = pd.read_csv(study_dir / "tables" / f"{stem}.csv")
    pd.testing.assert_frame_equal(printed, written)
    paired_file = study_dir / "tables" / f"{stem}_paired.csv"
    return printed, (pd.read_csv(paired_file) if paired_file.exists() else None)


def test_symmetry_table_exact(study, capsys):
    study_dir, truth = study
    table, paired = _table_via_cli(capsys, study_dir, "symmetry")
    # split by every swept factor that is not the subject (eps too: nothing pooled); data.name is not a factor
    by = ["model.arch", "train.attack.eps", "model.symmetry", "align.method"]
    metrics = ["barrier_chord/linear/test_loss", "barrier_chord/linear/test_error", "endpoint_mean/test_acc"]
    assert list(table.columns[:5]) == [*by, "metric"]
    _check_stats(table, truth, by, metrics)
    assert table["failed"].sum() == 3 and table["missing"].sum() == 3  # one run, counted once per metric
    _check_paired(paired, truth, ["model.arch", "train.attack.eps", "model.symmetry"], metrics)
    assert paired["incomplete"].sum() == 2 * len(metrics)  # the failed and the missing run each break one pair


def test_alignment_table_exact_and_picks_the_curve(study, capsys):
    study_dir, truth = study
    table, paired = _table_via_cli(capsys, study_dir, "alignment")
    metrics = ["endpoint_mean/test_acc", "acc_avg/bezier/test", "acc_min/bezier/test"]
    by = ["model.arch", "model.symmetry", "train.attack.eps", "align.method"]  # split, not pooled
    _check_stats(table, truth, by, metrics)
    _check_paired(paired, truth, by[:-1], metrics)
    failed_cell = table[(table["model.arch"] == "mlp") & (table["model.symmetry"] == "standard")
                        & (table["train.attack.eps"] == 0.0) & (table["align.method"] == "weight")]
    assert set(failed_cell["n"]) == {2} and set(failed_cell["failed"]) == {1}


def test_robust_table_exact(study, capsys):
    study_dir, truth = study
    table, paired = _table_via_cli(capsys, study_dir, "robust")
    metrics = ["barrier_chord/linear/test_loss", "robust/barrier_chord/linear/test_loss",
               "barrier_chord/bezier/test_loss", "robust/barrier_chord/bezier/test_loss", "endpoint_mean/test_acc"]
    by = ["model.arch", "model.symmetry", "train.attack.eps", "align.method"]  # architectures are not pooled
    _check_stats(table, truth, by, metrics)
    _check_paired(paired, truth, by[:-1], metrics)
    cell = {"model.arch": "tinyten", "train.attack.eps": 0.03}
    rows = table[(table["model.arch"] == "tinyten") & (table["train.attack.eps"] == 0.03)]
    missing = rows[(rows["model.symmetry"] == "w_asym") & (rows["align.method"] == "none")]
    assert set(missing["n"]) == {2} and set(missing["missing"]) == {1} and set(missing["failed"]) == {0}, cell
    partial = rows[(rows["model.symmetry"] == "standard") & (rows["align.method"] == "weight")]
    assert dict(zip(partial["metric"], partial["n"]))[PARTIAL_METRIC] == 2 and set(partial["finished"]) == {3}

    code, out, err = _run_cli(capsys, "table", "robust", str(study_dir))
    row = next(line for line in out.splitlines() if line.startswith("| tinyten | standard | 0.03 | weight |"))
    assert "(n=2) |" in row, row  # a finished run without the metric shows, it is not hidden
    assert "Not logged by these runs: robust/endpoint_acc/linear/test." in out


def test_custom_table_where_and_markdown_latex_show_counts(study, capsys):
    study_dir, truth = study
    table, paired = _table_via_cli(capsys, study_dir, "custom", "--by", "model.symmetry", "--metric",
                                   "barrier_chord/linear/test_error", "--paired", "align.method", "--name", "mine",
                                   stem="mine")
    _check_stats(table, truth, ["model.symmetry"], ["barrier_chord/linear/test_error"])
    _check_paired(paired, truth, ["model.symmetry"], ["barrier_chord/linear/test_error"])

    code, out, err = _run_cli(capsys, "table", "symmetry", str(study_dir))
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| model.arch"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:7] == ["model.arch", "train.attack.eps", "model.symmetry", "align.method", "n", "failed",
                         "missing"]
    failed_row = next(line for line in out.splitlines() if line.startswith("| mlp | 0 | standard | weight |"))
    finished = _select(truth, model__arch="mlp", model__symmetry="standard", align__method="weight",
                       train__attack__eps=0.0, status="FINISHED")
    n, mean, _, half = _interval(finished["barrier_chord/linear/test_loss"])
    assert f"| 2 | 1 | 0 | {mean:.4f} ± {half:.4f} |" in failed_row
    assert "| tinyten | 0.03 | w_asym | none | 2 | 0 | 1 |" in out
    assert "Pooled over" not in out and "Split by (not this table's subject): model.arch, train.attack.eps." in out
    latex = (study_dir / "tables" / "symmetry.tex").read_text()
    assert r"\begin{tabular}" in latex and rf"{mean:.4f} $\pm$ {half:.4f}" in latex and "W-Asym" in latex
    # row groups: one italic header per (architecture, epsilon), readable column names
    assert latex.count(r"\multicolumn") == 2 * 2 * 2 and r"\textit{Architecture: MLP, Train $\varepsilon$: 0}" in latex
    assert "Loss barrier, linear" in latex and "Endpoint acc." in latex

    # --where keeps a subset of the runs and of the planned grid (so nothing outside it counts as missing).
    table, _ = _table_via_cli(capsys, study_dir, "symmetry", "--where", "train.attack.eps=0.03", "model.arch=mlp")
    subset = _select(truth, train__attack__eps=0.03, model__arch="mlp")
    assert "model.arch" not in table and set(table["missing"]) == {0} and set(table["failed"]) == {0}
    for (symmetry, method), group in table.groupby(["model.symmetry", "align.method"]):
        values = _select(subset, model__symmetry=symmetry, align__method=method)["barrier_chord/linear/test_loss"]
        n, mean, std, half = _interval(values)
        row = group[group["metric"] == "barrier_chord/linear/test_loss"].iloc[0]
        assert row["n"] == n == 3 and row["mean"] == pytest.approx(mean) and row["ci95"] == pytest.approx(half)


def test_custom_tables_count_n_per_cell_and_do_not_overwrite_each_other(study, capsys):
    study_dir, truth = study
    code, out, err = _run_cli(capsys, "table", "custom", str(study_dir), "--by", "model.arch", "--columns",
                              "align.method", "--metric", "barrier_chord/linear/test_loss")
    assert code == 0, err
    # mlp: 12 finished runs without alignment, 11 with (one failed): n per cell, not their sum
    mlp = next(line for line in out.splitlines() if line.startswith("| mlp |"))
    assert mlp.startswith("| mlp | 12/11 | 1 | 0 |"), mlp
    assert "Pooled over: model.symmetry (standard, w_asym); train.attack.eps (0, 0.03) (not in --by)." in out
    first = study_dir / "tables" / "custom_barrier_chord-linear-test_loss_by_model.arch_cols_align.method.md"
    code, _, err = _run_cli(capsys, "table", "custom", str(study_dir), "--by", "model.arch", "--metric",
                            "acc_min/bezier/test")
    second = study_dir / "tables" / "custom_acc_min-bezier-test_by_model.arch.md"
    assert code == 0 and first.is_file() and second.is_file(), err
    assert "barrier_chord/linear/test_loss" in first.read_text() and "acc_min/bezier/test" in second.read_text()


def _applied_extra(cell: dict, index: int) -> dict[str, float]:
    """Alignment applied on standard nets only; endpoint accuracy and the ensemble depend on the endpoints only
    (the same for every alignment method, as in a real study), the merged model also on the method."""
    endpoints = (tuple(cell["seeds"]), cell["model.arch"], cell["model.symmetry"], cell["train.attack.eps"])
    rng = np.random.default_rng(abs(hash(str(endpoints))) % 2**32)
    a, b, ens = rng.uniform(0.8, 1.0, size=3)
    return {"align/applied": float(cell["model.symmetry"] == "standard"), "endpoint_a/test_acc": float(a),
            "endpoint_b/test_acc": float(b), "ensemble/test_acc": float(ens),
            "merge/linear/test_acc": float(np.round(np.random.default_rng(index).uniform(0, 1), 6))}


@pytest.fixture(scope="module")
def applied_study(scratch, template_db) -> tuple[Path, pd.DataFrame]:
    study_dir, truth = make_study(Path(tempfile.mkdtemp(prefix="applied-", dir=scratch)), template_db,
                                  spec={**SPEC, "name": "applied"}, extra=_applied_extra)
    frame = pd.DataFrame(truth)
    frame["endpoint_mean/test_acc"] = (frame["endpoint_a/test_acc"] + frame["endpoint_b/test_acc"]) / 2
    frame["seeds"] = frame["seeds"].map(tuple)
    return study_dir, frame


def test_alignment_that_was_not_applied_is_collapsed_not_differenced(applied_study, capsys):
    study_dir, truth = applied_study
    table, paired = _table_via_cli(capsys, study_dir, "symmetry")
    cells = set(zip(table["model.symmetry"], table["align.method"]))
    assert cells == {("standard", "none"), ("standard", "weight"), ("w_asym", "none")}
    assert set(paired["model.symmetry"]) == {"standard"}  # no structural 0 ± 0 for w_asym
    code, out, err = _run_cli(capsys, "table", "symmetry", str(study_dir))
    assert "align.method = weight on model.symmetry = w_asym; 12 run(s) collapsed into align.method = none" in out
    assert "0.0000 ± 0.0000" not in out
    # endpoint accuracy does not depend on the alignment method: it is in the table, not in the differences
    assert "Identical on both sides of every pair, so left out here: endpoint_mean/test_acc" in out
    paired_md = out.split("Paired differences")[1]
    assert "endpoint_mean/test_acc |" not in paired_md.splitlines()[4]

    table, _ = _table_via_cli(capsys, study_dir, "symmetry", "--keep-unapplied")
    kept = table[table["align.method"] == "weight (not applied)"]
    assert set(kept["model.symmetry"]) == {"w_asym"} and kept["n"].sum() == 12 * 3  # 12 runs, 3 metrics each


def test_merge_table_compares_merge_and_ensemble_exactly(applied_study, capsys):
    study_dir, truth = applied_study
    table, paired = _table_via_cli(capsys, study_dir, "merge")
    metrics = ["endpoint_mean/test_acc", "ensemble/test_acc", "merge/linear/test_acc"]
    kept = truth[~((truth["model.symmetry"] == "w_asym") & (truth["align.method"] == "weight"))]
    row_of = table.set_index(["model.arch", "train.attack.eps", "model.symmetry", "align.method", "metric"])
    for arch, eps, method in itertools.product(["mlp", "tinyten"], [0.0, 0.03], ["none", "weight"]):
        finished = _select(kept, model__arch=arch, train__attack__eps=eps, model__symmetry="standard",
                           align__method=method, status="FINISHED")
        for metric in metrics:
            n, mean, std, half = _interval(finished[metric])
            row = row_of.loc[(arch, eps, "standard", method, metric)]
            assert row["n"] == n and row["mean"] == pytest.approx(mean, rel=1e-12)
            assert row["ci95"] == pytest.approx(half, rel=1e-12, nan_ok=True)
    # ensemble and endpoints are the same trained models on both sides: only the merge has differences
    assert set(paired["metric"]) == set(metrics)
    code, out, err = _run_cli(capsys, "table", "merge", str(study_dir), "--format", "latex")
    assert "Ensemble acc." in out and "Merge acc., linear" in out and r"\multicolumn" in out


# ---------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------
def test_plot_writes_png_and_pdf_and_logs_them(tmp_study_root, template_db, capsys):
    study_dir, _ = make_study(tmp_study_root, template_db, profiles=True, planes=True)
    code, out, err = _run_cli(capsys, "plot", str(study_dir), "--where", "model.arch=mlp")  # fewer panels to draw
    assert code == 0, err
    names = {"profiles_test_loss", "profiles_test_acc", "profiles_robust_test_loss", "profiles_robust_test_acc",
             "barrier_vs_eps", "barrier_by_symmetry", "planes"}
    for name in names:
        png, pdf = study_dir / "plots" / f"{name}.png", study_dir / "plots" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2_000
    client = mlflow.MlflowClient(default_uri(study_dir))
    experiment = client.get_experiment_by_name("fake")
    parent = client.search_runs([experiment.experiment_id], "tags.kind = 'study'")[0]
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert logged == {f"{n}.{ext}" for n in names for ext in ("png", "pdf")}


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear line, exit status 2, nothing created
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_folders(study, scratch, template_db) -> dict[str, Path]:
    root = Path(tempfile.mkdtemp(prefix="bad-", dir=scratch))
    folders = {"study": study[0], "plain": root / "plain", "missing": root / "absent", "nodb": root / "nodb",
               "empty": root / "empty"}
    folders["plain"].mkdir()
    for name in ("nodb", "empty"):
        folders[name].mkdir()
        (folders[name] / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "name": name}))
    shutil.copyfile(template_db, folders["empty"] / "mlflow.db")
    client = mlflow.MlflowClient(default_uri(folders["empty"]))
    experiment = client.create_experiment("empty")  # experiment and parent run, no trial ran yet
    client.create_run(experiment, run_name="empty", tags={"kind": "study"})
    return folders


@pytest.mark.parametrize("args, expected", [
    (["table", "symetry", "{study}"], ["unknown table 'symetry'", "did you mean 'symmetry'",
                                       "alignment, symmetry, robust, merge, custom"]),
    (["table", "symmetry", "{study}", "--by", "model.archh"], ["unknown factor 'model.archh'",
                                                               "did you mean 'model.arch'", "align.method"]),
    (["table", "robust", "{study}", "--metric", "barrier/linear/test_loss"], ["unknown metric",
                                                                            "barrier_chord/linear/test_loss"]),
    (["table", "custom", "{study}", "--by", "model.arch"], ["needs --metric"]),
    (["table", "symmetry", "{study}", "--baseline", "nope"], ["unknown level of align.method 'nope'", "weight"]),
    (["table", "symmetry", "{study}", "--where", "model.arch=resnet"], ["unknown level of model.arch 'resnet'",
                                                                      "mlp, tinyten"]),
    (["plot", "{study}", "--by", "seed"], ["unknown factor 'seed'", "did you mean 'seeds'"]),
    (["plot", "{study}", "--where", "model.arch=resnet"], ["unknown level of model.arch 'resnet'"]),
    (["table", "symmetry", "{study}", "--name", "../x"], ["--name '../x'", "letters, digits"]),
    (["table", "symmetry", "{empty}"], ["no trial runs", "study 'empty'"]),
    (["table", "symmetry", "{nodb}"], ["no runs yet (no mlflow.db)"]),
    (["table", "symmetry", "{plain}"], ["not a study folder (no spec.yaml)"]),
    (["plot", "{missing}"], ["not a study folder (no such folder)"]),
])
def test_bad_input_is_a_usage_error(bad_folders, capsys, args, expected):
    code, out, err = _run_cli(capsys, *[a.format(**bad_folders) for a in args])
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    assert not (bad_folders["nodb"] / "mlflow.db").exists()


def test_a_comparison_the_grid_leaves_out_is_no_incomplete_pair():
    """exclude: drops aligned trials of asymmetric nets; their 'weight − none' difference is not part of the
    study, so it gets no row (instead of a row of 0 pairs and 'incomplete' ones), while a failed aligned run of
    a standard net still counts as incomplete."""
    from analysis.aggregate import paired_differences

    rows, planned = [], []
    for seeds in ("[0, 1]", "[2, 3]"):
        for symmetry, method in (("standard", "none"), ("standard", "weight"), ("w_asym", "none")):
            failed = (seeds, symmetry, method) == ("[2, 3]", "standard", "weight")
            value = {"none": 1.0, "weight": 0.25}[method] + (0.5 if seeds == "[2, 3]" else 0.0)
            key = {"study": "s", "seeds": seeds, "model.symmetry": symmetry, "align.method": method}
            planned.append(key)
            rows.append({**key, "status": "FAILED" if failed else "FINISHED", "x/m": math.nan if failed else value})
    runs, planned = pd.DataFrame(rows), pd.DataFrame(planned)
    paired = paired_differences(runs, "align.method", ["x/m"], by=["model.symmetry"], planned=planned)
    assert list(paired["model.symmetry"]) == ["standard"]
    assert paired.iloc[0]["n"] == 1 and paired.iloc[0]["incomplete"] == 1
    assert paired.iloc[0]["mean"] == pytest.approx(-0.75)
