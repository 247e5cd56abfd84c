"""Content identity: one canonical text and one hash for everything that is identified by what it contains.

An endpoint's store key and a pair trial's key are both a hash of a JSON description. The text must be
byte-stable across processes, machines and library versions, so the conversion is strict on purpose: a value
that ``json`` would coerce (an int dict key, a numpy int) or that ``default=str`` would stringify could make two
different descriptions share a key, or one description change key between versions. Such values are a
TypeError naming where they sit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

#: Hex characters of sha256 kept in a key: 96 bits, collision-free for any realistic number of entries and short
#: enough for file names and MLflow tags.
KEY_LENGTH = 24


def plain(value: Any, where: str = "") -> Any:
    """``value`` as plain JSON types (tuples -> lists); TypeError naming ``where`` for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"description value at {where or '<root>'} is not a finite number: {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"description key {k!r} at {where or '<root>'} is a {type(k).__name__}, not a str")
            out[k] = plain(v, f"{where}.{k}" if where else k)
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"description value at {where or '<root>'} is not JSON-serialisable: "
                    f"{type(value).__name__} {value!r}")


def canonical_json(description: Mapping[str, Any]) -> str:
    """The one byte-stable text of a description: sorted keys, no whitespace, floats as Python's shortest repr."""
    if not isinstance(description, Mapping):
        raise TypeError(f"a description must be a mapping, got {type(description).__name__}")
    return json.dumps(plain(description), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_key(description: Mapping[str, Any], length: int = KEY_LENGTH) -> str:
    """First ``length`` hex chars of sha256(canonical JSON of ``description``).

    Stable across processes, machines and dict order; any changed field gives a different key. Tuples hash like
    lists; 1 and 1.0 hash differently (normalise numbers before hashing, as ``Recipe.to_dict`` does).
    """
    return hashlib.sha256(canonical_json(description).encode("ascii")).hexdigest()[:length]
