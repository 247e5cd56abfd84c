"""Error messages for bad input, one way everywhere: name the bad value, list the allowed ones, suggest."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A trial configuration that cannot run; raised before any compute."""


class DatasetNotFoundError(FileNotFoundError):
    """A data set that is read from disk is not there (and ``download=True`` was not asked for)."""


def did_you_mean(value: Any, allowed: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed value, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(kind: str, value: Any, allowed: Iterable[Any]) -> ValueError:
    """A ValueError naming the bad value, the closest match and the allowed ones."""
    allowed = list(allowed)
    return ValueError(f"unknown {kind} {value!r}{did_you_mean(value, allowed)}; "
                      f"allowed: {', '.join(map(str, allowed))}")


def reject_unknown_keys(where: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise for the first key of ``given`` not in ``allowed`` (a typo in a config must never be ignored)."""
    allowed = list(allowed)
    if not isinstance(given, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(given).__name__}: {given!r}")
    for key in given:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}; "
                             f"allowed: {', '.join(allowed)}")
