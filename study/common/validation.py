"""Error messages for bad input, one way everywhere: name the bad value, list the allowed ones, suggest."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

#: Seeds are integers in [0, SEED_LIMIT): torch's ``manual_seed`` takes at most 64 bits, and derived seeds
#: (``seed + offset``, ``% 2**63``) stay exact and non-negative below 2**63.
SEED_LIMIT = 2**63


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
                             f"allowed: {', '.join(allowed) or 'none'}")


def unknown_name(kind: str, value: str, allowed: Iterable[str], *, limit: int = 40) -> str:
    """``unknown factor 'x' (did you mean 'y'?); available: a, b, c`` (long lists are cut at ``limit``)."""
    allowed = list(allowed)
    shown = ", ".join(allowed[:limit]) + (f", ... ({len(allowed) - limit} more)" if len(allowed) > limit else "")
    return f"unknown {kind} {value!r}{did_you_mean(value, allowed)}; available: {shown or '(none)'}"


def check_number(where: str, value: Any, *, integer: bool = False, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False) -> Any:
    """``value`` (as float unless ``integer``), or a ValueError naming ``where`` and the allowed interval.

    Booleans are not numbers here (YAML's ``yes`` would otherwise be 1), NaN and infinities never pass, and a
    string gets a hint, since YAML 1.1 reads ``1e-3`` (no dot) as text."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    kind = "an integer" if integer else "a number"
    types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        hint = " (note: YAML reads 1e-3 as a string; write 1.0e-3)" if isinstance(value, str) else ""
        raise ValueError(f"{where} must be {kind} in {interval}, got {value!r} ({type(value).__name__}){hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    # An int is always finite (and math.isfinite cannot even convert one above 1e308 to a float).
    if (not isinstance(value, int) and not math.isfinite(value)) or too_low or too_high:
        raise ValueError(f"{where} must be {kind} in {interval}, got {value!r}")
    return value if integer else float(value)


def check_bool(where: str, value: Any) -> bool:
    """``value`` if it is a real boolean, else a ValueError (``"false"`` as text is truthy, so it must not pass)."""
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def check_choice(where: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else a ValueError with the closest match."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{where} must be one of {', '.join(map(str, allowed))}; got {value!r}"
                         f"{did_you_mean(value, allowed)}")
    return value


def check_seed(where: str, value: Any, *, limit: int = SEED_LIMIT, limit_text: str = "2**63") -> int:
    """``value`` if it is an integer seed in ``[0, limit)``, else a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"{where} must be an integer in [0, {limit_text}) (a seed), got {value!r}")
    return int(value)


def check_string(where: str, value: Any, *, allow_none: bool = False) -> Any:
    """``value`` if it is a string (or ``None`` when allowed), else a ValueError naming ``where``."""
    if value is None and allow_none:
        return value
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string{' or null' if allow_none else ''}, got {value!r} "
                         f"({type(value).__name__})")
    return value


def check_mapping(where: str, value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping with string keys, else a ValueError naming ``where``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, got {value!r} ({type(value).__name__})")
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"{where}: keys must be strings, got {key!r} ({type(key).__name__})")
    return value


#: URI schemes MLflow can store runs in (``--tracking-uri``); anything else is refused before a study starts.
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def check_tracking_uri(uri: Any) -> str:
    """``uri`` if MLflow can track to it: ``sqlite:///PATH``, ``file:PATH`` (or a plain local path),
    ``http(s)://HOST``, ``databricks[://PROFILE]``, ``postgresql|mysql|mssql[+DRIVER]://...``; else a
    ValueError saying what is accepted."""
    import re

    accepted = ("sqlite:///PATH, file:PATH, http(s)://HOST[:PORT], databricks[://PROFILE], "
                "postgresql|mysql|mssql[+DRIVER]://...")
    if not isinstance(uri, str) or not uri.strip() or uri != uri.strip() or any(c in uri for c in "\n\r\0"):
        raise ValueError(f"not a tracking URI: {uri!r}; accepted: {accepted}")
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if match is None or len(match.group(1)) == 1:  # no scheme, or a Windows drive letter: a local path
        return uri
    scheme = match.group(1).lower()
    base, _, driver = scheme.partition("+")
    rest = uri[match.end():]
    if base in ("postgresql", "mysql", "mssql") and rest.startswith("//") and re.fullmatch(r"[a-z0-9_]*", driver):
        return uri
    if not driver:
        if base == "sqlite" and rest.startswith("///") and len(rest) > 3:
            return uri
        if base == "file" and rest:
            return uri
        if base in ("http", "https") and re.match(r"//[^/\s]+", rest):
            return uri
        if base == "databricks" and (not rest or rest.startswith("//")):
            return uri
    if base in TRACKING_SCHEMES:
        raise ValueError(f"malformed {base} tracking URI {uri!r}; accepted: {accepted}")
    raise ValueError(f"unsupported tracking URI scheme {scheme!r} in {uri!r}{did_you_mean(base, TRACKING_SCHEMES)}; "
                     f"accepted: {accepted}")
