"""The ``study`` command line (:func:`study.cli.main.main`)."""

from study.cli.main import main

__all__ = ["main"]
