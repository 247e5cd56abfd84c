"""Every mistake of the user's is a :class:`UserError`: the ``study`` command prints it as one message and exits
with status 2, never a traceback. Faults of the program stay ordinary exceptions.

One class to catch, whichever layer raised it: a bad trial config (core), a bad spec (sweep), a missing data set
(core), an unreachable tracking store (tracking), a bad command line or analysis request (CLI, analysis).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, unreachable service); reported in one message."""


class ConfigError(UserError, ValueError):
    """A trial configuration that cannot run; raised before any compute."""


class SpecError(UserError, ValueError):
    """One or more problems in a study spec; ``problems`` lists them, each naming its YAML path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A data set that is read from disk is not there (and ``download=True`` was not asked for)."""


class TrackingUnavailable(UserError, RuntimeError):
    """The MLflow store stayed unreachable or locked through every retry."""


class UsageError(UserError):
    """A bad command line or analysis request (unknown table, factor or metric; not a study folder)."""
