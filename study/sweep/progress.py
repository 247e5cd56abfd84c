"""The console while a study runs: ``[pairs] 12/72 done, 2 running, 0 failed, 58 pending, ETA 3m10s``.

On a terminal the line is redrawn in place; in logs and pipes one line is printed per change of the counts.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

from ray.tune import Callback


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressLine:
    """One status line for a stage's trials."""

    def __init__(self, stream=sys.stderr, interval_s: float = 1.0):
        self.stream, self.interval_s = stream, interval_s
        self._last, self._start, self._shown = 0.0, time.time(), ""
        self._tty = hasattr(stream, "isatty") and stream.isatty()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment; streams do not pickle
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr

    def callback(self, stage: str) -> Callback:
        return _ProgressCallback(self, stage)

    def restart(self) -> None:
        self._start, self._shown = time.time(), ""

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\n")

    def show(self, stage: str, trials: list[Any], force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        counts = {s: sum(t.status == s for t in trials) for s in ("TERMINATED", "RUNNING", "ERROR", "PENDING")}
        done, total = counts["TERMINATED"], len(trials)
        elapsed = now - self._start
        eta = "?" if done == 0 else format_duration(elapsed / done * (total - done - counts["ERROR"]))
        status = (f"[{stage}] {done}/{total} done, {counts['RUNNING']} running, {counts['ERROR']} failed, "
                  f"{counts['PENDING']} pending")
        if self._tty:
            self.stream.write(f"\r{status}, elapsed {format_duration(elapsed)}, ETA {eta}   ")
        elif status != self._shown:  # logs and pipes get one line per change, not a carriage-return storm
            self.stream.write(f"{status}, elapsed {format_duration(elapsed)}, ETA {eta}\n")
        self._shown = status
        self.stream.flush()


class _ProgressCallback(Callback):
    def __init__(self, line: ProgressLine, stage: str):
        self.line, self.stage = line, stage

    def setup(self, **info):
        self.line.restart()  # also after a restore (callbacks are unpickled)

    def on_step_end(self, iteration, trials, **info):
        self.line.show(self.stage, trials)

    def on_experiment_end(self, trials, **info):
        self.line.show(self.stage, trials, force=True)
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


def install_one_line_trial_errors() -> None:
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, OneLineTrialErrors) for f in logger.filters):
        logger.addFilter(OneLineTrialErrors())
