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
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

import torch

__all__ = ["KEY_LENGTH", "EndpointStore", "StoredEndpoint", "endpoint_key", "canonical_json"]

logger = logging.getLogger(__name__)

#: Hex characters of sha256 kept in a key: 96 bits, collision-free for any realistic number of endpoints and
#: short enough for file names and MLflow tags.
KEY_LENGTH = 24
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{2,128}$")
_SIDE_FIELDS = ("key", "sha256", "description", "metadata", "created")
_BREAK_GUARD_STALE_S = 60.0
_RECHECK_DELAY_S = 0.1  # before a second look at an entry that failed verification  # a lock-breaking guard older than this was left by a crashed breaker

StateDict = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------------
def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (tuples -> lists); TypeError naming ``where`` for anything else.

    Strict on purpose: a value that json would coerce (an int dict key, a numpy int) or stringify could make two
    different descriptions share a key, or one description change key between library versions.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"description key {k!r} at {where or '<root>'} is a {type(k).__name__}, not a str")
            out[k] = _plain(v, f"{where}.{k}" if where else k)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"description value at {where or '<root>'} is not JSON-serialisable: "
                    f"{type(value).__name__} {value!r}")


def canonical_json(description: Mapping[str, Any]) -> str:
    """The one byte-stable text of a description: sorted keys, no whitespace, floats as Python's shortest repr."""
    if not isinstance(description, Mapping):
        raise TypeError(f"a description must be a mapping, got {type(description).__name__}")
    return json.dumps(_plain(description, ""), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def endpoint_key(description: Mapping[str, Any]) -> str:
    """First :data:`KEY_LENGTH` hex chars of sha256(canonical JSON of ``description``).

    Stable across processes, machines and dict order; any changed field gives a different key. Tuples hash like
    lists; 1 and 1.0 hash differently (normalise numbers before hashing, as ``Recipe.to_dict`` does).
    """
    return hashlib.sha256(canonical_json(description).encode("ascii")).hexdigest()[:KEY_LENGTH]


# ---------------------------------------------------------------------------------------------------------------
# Small file helpers
# ---------------------------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform/filesystem lets a directory be fsync'ed)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so readers see the old file, or all of the new one, never a prefix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


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


@dataclass(frozen=True)
class _LockInfo:
    token: str | None
    pid: int | None
    host: str | None
    age_s: float


def _host_identity() -> str:
    """Hostname plus PID namespace: containers sharing a hostname (host networking) have separate PID spaces,
    so a pid is only meaningful (checkable with kill 0) when both match."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}/pidns:{namespace}"


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
        sidecar_description = _plain(description, "")  # TypeError before anything is written
        buffer = io.BytesIO()
        torch.save(_cpu_state(state_dict), buffer)
        data = buffer.getvalue()
        sidecar = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "description": sidecar_description,
                   "metadata": dict(metadata or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = json.dumps(sidecar, indent=1, sort_keys=True, default=_json_default).encode("utf-8")
        weights.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(weights, data)
        _atomic_write(self.sidecar_path(key), text)
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
        lock = self.lock_path(key)
        lock.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            token = self._try_acquire(lock)
            if token is not None:
                break
            if self.contains(key):
                stored = self.get(key)
                if stored is not None:
                    yield stored
                    return
            self._break_if_stale(lock)
            if deadline is not None and time.monotonic() >= deadline:
                info = self._read_lock(lock)
                holder = "unknown" if info is None else f"pid {info.pid} on {info.host}, age {info.age_s:.0f}s"
                raise TimeoutError(f"gave up after {timeout:.0f}s waiting for endpoint {key}: another process "
                                   f"holds {lock} ({holder}); if it is dead, delete the lock file")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lock, token, stop), daemon=True,
                                name=f"store-lock-{key[:8]}")
        beat.start()
        try:
            # Someone may have finished between our first look and taking the lock.
            yield self.get(key)
        finally:
            stop.set()
            beat.join()
            self._release(lock, token)

    def _try_acquire(self, lock: Path) -> str | None:
        """Create the lock file exclusively; its token if we now hold it, else None."""
        token = uuid.uuid4().hex
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            payload = {"token": token, "pid": os.getpid(), "hostname": socket.gethostname(), "host": _host_identity(),
                       "time": time.time()}
            os.write(fd, json.dumps(payload).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return token

    def _heartbeat(self, lock: Path, token: str, stop: threading.Event) -> None:
        """Touch the lock while ``create`` runs, so long trainings never look stale."""
        interval = min(self.stale_after_s / 4.0, 60.0)
        while not stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(lock)

    def _release(self, lock: Path, token: str) -> None:
        """Remove the lock only if it is still ours (it may have been broken as stale and retaken)."""
        info = self._read_lock(lock)
        if info is not None and info.token == token:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        else:
            logger.warning("lock %s was taken over while we held it (judged stale?); leaving it alone", lock)

    @staticmethod
    def _read_lock(lock: Path) -> _LockInfo | None:
        try:
            age = time.time() - lock.stat().st_mtime
            raw = lock.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            return _LockInfo(token=str(info["token"]), pid=int(info["pid"]), host=str(info["host"]), age_s=age)
        except (ValueError, KeyError, TypeError):  # being written right now, or a crash mid-write
            return _LockInfo(token=None, pid=None, host=None, age_s=age)

    def _stale_reason(self, info: _LockInfo) -> str | None:
        if info.age_s > self.stale_after_s:
            return f"not refreshed for {info.age_s:.0f}s (> {self.stale_after_s:.0f}s)"
        if info.pid is not None and info.host == _host_identity() and not _pid_alive(info.pid):
            return f"its holder, pid {info.pid} on this host, is dead"
        return None

    def _break_if_stale(self, lock: Path) -> bool:
        """Remove a stale lock. A guard file makes judging and removing one step, so two waiters cannot both
        break it and the second remove the lock the first has just taken."""
        info = self._read_lock(lock)
        if info is None or self._stale_reason(info) is None:
            return False
        guard = lock.with_name(lock.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - guard.stat().st_mtime > _BREAK_GUARD_STALE_S:
                    guard.unlink()
            return False
        try:
            again = self._read_lock(lock)
            reason = None if again is None or again.token != info.token else self._stale_reason(again)
            if reason is None:
                return False
            logger.warning("breaking stale lock %s: %s", lock, reason)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            return True
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists on this host (permission errors mean it exists but is someone else's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        return True
    return True
