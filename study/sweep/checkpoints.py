"""Training state of unfinished work, kept in the study folder so that any later attempt continues from it:
a Tune retry on another node, or a resumed study after the driver died (Tune's own checkpoints belong to one
Tune experiment; the folder outlives them all)."""

from __future__ import annotations

import io
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from study.common.files import atomic_write

log = logging.getLogger(__name__)


class FolderCheckpoints:
    """``<directory>/<name>.pt`` per piece of training; saved at most every ``interval_s`` seconds (a snapshot per
    epoch would cost more than small models' epochs), loaded with ``weights_only=True``."""

    def __init__(self, directory: Path, interval_s: float = 30.0):
        self.directory, self.interval_s, self._last = Path(directory), interval_s, time.monotonic()

    def load(self, name: str) -> dict[str, Any] | None:
        path = self.directory / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a partial or corrupted checkpoint must not wedge the trial
            log.warning("ignoring unreadable checkpoint %s (%s); %s starts over", path, error, name)
            return None
        log.info("resuming %s from %s", name, path)
        return state

    def save(self, name: str, state: dict[str, Any]) -> None:
        if time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.directory / f"{name}.pt", buffer.getvalue())

    def clear(self) -> None:
        """The work finished: its state is not needed any more."""
        shutil.rmtree(self.directory, ignore_errors=True)
