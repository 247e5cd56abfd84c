"""The console's progress display: true counts (after Ctrl-C too), running trials' phases on a terminal, plain
lines without carriage returns or colour codes in pipes, and no Tune interrupt chatter."""

from __future__ import annotations

import io
import os
import shutil
import logging
from dataclasses import dataclass, field

from study.sweep.progress import NoInterruptChatter, ProgressLine, install_one_line_trial_errors, phase_of


@dataclass
class FakeTrial:
    name: str
    status: str
    last_result: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trials() -> list[FakeTrial]:
    return [FakeTrial("a", "TERMINATED", {"final": 1, "training_iteration": 3}),
            FakeTrial("b", "RUNNING", {"phase": "curve", "epoch": 2, "epochs": 4, "training_iteration": 5}),
            FakeTrial("c", "TERMINATED", {"phase": "endpoint", "epoch": 1, "training_iteration": 1}),  # cut short
            FakeTrial("d", "TERMINATED", {}),  # stopped before it started
            FakeTrial("e", "ERROR", {"training_iteration": 1}),
            FakeTrial("f", "PENDING")]


def test_counts_while_running_and_after_an_interrupt():
    line = ProgressLine(io.StringIO())
    assert line.status("pairs", _trials()) == "[pairs] 1/6 done, 1 running, 1 failed, 1 pending"
    assert line.status("pairs", _trials(), ended=True) == "[pairs] 1/6 done, 1 failed, 2 interrupted, 2 not started"
    finished = [FakeTrial("a", "TERMINATED", {"final": 1}), FakeTrial("e", "ERROR")]
    assert line.status("pairs", finished, ended=True) == "[pairs] 1/2 done, 0 running, 1 failed, 0 pending"


def test_pipes_get_plain_lines_and_terminals_the_running_phases(monkeypatch):
    # the line is cut to the terminal's width, which must not be the test runner's (pytest-xdist workers see 80)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(120, 24): os.terminal_size((200, 24)))
    piped = io.StringIO()
    line = ProgressLine(piped, interval_s=0)
    line.show("pairs", _trials())
    line.show("pairs", _trials())  # same counts: no second line
    line.show("pairs", _trials(), ended=True)
    text = piped.getvalue()
    assert "\r" not in text and "\x1b" not in text and len(text.splitlines()) == 2
    assert text.splitlines()[1].startswith("[pairs] 1/6 done, 1 failed, 2 interrupted, 2 not started, elapsed")

    terminal = Terminal()
    line = ProgressLine(terminal, interval_s=0)
    line.show("pairs", _trials())
    assert terminal.getvalue().startswith("\r") and "| b curve 2/4" in terminal.getvalue()
    assert phase_of(FakeTrial("x", "RUNNING")) == "starting"


def test_a_resumed_driver_decides_for_its_own_stream():
    import pickle

    line = pickle.loads(pickle.dumps(ProgressLine(Terminal())))  # Tune pickles callbacks with its state
    assert line._tty is False  # the restored line writes to this process's stderr: not a terminal under pytest


def test_tune_interrupt_chatter_is_dropped(caplog):
    install_one_line_trial_errors()
    logger = logging.getLogger("ray.tune.tune")
    assert any(isinstance(f, NoInterruptChatter) for f in logger.filters)
    with caplog.at_level(logging.WARNING, logger="ray.tune.tune"):
        logger.warning("Experiment has been interrupted, but the most recent state was saved.\nResume experiment "
                       "with: Tuner.restore(path=...)")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
