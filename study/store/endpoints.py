"""Content-addressed store of trained endpoints: each endpoint is trained once and read by every pair trial.

An endpoint's key is a hash of its *description*: everything that determines the trained weights (data set and
options, arch, width, symmetry and its options/mask_seed, training recipe including PGD, seed, recipe version).
Layout under ``root``::

    <key[:2]>/<key>.pt     torch.save'd state dict (CPU tensors), written atomically
    <key[:2]>/<key>.json   sidecar: {"key", "sha256" of the .pt bytes, "description", "metadata", "created"}
    <key[:2]>/<key>.lock   present only while some process is training the endpoint

Why these choices:
- The store is shared by concurrent Ray trials, possibly on several hosts over a shared filesystem, so every
  write is tmp-file + fsync + ``os.replace`` (readers see a whole file or none), the .pt is written before its
  sidecar (a sidecar means the weights are complete), and training is guarded by an ``O_CREAT | O_EXCL`` lock
  file so an endpoint is never trained twice at the same time.
- Files are loaded with ``torch.load(weights_only=True)`` only, after checking the sidecar's sha256: a
  truncated, corrupted or foreign file is moved aside (``<name>.corrupt-<timestamp>``), logged, and reported as
  absent so the caller retrains -- never silently loaded, never executed.
- A lock is kept fresh by a heartbeat (its mtime is touched while ``create`` runs), so ``stale_after_s`` measures
  time since the holder was last alive, not how long training takes; a lock whose holder died on this host is
  broken at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

import torch

from study.common.files import atomic_write
from study.common.identity import canonical_json, plain
from study.store.lock import HeartbeatLock

__all__ = ["EndpointStore", "StoredEndpoint"]

logger = logging.getLogger(__name__)

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{2,128}$")
_SIDE_FIELDS = ("key", "sha256", "description", "metadata", "created")
_RECHECK_DELAY_S = 0.1  # before a second look at an entry that failed verification

StateDict = Mapping[str, Any]


def _json_default(value: Any) -> Any:
    """Metadata (training histories) may hold numpy/torch scalars or paths; store them as plain values."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    # Metadata is descriptive and is written after hours of training: keep a repr rather than lose the endpoint.
    logger.warning("metadata value of type %s is not JSON-serialisable; storing its repr", type(value).__name__)
    return repr(value)


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _cpu_state(state_dict: StateDict) -> OrderedDict[str, Any]:
    """Detached CPU copies (compact storages, no autograd, no device), keeping ``_metadata`` (module versions)."""
    out: OrderedDict[str, Any] = OrderedDict(
        (k, v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v) for k, v in state_dict.items())
    meta = getattr(state_dict, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


class _Corrupt(Exception):
    """A stored endpoint failed a check; the message says which."""


# ---------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StoredEndpoint:
    """A verified endpoint read from the store (tensors on CPU)."""

    key: str
    state_dict: OrderedDict[str, Any]
    description: dict[str, Any]
    metadata: dict[str, Any]
    path: Path
    created: str = ""


class EndpointStore:
    """Endpoints under ``root``; safe for concurrent processes on one machine or on a shared filesystem.

    ``stale_after_s``: a lock not refreshed for this long is broken (the holder refreshes it every
    ``stale_after_s / 4``, at most every minute). ``poll_interval_s``/``timeout_s``: how often and how long
    :meth:`get_or_create` waits for another process's training (``timeout_s=None`` waits indefinitely).
    """

    def __init__(self, root: str | os.PathLike[str], *, stale_after_s: float = 600.0,
                 poll_interval_s: float = 2.0, timeout_s: float | None = 24 * 3600.0) -> None:
        if stale_after_s <= 0 or poll_interval_s <= 0 or (timeout_s is not None and timeout_s < 0):
            raise ValueError("stale_after_s and poll_interval_s must be > 0, timeout_s >= 0 or None")
        self.root = Path(root)
        self.stale_after_s = float(stale_after_s)
        self.poll_interval_s = float(poll_interval_s)
        self.timeout_s = None if timeout_s is None else float(timeout_s)

    def __repr__(self) -> str:
        return f"EndpointStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------------------------
    def _base(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise ValueError(f"invalid endpoint key {key!r} (expected 2-128 characters of [A-Za-z0-9_-])")
        return self.root / key[:2] / key

    def weights_path(self, key: str) -> Path:
        return self._base(key).with_suffix(".pt")

    def sidecar_path(self, key: str) -> Path:
        return self._base(key).with_suffix(".json")

    def lock_path(self, key: str) -> Path:
        return self._base(key).with_suffix(".lock")

    # -- queries -------------------------------------------------------------------------------------------------
    def contains(self, key: str) -> bool:
        """Both files exist (cheap: no read, no hash). :meth:`get` may still find them corrupt."""
        return self.weights_path(key).is_file() and self.sidecar_path(key).is_file()

    def keys(self) -> list[str]:
        """Sorted keys of complete entries (weights and sidecar both present)."""
        if not self.root.is_dir():
            return []
        found = []
        for sidecar in self.root.glob("*/*.json"):
            key = sidecar.stem
            if not sidecar.name.startswith(".") and _KEY_PATTERN.match(key) and sidecar.with_suffix(".pt").is_file():
                found.append(key)
        return sorted(found)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.contains(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    # -- writing -------------------------------------------------------------------------------------------------
    def put(self, key: str, state_dict: StateDict, *, description: Mapping[str, Any],
            metadata: Mapping[str, Any] | None = None) -> Path:
        """Store ``state_dict`` (moved to CPU) under ``key``; returns the .pt path.

        The .pt is written first and the sidecar last, both atomically, so a crash leaves either nothing visible
        or a complete, verifiable entry.
        """
        weights = self.weights_path(key)
        sidecar_description = plain(description)  # TypeError before anything is written
        buffer = io.BytesIO()
        torch.save(_cpu_state(state_dict), buffer)
        data = buffer.getvalue()
        sidecar = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "description": sidecar_description,
                   "metadata": dict(metadata or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = json.dumps(sidecar, indent=1, sort_keys=True, default=_json_default).encode("utf-8")
        weights.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(weights, data)
        atomic_write(self.sidecar_path(key), text)
        logger.debug("stored endpoint %s (%d bytes)", key, len(data))
        return weights

    # -- reading -------------------------------------------------------------------------------------------------
    def get(self, key: str) -> StoredEndpoint | None:
        """The verified endpoint, or None if it is absent or was corrupt (then moved aside, with a warning)."""
        try:
            return self._read_verified(key)
        except FileNotFoundError:
            return None
        except _Corrupt as first:
            # A concurrent writer may have replaced one file between our two reads; look once more, after it
            # has had time to finish, before declaring a good endpoint corrupt.
            time.sleep(_RECHECK_DELAY_S)
            try:
                return self._read_verified(key)
            except FileNotFoundError:
                return None
            except _Corrupt:
                self._quarantine(key, str(first))
                return None

    def _read_verified(self, key: str) -> StoredEndpoint:
        weights, sidecar_path = self.weights_path(key), self.sidecar_path(key)
        side_bytes = sidecar_path.read_bytes()  # FileNotFoundError -> absent (an interrupted put, or never)
        data = weights.read_bytes()
        try:
            side = json.loads(side_bytes)
        except ValueError as error:
            raise _Corrupt(f"{sidecar_path}: unreadable sidecar ({error})") from None
        if not isinstance(side, dict) or any(f not in side for f in _SIDE_FIELDS):
            raise _Corrupt(f"{sidecar_path}: sidecar lacks fields {[f for f in _SIDE_FIELDS if f not in side]}"
                           if isinstance(side, dict) else f"{sidecar_path}: sidecar is not an object")
        if side["key"] != key:
            raise _Corrupt(f"{sidecar_path}: sidecar is for key {side['key']!r}, not {key!r}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != side["sha256"]:
            raise _Corrupt(f"{weights}: sha256 {digest[:12]}… does not match the sidecar's "
                           f"{str(side['sha256'])[:12]}… (truncated or modified file)")
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as error:  # noqa: BLE001 - any failure to load safely means "not a usable endpoint"
            raise _Corrupt(f"{weights}: not loadable as weights only ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''})") from None
        if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
            raise _Corrupt(f"{weights}: holds a {type(state).__name__}, not a state dict")
        return StoredEndpoint(key=key, state_dict=state, description=side["description"],
                              metadata=side["metadata"], path=weights, created=str(side["created"]))

    def _quarantine(self, key: str, reason: str) -> None:
        """Move the entry's files aside (kept for inspection) so the next attempt retrains from scratch."""
        suffix = f".corrupt-{_timestamp()}"
        moved = []
        for path in (self.weights_path(key), self.sidecar_path(key)):
            target = path.with_name(path.name + suffix)
            try:
                os.replace(path, target)
                moved.append(str(target))
            except FileNotFoundError:  # another reader quarantined it first
                pass
        logger.warning("corrupt endpoint %s: %s; moved aside to %s, it will be retrained",
                       key, reason, ", ".join(moved) or "(already moved)")

    # -- train once ----------------------------------------------------------------------------------------------
    def get_or_create(self, key: str, create: Callable[[], tuple[StateDict, Mapping[str, Any]]], *,
                      description: Mapping[str, Any], timeout_s: float | None | EllipsisType = ...,
                      poll_interval_s: float | None = None) -> tuple[StoredEndpoint, bool]:
        """The stored endpoint, training it with ``create() -> (state_dict, metadata)`` if needed.

        Returns ``(endpoint, created)``. Across threads, processes and hosts sharing ``root``, ``create`` runs at
        most once at a time per key; waiters poll until the entry appears or the lock is released, then read it
        (or train, if the holder failed). Raises TimeoutError after ``timeout_s`` of waiting, and ValueError if
        the stored description differs from ``description`` (the key was not derived from it).
        """
        timeout = self.timeout_s if timeout_s is ... else timeout_s
        poll = self.poll_interval_s if poll_interval_s is None else float(poll_interval_s)
        stored = self.get(key)
        if stored is None:
            with self._lock(key, timeout, poll) as stored:
                if stored is None:  # we hold the lock and the entry is still missing: train it
                    state, metadata = create()
                    self.put(key, state, description=description, metadata=metadata)
                    stored = self.get(key)
                    if stored is None:
                        raise RuntimeError(f"endpoint {key} could not be read back right after writing it "
                                           f"to {self.weights_path(key)}")
                    self._check_description(stored, description)
                    return stored, True
        self._check_description(stored, description)
        return stored, False

    @staticmethod
    def _check_description(stored: StoredEndpoint, description: Mapping[str, Any]) -> None:
        if canonical_json(stored.description) != canonical_json(description):
            raise ValueError(f"endpoint {stored.key} in {stored.path} was stored for a different description "
                             f"than the one given; refusing to use it")

    # -- locking -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, key: str, timeout: float | None, poll: float) -> Iterator[StoredEndpoint | None]:
        """Hold ``key``'s lock (yielding None), or yield the entry if another process stored it meanwhile."""
        lock = HeartbeatLock(self.lock_path(key), stale_after_s=self.stale_after_s)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            token = lock.try_acquire()
            if token is not None:
                break
            if self.contains(key):
                stored = self.get(key)
                if stored is not None:
                    yield stored
                    return
            lock.break_if_stale()
            if deadline is not None and time.monotonic() >= deadline:
                info = lock.read()
                holder = "unknown" if info is None else f"pid {info.pid} on {info.host}, age {info.age_s:.0f}s"
                raise TimeoutError(f"gave up after {timeout:.0f}s waiting for endpoint {key}: another process "
                                   f"holds {lock.path} ({holder}); if it is dead, delete the lock file")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        with lock.heartbeat(token):
            # Someone may have finished between our first look and taking the lock.
            yield self.get(key)
