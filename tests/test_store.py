"""The endpoint store: exact round trips, integrity checks, weights-only loading and train-once locking."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from study.common.identity import canonical_json
from study.common.identity import content_key as endpoint_key
from study.store import EndpointStore, StoredEndpoint

DESCRIPTION = {"format": 1, "data": {"name": "digits", "augment": False}, "seed": 3,
               "model": {"arch": "mlp", "width": 0.5, "symmetry": "w_asym", "options": {"n_fix": 4}, "mask_seed": 7},
               "train": {"lr": 0.1, "epochs": 2, "attack": {"eps": 0.03137254901960784, "steps": 5}, "version": 2}}


def _state(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model.state_dict()


def _digest(state) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def _creator(calls: list[int], seed: int = 0, sleep: float = 0.0):
    def create():
        calls.append(1)
        time.sleep(sleep)
        return _state(seed), {"history": [{"epoch": 1, "loss": 0.5}], "seconds": 1.25}
    return create


def _pt_bytes(store: EndpointStore, key: str) -> bytes:
    return store.weights_path(key).read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------------
def test_key_is_independent_of_dict_order_and_tuple_vs_list():
    reordered = {k: DESCRIPTION[k] for k in reversed(list(DESCRIPTION))}
    reordered["model"] = dict(reversed(list(DESCRIPTION["model"].items())))
    assert endpoint_key(reordered) == endpoint_key(DESCRIPTION)
    assert endpoint_key({"a": (1, 2)}) == endpoint_key({"a": [1, 2]})
    key = endpoint_key(DESCRIPTION)
    assert len(key) == 24 and int(key, 16) >= 0


@pytest.mark.parametrize("path, value", [
    (("seed",), 4), (("model", "width"), 1.0), (("model", "mask_seed"), 8), (("model", "symmetry"), "standard"),
    (("model", "options", "n_fix"), 5), (("train", "attack", "eps"), 0.0313725490196078),
    (("train", "attack"), None), (("train", "version"), 3), (("data", "augment"), True),
])
def test_key_changes_when_any_field_changes(path, value):
    changed = json.loads(json.dumps(DESCRIPTION))
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert endpoint_key(changed) != endpoint_key(DESCRIPTION)


def test_non_serialisable_description_names_the_offending_key():
    with pytest.raises(TypeError, match=r"model\.options\.fn"):
        endpoint_key({"model": {"options": {"fn": object()}}})
    with pytest.raises(TypeError, match="not a str"):
        endpoint_key({"model": {1: "x"}})
    with pytest.raises(TypeError, match="mapping"):
        endpoint_key([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Round trips, across processes too
# ---------------------------------------------------------------------------------------------------------------
def test_round_trip_is_exact(tmp_path):
    store = EndpointStore(tmp_path)
    key = endpoint_key(DESCRIPTION)
    state = _state()
    metadata = {"history": [{"epoch": 1, "loss": 0.25, "acc": torch.tensor(0.5)}], "seconds": 3.5, "params": 23}
    path = store.put(key, state, description=DESCRIPTION, metadata=metadata)
    assert path == tmp_path / key[:2] / f"{key}.pt" and path.with_suffix(".json").is_file()
    assert store.contains(key) and store.keys() == [key] and not store.contains("ab" + key[2:] + "x")
    got = store.get(key)
    assert isinstance(got, StoredEndpoint)
    assert list(got.state_dict) == list(state)
    for name, tensor in state.items():
        assert got.state_dict[name].dtype == tensor.dtype
        assert torch.equal(got.state_dict[name], tensor), name
    assert got.metadata == {"history": [{"epoch": 1, "loss": 0.25, "acc": 0.5}], "seconds": 3.5, "params": 23}
    assert canonical_json(got.description) == canonical_json(DESCRIPTION)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["key"] == key and side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the stored dict loads into the module it came from
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model.load_state_dict(got.state_dict)
    assert store.get("00" + "0" * 22) is None
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporaries left behind


def test_a_new_process_computes_the_same_key_and_reads_identical_weights(tmp_path):
    store = EndpointStore(tmp_path)
    key = endpoint_key(DESCRIPTION)
    store.put(key, _state(), description=DESCRIPTION, metadata={})
    child = (
        "import json, sys, hashlib\n"
        "from study.common.identity import content_key as endpoint_key\nfrom study.store import EndpointStore\n"
        "desc = json.loads(sys.argv[2])\n"
        "got = EndpointStore(sys.argv[1]).get(endpoint_key(desc))\n"
        "h = hashlib.sha256()\n"
        "for k in sorted(got.state_dict):\n"
        "    h.update(k.encode()); h.update(got.state_dict[k].contiguous().numpy().tobytes())\n"
        "print(endpoint_key(desc), h.hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a different str hash seed must not matter
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path), json.dumps(DESCRIPTION)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    child_key, child_digest = out.stdout.split()
    assert child_key == key
    assert child_digest == _digest(_state())


# ---------------------------------------------------------------------------------------------------------------
# Train once
# ---------------------------------------------------------------------------------------------------------------
def test_get_or_create_trains_once(tmp_path):
    store = EndpointStore(tmp_path)
    key, calls = endpoint_key(DESCRIPTION), []
    first, created = store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    assert created and calls == [1]
    second, created = EndpointStore(tmp_path).get_or_create(key, _creator(calls), description=DESCRIPTION)
    assert not created and calls == [1]
    assert _digest(first.state_dict) == _digest(second.state_dict) == _digest(_state())
    assert second.metadata["seconds"] == 1.25
    assert not store.lock_path(key).exists()


def test_get_or_create_refuses_an_entry_stored_for_another_description(tmp_path):
    store = EndpointStore(tmp_path)
    key = endpoint_key(DESCRIPTION)
    store.put(key, _state(), description={**DESCRIPTION, "seed": 99}, metadata={})
    with pytest.raises(ValueError, match="different description"):
        store.get_or_create(key, _creator([]), description=DESCRIPTION)


def test_concurrent_get_or_create_trains_once(tmp_path):
    key, calls = endpoint_key(DESCRIPTION), []
    results: list[tuple[StoredEndpoint, bool]] = []
    errors: list[BaseException] = []

    def worker():
        try:
            store = EndpointStore(tmp_path, poll_interval_s=0.02, timeout_s=30)
            results.append(store.get_or_create(key, _creator(calls, sleep=0.4), description=DESCRIPTION))
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(calls) == 1
    assert sorted(created for _, created in results) == [False, False, True]
    assert len({_digest(r.state_dict) for r, _ in results}) == 1


def test_waiter_trains_when_the_holder_fails(tmp_path):
    key, calls = endpoint_key(DESCRIPTION), []
    store = EndpointStore(tmp_path, poll_interval_s=0.02, timeout_s=30)
    started = threading.Event()

    def failing():
        started.set()
        time.sleep(0.2)
        raise RuntimeError("diverged")

    def holder():
        with pytest.raises(RuntimeError, match="diverged"):
            store.get_or_create(key, failing, description=DESCRIPTION)

    thread = threading.Thread(target=holder)
    thread.start()
    started.wait(10)
    _, created = store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    thread.join(10)
    assert created and calls == [1]
    assert not store.lock_path(key).exists()


def test_heartbeat_keeps_a_long_training_from_looking_stale(tmp_path):
    key, calls = endpoint_key(DESCRIPTION), []
    # stale after 0.4 s, but training takes 1 s: the holder's heartbeat (every 0.1 s) must keep the lock alive
    stores = [EndpointStore(tmp_path, stale_after_s=0.4, poll_interval_s=0.02, timeout_s=30) for _ in range(2)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda s=s: results.append(
        s.get_or_create(key, _creator(calls, sleep=1.0), description=DESCRIPTION)[1])) for s in stores]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and sorted(results) == [False, True]


def _write_lock(store: EndpointStore, key: str, **payload) -> Path:
    lock = store.lock_path(key)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"token": "x", "time": time.time(), **payload}))
    return lock


def test_lock_of_a_dead_process_on_this_host_is_broken(tmp_path, caplog):
    from study.store.lock import host_identity as _host_identity

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = EndpointStore(tmp_path, poll_interval_s=0.02, timeout_s=10)
    key, calls = endpoint_key(DESCRIPTION), []
    _write_lock(store, key, pid=dead.pid, host=_host_identity())
    with caplog.at_level(logging.WARNING, logger="study.store"):
        _, created = store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    assert created and calls == [1]
    assert "breaking stale lock" in caplog.text and "is dead" in caplog.text


def test_old_lock_from_another_host_is_broken_and_a_fresh_one_times_out(tmp_path, caplog):
    store = EndpointStore(tmp_path, stale_after_s=60, poll_interval_s=0.02, timeout_s=0.3)
    key, calls = endpoint_key(DESCRIPTION), []
    lock = _write_lock(store, key, pid=1, host="elsewhere/pidns:1")
    with pytest.raises(TimeoutError, match=r"gave up after .* another process holds .*elsewhere"):
        store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    assert calls == [] and lock.exists()

    old = time.time() - 120
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="study.store"):
        _, created = store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    assert created and calls == [1] and "not refreshed" in caplog.text
    assert not lock.exists()


def test_a_lock_the_disk_refused_to_write_is_removed_and_an_unreadable_one_is_broken(tmp_path, monkeypatch, caplog):
    """A full disk creates the lock file but refuses its bytes (the CI failure of the full-disk fault scenario:
    an empty lock made the resumed study wait ``stale_after_s``)."""
    import errno

    from study.store import lock as lock_module

    store = EndpointStore(tmp_path, stale_after_s=600, poll_interval_s=0.02, timeout_s=5)
    key, calls = endpoint_key(DESCRIPTION), []
    real_write = os.write

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock_module.os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    monkeypatch.setattr(lock_module.os, "write", real_write)
    assert calls == [] and not store.lock_path(key).exists()

    lock = store.lock_path(key)          # what an older version, or a crash between create and write, leaves
    lock.write_text("")
    old = time.time() - 2 * lock_module.UNREADABLE_STALE_S
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="study.store"):
        _, created = store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    assert created and calls == [1] and "unreadable" in caplog.text


def test_a_lock_being_written_right_now_is_not_broken(tmp_path):
    from study.store.lock import HeartbeatLock

    lock = HeartbeatLock(tmp_path / "x.lock", stale_after_s=600)
    lock.path.write_text("")                     # just created, its bytes not yet written
    assert not lock.break_if_stale() and lock.path.exists()


# ---------------------------------------------------------------------------------------------------------------
# Corruption: detected, moved aside, retrained; never loaded
# ---------------------------------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_byte])
def test_damaged_weights_are_moved_aside_and_retrained(tmp_path, caplog, damage):
    store = EndpointStore(tmp_path)
    key, calls = endpoint_key(DESCRIPTION), []
    store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    weights = store.weights_path(key)
    damage(weights)
    with caplog.at_level(logging.WARNING, logger="study.store"):
        assert store.get(key) is None
    assert weights.name in caplog.text and "sha256" in caplog.text
    assert not store.contains(key)
    aside = sorted(p.name for p in weights.parent.iterdir() if ".corrupt-" in p.name)
    assert [n.split(".corrupt-")[0] for n in aside] == [f"{key}.json", f"{key}.pt"]
    _, created = store.get_or_create(key, _creator(calls), description=DESCRIPTION)
    assert created and calls == [1, 1]
    assert _digest(store.get(key).state_dict) == _digest(_state())


def test_sidecar_for_another_key_is_corrupt(tmp_path, caplog):
    store = EndpointStore(tmp_path)
    key = endpoint_key(DESCRIPTION)
    store.put(key, _state(), description=DESCRIPTION, metadata={})
    sidecar = store.sidecar_path(key)
    side = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**side, "key": "f" * 24}))
    with caplog.at_level(logging.WARNING, logger="study.store"):
        assert store.get(key) is None
    assert "is for key" in caplog.text


class Payload:
    """Unpickling this would run code; a weights-only load must refuse it."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["STORE_TEST_CANARY"]),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_python_objects_are_never_executed(tmp_path, caplog, monkeypatch):
    canary = tmp_path / "executed"
    monkeypatch.setenv("STORE_TEST_CANARY", str(canary))
    store = EndpointStore(tmp_path / "store")
    key = endpoint_key(DESCRIPTION)
    store.put(key, _state(), description=DESCRIPTION, metadata={})
    weights = store.weights_path(key)
    # a forged entry: a pickle with a matching sidecar hash, so only weights_only stands in the way
    for evil in ({"w": Payload()}, pickle.dumps({"w": Payload()})):
        if isinstance(evil, bytes):
            weights.write_bytes(evil)
        else:
            torch.save(evil, weights)
        side = json.loads(store.sidecar_path(key).read_text()) if store.sidecar_path(key).exists() else {}
        side = {"key": key, "description": DESCRIPTION, "metadata": {}, "created": "", **side,
                "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
        store.sidecar_path(key).write_text(json.dumps(side))
        with caplog.at_level(logging.WARNING, logger="study.store"):
            assert store.get(key) is None
        assert "weights only" in caplog.text
        assert not canary.exists()
        caplog.clear()


def test_a_half_written_entry_is_absent_not_corrupt(tmp_path, caplog):
    store = EndpointStore(tmp_path)
    key = endpoint_key(DESCRIPTION)
    store.put(key, _state(), description=DESCRIPTION, metadata={})
    store.sidecar_path(key).unlink()  # as if the writer died between the two atomic writes
    with caplog.at_level(logging.WARNING, logger="study.store"):
        assert store.get(key) is None
    assert caplog.text == "" and store.weights_path(key).exists()
    assert store.keys() == []


def test_invalid_keys_are_rejected(tmp_path):
    store = EndpointStore(tmp_path)
    for bad in ("../etc", "a", "", "a/b" * 3):
        with pytest.raises(ValueError, match="invalid endpoint key"):
            store.contains(bad)


def test_unserialisable_metadata_is_kept_as_repr_rather_than_losing_the_endpoint(tmp_path, caplog):
    store = EndpointStore(tmp_path)
    key = endpoint_key(DESCRIPTION)
    with caplog.at_level(logging.WARNING, logger="study.store"):
        store.put(key, _state(), description=DESCRIPTION, metadata={"odd": object(), "loss": float("nan")})
    got = store.get(key)
    assert got.metadata["odd"].startswith("<object object") and "repr" in caplog.text
    assert got.metadata["loss"] != got.metadata["loss"]  # NaN survives
