"""The console while a study runs:
``[pairs] 12/72 done, 2 running, 0 failed, 58 pending, elapsed 1m02s, ETA 3m10s | mlp·w_asym·…·s0-1 curve 3/4``.

On a terminal the line is redrawn in place, cut to the terminal's width, with each running trial's phase and
epoch; in logs and pipes one plain line is printed per change of the counts (no carriage returns, no colours).
A trial counts as done when it reported its final result: after Ctrl-C the line says how many were interrupted.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
from typing import Any

from ray.tune import Callback


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _finished(trial: Any) -> bool:
    return trial.status == "TERMINATED" and bool((getattr(trial, "last_result", None) or {}).get("final"))


def _started(trial: Any) -> bool:
    """Whether a trial reported anything (a stopped trial that never did was never started)."""
    result = getattr(trial, "last_result", None) or {}
    return trial.status == "RUNNING" or any(k in result for k in ("phase", "final", "training_iteration"))


def phase_of(trial: Any) -> str:
    """What a running trial is doing, from its last report: ``endpoint 3/8``, ``curve 2/4``, ``starting``."""
    result = getattr(trial, "last_result", None) or {}
    phase = result.get("phase")
    if not phase:
        return "starting"
    epoch, epochs = result.get("epoch"), result.get("epochs")
    if isinstance(epoch, (int, float)):  # the epochs finished so far
        return f"{phase} {int(epoch)}/{int(epochs)}" if epochs else f"{phase} epoch {int(epoch)}"
    return str(phase)


class ProgressLine:
    """One status line for a stage's trials. Built anew by every driver run (never restored from Tune's state),
    so whether the stream is a terminal is decided by the run that shows it."""

    def __init__(self, stream=None, interval_s: float = 1.0):
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self._last, self._start, self._shown = 0.0, time.time(), ""
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment; streams do not pickle
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def callback(self, stage: str) -> Callback:
        return _ProgressCallback(self, stage)

    def note(self, text: str) -> None:
        """A line of its own (what the driver is about to do), shown at once."""
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def restart(self) -> None:
        self._start, self._shown = time.time(), ""

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def status(self, stage: str, trials: list[Any], *, ended: bool = False) -> str:
        """The counts: done (final result reported), running, failed, pending; at the end of an interrupted stage
        the trials that were cut short and those never started."""
        done = sum(_finished(t) for t in trials)
        failed = sum(t.status == "ERROR" for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        pending = sum(t.status in ("PENDING", "PAUSED") for t in trials)
        stopped = [t for t in trials if t.status == "TERMINATED" and not _finished(t)]  # stopped before the end
        text = f"[{stage}] {done}/{len(trials)} done"
        if ended and (running or stopped or pending):
            cut = running + sum(_started(t) for t in stopped)
            never = pending + sum(not _started(t) for t in stopped)
            return text + f", {failed} failed, {cut} interrupted" + (f", {never} not started" if never else "")
        return text + f", {running} running, {failed} failed, {pending} pending"

    def show(self, stage: str, trials: list[Any], force: bool = False, ended: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        status = self.status(stage, trials, ended=ended)
        done = sum(_finished(t) for t in trials)
        left = sum(t.status in ("RUNNING", "PENDING", "PAUSED") for t in trials)
        elapsed = now - self._start
        timing = f"elapsed {format_duration(elapsed)}"
        if not ended:
            timing += ", ETA " + ("?" if done == 0 else format_duration(elapsed / done * left))
        if self._tty:
            running = [f"{t} {phase_of(t)}" for t in trials if t.status == "RUNNING"]
            line = f"{status}, {timing}" + (" | " + ", ".join(running) if running and not ended else "")
            width = max(20, shutil.get_terminal_size((120, 24)).columns - 1)
            line = line if len(line) <= width else line[:width - 1] + "…"
            self.stream.write(f"\r\x1b[2K{line}")
        elif status != self._shown:  # logs and pipes get one line per change, not a carriage-return storm
            self.stream.write(f"{status}, {timing}\n")
        self._shown = status
        self.stream.flush()


class _ProgressCallback(Callback):
    def __init__(self, line: ProgressLine, stage: str):
        self.line, self.stage = line, stage

    def setup(self, **info):
        self.line.restart()

    def on_step_end(self, iteration, trials, **info):
        self.line.show(self.stage, trials)

    def on_experiment_end(self, trials, **info):
        self.line.show(self.stage, trials, force=True, ended=True)
        self.line.finish()


class OneLineTrialErrors(logging.Filter):
    """Ray Tune logs every failed trial attempt with its full traceback (~40 lines, with colour codes, in files
    too). The console gets one line instead: which trial, which attempt and the exception's last line; the full
    traceback stays in the trial's ``error.txt`` under ``ray_results/``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text = str(error).strip().splitlines()
            last = next((line for line in reversed(text) if line.strip()), type(error).__name__)
            record.msg = f"{record.getMessage()}: {_ANSI.sub('', last)[:300]}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class NoInterruptChatter(logging.Filter):
    """After Ctrl-C Ray Tune says it received the signal, that ``Tuner.restore(...)`` resumes the experiment (the
    study resumes with ``study resume``, never that way) and that it could not fetch metrics of the trials that
    never ran; the driver reports the interruption itself."""

    DROPPED = ("Stop signal received", "Experiment has been interrupted", "Training has been interrupted",
               "Failed to fetch metrics for")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED)


def install_one_line_trial_errors() -> None:
    """One line per failed trial attempt, and none of Tune's own interrupt messages (:class:`NoInterruptChatter`)."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, OneLineTrialErrors) for f in logger.filters):
        logger.addFilter(OneLineTrialErrors())
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoInterruptChatter) for f in logger.filters):
            logger.addFilter(NoInterruptChatter())
