"""The ``study`` command: run, resume, inspect, browse and analyse studies.

Every user mistake (a bad spec, a missing folder, a missing data set, an unreachable store) is a
:class:`~study.common.errors.UserError`: one readable message, exit status 2, nothing started or written.
Nothing else in the package imports this one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from study.cli import analysis_commands, commands
from study.common.errors import UserError
from study.common.validation import check_tracking_uri

EXIT_USAGE = 2
MAX_CONCURRENT = 100_000  # trials at once: more than any Ray cluster schedules


def _int_in(low: int, high: int, what: str):
    """An argparse type: an integer in [low, high] (argparse turns the ValueError into exit status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer in {low}..{high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be an integer in {low}..{high}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _tracking_uri(text: str) -> str:
    try:
        return check_tracking_uri(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="study", description="Ablation studies of parameter symmetries and "
                                     "mode connectivity (Ray Tune + MLflow).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens underneath")
    parser.add_argument("--version", action="version", version=f"study (symstudy) {commands.version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def execution_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None, help="Ray cluster address ('auto' on a cluster head); "
                       "default: start a local Ray")
        p.add_argument("--tracking-uri", type=_tracking_uri, default=None,
                       help="MLflow tracking URI; default: sqlite in the study folder")
        p.add_argument("--max-concurrent", type=_int_in(1, MAX_CONCURRENT, "max-concurrent"), default=None,
                       help="at most this many trials at once")
        p.add_argument("--quiet", action="store_true", help="no live progress line")
        p.add_argument("--extend", action="store_true", help="accept a spec that adds trials to the one this study "
                       "ran (more seeds or levels): only the new trials run")

    p = sub.add_parser("run", help="run a study spec (YAML)", description="Run a study: every unique endpoint "
                       "once, then the pair trials; results go to OUT/<name>.")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=commands.OVERRIDES_HELP)
    p.add_argument("--out", default="studies", help="parent folder of the study folder (default: ./studies)")
    execution_flags(p)
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted study", description="Continue a study from its "
                       "folder: finished trials are kept, stored endpoints are not retrained.")
    p.add_argument("dir")
    execution_flags(p)
    p.add_argument("--rebuild-tracking", action="store_true", help="mlflow.db is lost or damaged: move it aside "
                   "and rebuild every finished trial's and stored endpoint's run from the study folder")
    p.set_defaults(func=commands.cmd_resume)

    p = sub.add_parser("status", help="trial counts and failures of a study")
    p.add_argument("dir")
    p.add_argument("--tracking-uri", type=_tracking_uri, default=None)
    p.set_defaults(func=commands.cmd_status)

    p = sub.add_parser("ui", help="open the MLflow UI of a study (binds 127.0.0.1)")
    p.add_argument("dir")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int_in(1, 65535, "port"), default=5000)
    p.set_defaults(func=commands.cmd_ui)

    p = sub.add_parser("validate", help="check a study spec without running anything")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=commands.OVERRIDES_HELP)
    p.set_defaults(func=commands.cmd_validate)

    p = sub.add_parser("plan", help="what `study run` would do: trials, endpoints, what is done, a time estimate",
                       description="Trials and unique endpoints of a spec, how many are already in its study "
                       "folder, and an estimate of the time left from the folder's stored timings. Starts nothing.")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=commands.OVERRIDES_HELP)
    p.add_argument("--out", default="studies", help="parent folder of the study folder (default: ./studies)")
    p.add_argument("--max-concurrent", type=_int_in(1, MAX_CONCURRENT, "max-concurrent"), default=None,
                   help="trials at once for the estimate (default: the spec's, else this machine's CPUs)")
    p.set_defaults(func=commands.cmd_plan)

    p = sub.add_parser("list", help="the studies under a folder, with trials done/failed/total")
    p.add_argument("root", nargs="?", default="studies", help="folder holding study folders (default: ./studies)")
    p.set_defaults(func=commands.cmd_list)
    analysis_commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides given after options (`study run SPEC --quiet train.epochs=2`)
        if getattr(args, "overrides", None) is None or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: "
                        "%(message)s")
    if not args.verbose:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `study plan SPEC | head`: the reader has gone, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as error:  # a read-only folder, a full disk: the environment's fault, reported in one line
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}; fix it, then `study resume` continues where this "
              f"stopped", file=sys.stderr)
        return EXIT_USAGE
