"""User mistakes in the analysis (unknown table, factor or metric; a folder that is not a study or has no runs).

They are the ``study`` command's :class:`study.cli.UsageError`, so the CLI prints one line and exits with status 2.
The import is deferred: ``study.cli`` imports ``analysis.cli`` while building its parser.
"""

from __future__ import annotations

from collections.abc import Iterable


def usage_error(message: str) -> Exception:
    from study.cli import UsageError

    return UsageError(message)


def unknown(kind: str, value: str, allowed: Iterable[str], *, limit: int = 40) -> Exception:
    """``unknown factor 'x' (did you mean 'y'?); available: a, b, c``."""
    from study.validation import did_you_mean

    allowed = list(allowed)
    shown = ", ".join(allowed[:limit]) + (f", ... ({len(allowed) - limit} more)" if len(allowed) > limit else "")
    return usage_error(f"unknown {kind} {value!r}{did_you_mean(value, allowed)}; available: {shown or '(none)'}")
