"""Faults a cluster really has, each through the real ``study`` command, each followed by the integrity audit.

Run with ``make test-faults`` (they start Ray many times: several minutes on 2 cores). Every scenario ends with
the study intact (tests/support/audit.py) or with one clear refusal and a folder that a later ``study resume``
brings to an intact study. No scenario may print a Python traceback.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.audit import integrity_problems

_spec = importlib.util.spec_from_file_location("chaos", Path(__file__).resolve().parents[2] / "bench" / "chaos.py")
chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)

pytestmark = [pytest.mark.faults, pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux")]

ROOT = Path(__file__).resolve().parents[2]
# 3 endpoints, 6 pair trials; endpoints take a few seconds each, so a signal lands inside the endpoint stage.
SPEC = {"name": "faults",
        "trial": {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125},
                  "train": {"epochs": 150, "batch_size": 128, "augment": False}, "eval": {"points": 3},
                  "curve": {"kind": "bezier", "train": {"epochs": 20, "batch_size": 128, "augment": False}},
                  "device": "cpu"},
        "factors": {"seeds": chaos.ring(3), "align.method": ["none", "weight"]},
        "resources": {"cpu": 1}, "execution": {"max_failures": 1}}


class Study:
    """A study folder under ``tmp`` driven by ``study`` subprocesses with their own short RAY_TMPDIR."""

    def __init__(self, tmp: Path, spec: dict[str, Any] | None = None, logs: Path | None = None):
        self.tmp, self.spec = tmp, copy.deepcopy(spec or SPEC)
        self.log_dir = logs or tmp
        self.spec_file = tmp / "spec.yaml"
        self.spec_file.write_text(yaml.safe_dump(self.spec))
        self.dir = tmp / "out" / self.spec["name"]
        self.ray_tmp = chaos.short_tmp("sft-")
        self.env = chaos._env(self.ray_tmp)
        self.logs = 0

    def start(self, *args: str, faults: bool = False) -> tuple[subprocess.Popen, Path]:
        self.logs += 1
        log = self.log_dir / f"cli-{self.logs}.log"
        return chaos.study_cli(list(args), env=self.env, log=log, faults=faults), log

    def run(self, *args: str, timeout: float = 600) -> tuple[int, str]:
        proc, log = self.start(*args)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            locks = {str(p.relative_to(self.dir)): p.read_text()[:200] for p in self.dir.rglob("*.lock")}
            raise AssertionError(f"`study {' '.join(args)}` hung for {timeout:.0f}s; locks {locks}; "
                                 f"its output:\n{log.read_text()[-3000:]}") from None
        return rc, log.read_text()

    def first_run(self, *extra: str) -> tuple[subprocess.Popen, Path]:
        return self.start("run", str(self.spec_file), "--out", str(self.tmp / "out"), "--quiet", *extra)

    def wait_until(self, predicate, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
        start = time.time()
        while not predicate():
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the driver ended (exit {proc.returncode}) before the awaited moment")
            if time.time() - start > timeout:
                raise AssertionError("timed out waiting")
            time.sleep(0.2)

    def runs(self, kind: str, status: str) -> int:
        return chaos.live_runs(self.dir)[(kind, status)]

    def results(self) -> dict[str, float]:
        return {p.parent.name: p.stat().st_mtime for p in (self.dir / "artifacts").glob("*/result.json")}

    def audit(self) -> list[str]:
        return integrity_problems(self.dir, self.spec, status_env=self.env)

    def close(self) -> None:
        chaos.kill_processes([pid for pid, _ in chaos.ray_processes(self.ray_tmp)])


@pytest.fixture
def study(tmp_path):
    s = Study(tmp_path)
    yield s
    s.close()


def _clean(output: str) -> None:
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_the_endpoint_stage_stops_the_study_before_the_pair_stage(study, sig, code):
    proc, log = study.first_run()
    study.wait_until(lambda: study.runs("endpoint", "RUNNING") >= 1, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code, log.read_text()[-3000:]
    output = log.read_text()
    assert "study resume" in output
    assert not (study.dir / "artifacts").exists()            # no pair trial started after the stop
    assert chaos.live_runs(study.dir)[("trial", "RUNNING")] == 0
    rc, out = study.run("resume", str(study.dir), "--quiet")
    assert rc == 0, out[-3000:]
    _clean(out)
    assert study.audit() == []


def test_sigterm_in_the_pair_stage_stops_and_resume_finishes_without_recomputing(study):
    proc, log = study.first_run()
    study.wait_until(lambda: study.runs("trial", "FINISHED") >= 1 and study.runs("trial", "RUNNING") >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    before = study.results()
    rc, out = study.run("resume", str(study.dir), "--quiet")
    assert rc == 0, out[-3000:]
    _clean(out)
    assert {k: v for k, v in study.results().items() if k in before} == before   # finished trials not redone
    assert study.audit() == []


def test_a_second_driver_is_refused_while_the_first_runs(study):
    first, log = study.first_run()
    study.wait_until(lambda: (study.dir / ".driver.lock").exists() and study.runs("endpoint", "RUNNING") >= 1,
                     first)
    rc, out = study.run("resume", str(study.dir), "--quiet")
    assert rc == 2 and "another driver is running this study" in out and f"pid {first.pid}" in out, out
    _clean(out)
    rc, out = study.run("run", str(study.spec_file), "--out", str(study.tmp / "out"), "--quiet")
    assert rc == 2 and "another driver is running this study" in out, out
    assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert study.audit() == []


def test_two_drivers_started_together_run_the_study_once(study):
    a, log_a = study.first_run()
    b, log_b = study.first_run()
    codes = sorted([a.wait(timeout=600), b.wait(timeout=600)])
    outputs = log_a.read_text() + log_b.read_text()
    assert codes == [0, 2], outputs[-3000:]
    assert "another driver is running this study" in outputs
    _clean(outputs)
    assert study.audit() == []


def test_a_driver_killed_after_a_trial_finished_logs_that_result_once_on_resume(study):
    proc, _ = study.first_run()
    study.wait_until(lambda: len(study.results()) >= 1, proc)   # a result record exists; MLflow may lag behind
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = study.results()
    rc, out = study.run("resume", str(study.dir), "--quiet")
    assert rc == 0, out[-3000:]
    _clean(out)
    assert {k: v for k, v in study.results().items() if k in before} == before
    assert study.audit() == []


def _finished(study: Study) -> None:
    proc, log = study.first_run()
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def test_a_deleted_endpoint_is_reported_and_retrained(study):
    _finished(study)
    victim = sorted((study.dir / "endpoints").glob("*/*.pt"))[0]
    victim.unlink()
    rc, out = study.run("status", str(study.dir))
    assert rc == 0 and "1 missing" in out, out
    rc, out = study.run("resume", str(study.dir), "--quiet")
    assert rc == 0, out[-3000:]
    assert victim.exists()
    assert study.audit() == []


def test_a_damaged_or_deleted_mlflow_db_is_detected_and_its_runs_rebuilt_from_the_folder(study):
    """Each damage in turn on one finished study (each rebuild leaves it intact, the next damage's start):
    emptied, cut in half, overwritten with garbage, deleted. Reading commands never crash on it (and `status`
    never recreates a deleted one), `resume` refuses with the way out, `--rebuild-tracking` rebuilds every run."""
    _finished(study)
    db = study.dir / "mlflow.db"
    for damage in ("empty", "half", "garbage", "deleted"):
        data = db.read_bytes()
        if damage == "deleted":
            db.unlink()
        else:
            db.write_bytes({"empty": b"", "half": data[: len(data) // 2], "garbage": b"\x00junk" * 1000}[damage])
        rc, out = study.run("table", "symmetry", str(study.dir))
        _clean(out)
        assert rc in (0, 2), (damage, out)
        rc, out = study.run("status", str(study.dir))
        _clean(out)
        assert rc in (0, 2) and "--rebuild-tracking" in out, (damage, out)
        if damage == "deleted":
            assert rc == 0 and "missing" in out and not db.exists(), out
        rc, out = study.run("resume", str(study.dir), "--quiet")
        expected = "is missing, but this study has run before" if damage == "deleted" else "6 finished trial(s)"
        assert rc == 2 and "--rebuild-tracking" in out and expected in out, (damage, out)
        _clean(out)
        damaged_copies = len(list(study.dir.glob("mlflow.db.damaged-*")))
        rc, out = study.run("resume", str(study.dir), "--quiet", "--rebuild-tracking")
        assert rc == 0, (damage, out[-3000:])
        if damage in ("half", "garbage"):  # a damaged file is kept aside (an empty one holds nothing to keep)
            assert len(list(study.dir.glob("mlflow.db.damaged-*"))) == damaged_copies + 1, damage
        assert study.audit() == [], damage


def _mount_tmpfs(target: Path, size: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                 str(target)], capture_output=True).returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_read_only_study_folder_gives_one_clear_error_and_stays_resumable(tmp_path):
    """Read-only for real: a tmpfs remounted read-only (root ignores file modes), else file modes."""
    mount = tmp_path / "mnt"
    mounted = _mount_tmpfs(mount, "64m")
    if not mounted and os.geteuid() == 0:
        pytest.skip("root without mount(2): no way to make a folder read-only for this process")
    try:
        s = Study(mount, logs=tmp_path)
        _finished(s)
        (s.dir / "artifacts" / sorted(os.listdir(s.dir / "artifacts"))[0] / "result.json").unlink()  # work left
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        else:
            for path in [s.dir, *s.dir.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
        for command in (["resume", str(s.dir), "--quiet"], ["status", str(s.dir)], ["plot", str(s.dir)]):
            rc, out = s.run(*command)
            _clean(out)
            assert rc in (0, 2), (command, out)
        rc, out = s.run("resume", str(s.dir), "--quiet")
        assert rc == 2 and ("read-only" in out.lower() or "permission" in out.lower()), out
        if mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        else:
            for path in [s.dir, *s.dir.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)
        rc, out = s.run("resume", str(s.dir), "--quiet")
        assert rc == 0, out[-3000:]
        assert s.audit() == []
        s.close()
    finally:
        if mounted:
            _umount(mount)


def test_a_full_disk_mid_study_gives_one_clear_error_and_resume_duplicates_nothing(tmp_path):
    mount = tmp_path / "mnt"
    if not _mount_tmpfs(mount, "6m"):
        pytest.skip("needs root and mount(2) for a small tmpfs")
    try:
        s = Study(mount, logs=tmp_path)
        proc, log = s.first_run()
        s.wait_until(lambda: s.runs("endpoint", "FINISHED") >= 1, proc)
        filler = mount / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # fill it up
        rc = proc.wait(timeout=600)
        output = log.read_text()
        _clean(output)
        filler.unlink()
        rc, out = s.run("resume", str(s.dir), "--quiet")
        assert rc == 0, out[-3000:]
        _clean(out)
        assert s.audit() == []
        s.close()
    finally:
        _umount(mount)


def test_an_edited_grid_is_refused_with_a_diff_and_extended_explicitly(study):
    _finished(study)
    more = copy.deepcopy(study.spec)
    more["factors"]["seeds"] = [*more["factors"]["seeds"], [3, 4]]
    (study.dir / "spec.yaml").write_text(yaml.safe_dump(more))      # the user edits the study's spec
    rc, out = study.run("resume", str(study.dir), "--quiet")
    assert rc == 2 and "ran a different spec" in out and "+  - - 3" in out and "--extend" in out, out
    before = study.results()
    rc, out = study.run("resume", str(study.dir), "--quiet", "--extend")
    assert rc == 0, out[-3000:]
    study.spec = more
    assert study.audit() == []
    assert {k: v for k, v in study.results().items() if k in before} == before and len(study.results()) == 8
    fewer = copy.deepcopy(more)
    fewer["factors"]["seeds"] = fewer["factors"]["seeds"][:2]
    study.spec_file.write_text(yaml.safe_dump(fewer))
    rc, out = study.run("run", str(study.spec_file), "--out", str(study.tmp / "out"), "--quiet", "--extend")
    assert rc == 2 and "drops" in out, out


def test_resume_honours_its_own_flags(study):
    proc, log = study.first_run()
    study.wait_until(lambda: study.runs("endpoint", "RUNNING") >= 1, proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    resumed, log = study.start("resume", str(study.dir), "--quiet", "--max-concurrent", "1")
    peak = 0
    while resumed.poll() is None:
        counts = chaos.live_runs(study.dir)
        peak = max(peak, counts[("trial", "RUNNING")] + counts[("endpoint", "RUNNING")])
        time.sleep(0.2)
    assert resumed.returncode == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "\r" not in output and "done," not in output       # --quiet: no progress line
    assert peak == 1
    assert study.audit() == []


def test_injected_faults_are_retried_or_reported_and_the_audit_counts_them(study):
    (study.dir / ".faults").mkdir(parents=True)
    (study.dir / ".faults" / "once-0-1").touch()
    proc, log = study.start("run", str(study.spec_file), "--out", str(study.tmp / "out"), "--quiet", faults=True)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert study.audit() == []
    retried = chaos.audit(study.dir, study.spec)["trials_retried"]
    assert retried >= 1  # the injected failure happened and was retried
