"""``study table`` and ``study plot``: added to the ``study`` command by :func:`add_commands`.

Only argparse is imported here (``study --help`` stays fast); pandas, MLflow and matplotlib load when a command
runs. User mistakes raise the CLI's ``UsageError`` (one line on stderr, exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.common.errors import UsageError

FORMATS = ("md", "latex", "csv")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "table", help="a comparison table of one or more finished studies (md, LaTeX, CSV)",
        description="Aggregate a study's trial runs over seeds into a named table (alignment, symmetry, robust, "
        "merge, custom): mean ± 95% t-interval, n finished, failed and missing runs per cell, and paired "
        "differences (aligned − unaligned on the same seed pair). A named table is split by every swept factor "
        "that is not its subject (nothing is pooled unless --by says so, and then it is named); cells whose "
        "alignment was not applied (asymmetric nets) are collapsed into align.method=none. Prints it and writes "
        "<name>.md/.tex/.csv under DIR/tables/.")
    p.add_argument("name", metavar="NAME", help="alignment | symmetry | robust | merge | custom")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="study folder(s) (<out>/<name>, as `study run` made them)")
    p.add_argument("--format", choices=FORMATS, default="md", help="what to print (all three are written)")
    p.add_argument("--by", nargs="+", action="extend", metavar="F", default=None,
                   help="row factors, e.g. model.arch align.method (default: the table's own)")
    p.add_argument("--columns", nargs="+", action="extend", metavar="F", default=[],
                   help="factors to spread into columns, e.g. align.method")
    p.add_argument("--metric", nargs="+", action="extend", metavar="M", default=None,
                   help="metrics (default: the table's own); glob patterns such as 'barrier_chord/*/test_loss'")
    p.add_argument("--where", nargs="+", action="extend", metavar="F=V", default=[],
                   help="only runs with these factor values, e.g. model.symmetry=standard train.attack.eps=0")
    p.add_argument("--paired", metavar="F", default=None,
                   help="factor toggled for the paired differences (default: align.method; custom: none)")
    p.add_argument("--baseline", metavar="LEVEL", default=None,
                   help="the paired baseline level (default: none / standard / the first level)")
    p.add_argument("--no-paired", action="store_true", help="leave out the paired differences")
    p.add_argument("--keep-unapplied", action="store_true",
                   help="keep rows whose alignment was computed but not applied (align/applied = 0), marked "
                   "'(not applied)', instead of collapsing them into align.method=none")
    p.add_argument("--name", dest="file_name", metavar="STEM", default=None,
                   help="file name of the written table (default: the table's name; a custom table is named after "
                   "its --metric/--by/--columns/--where)")
    p.add_argument("--out", default=None, help="folder for the files (default: the first DIR's tables/)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: each DIR's mlflow.db)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "plot", help="plots of a finished study (PNG and PDF), also logged to its MLflow run",
        description="Loss and accuracy along t (linear and curve on one axis, one panel per condition, band: "
        "± 1 s.d. over seed pairs, clipped to the metric's range); barrier vs PGD epsilon; barrier by symmetry "
        "method (bars with 95% CIs, one panel per metric and condition); merge vs ensemble accuracy; aligned vs "
        "unaligned loss-surface planes (with eval.plane). PDF and PNG in DIR/plots/, attached to the study's "
        "parent MLflow run.")
    p.add_argument("dir", metavar="DIR", help="the study folder")
    p.add_argument("--by", nargs="+", action="extend", metavar="F", default=None,
                   help="factors that make the groups (colours); default: align.method. Every other swept factor "
                   "gets its own panels")
    p.add_argument("--where", nargs="+", action="extend", metavar="F=V", default=[],
                   help="only runs with these factor values, e.g. model.arch=mlp train.attack.eps=0")
    p.add_argument("--out", default=None, help="folder for the images (default: DIR/plots)")
    p.add_argument("--no-log", action="store_true", help="do not attach the images to the MLflow run")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: DIR/mlflow.db)")
    p.set_defaults(func=cmd_plot)


def cmd_table(args: argparse.Namespace) -> int:
    from analysis.load import load
    from analysis.tables import build_table, select, table_def

    table_def(args.name)  # an unknown table is reported before any store is opened
    data = load(args.dirs, tracking_uri=args.tracking_uri)
    runs, planned = select(data.runs, data.planned, args.where)
    paired = None if args.no_paired else (args.paired or "default")
    table = build_table(args.name, runs, planned, by=args.by, metrics=args.metric, columns=args.columns,
                        paired=paired, baseline=args.baseline, keep_unapplied=args.keep_unapplied,
                        file_name=args.file_name, where=args.where)
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "tables"
    try:
        written = table.write(out)
    except OSError as error:
        raise UsageError(f"cannot write the table files to {out}: {error.strerror or error}; "
                          f"choose another folder with --out") from None
    sys.stdout.write(table.render(args.format))
    sys.stdout.flush()
    print("wrote: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from analysis.load import load
    from analysis.plots import log_to_parent, plot_study
    from analysis.tables import select

    data = load([args.dir], tracking_uri=args.tracking_uri)
    if args.where:
        data.runs, data.planned = select(data.runs, data.planned, args.where)
    out = Path(args.out) if args.out else Path(args.dir) / "plots"
    try:
        written = plot_study(data, out, by=args.by, where=args.where)
    except OSError as error:
        raise UsageError(f"cannot write the plots to {out}: {error.strerror or error}; "
                          f"choose another folder with --out") from None
    for path in written:
        print(path)
    if not args.no_log:
        run_id = log_to_parent(data.sources[0], written)
        if run_id:
            print(f"logged to MLflow run {run_id} (artifacts: plots/)", file=sys.stderr)
        else:
            print("no parent study run in MLflow: plots not logged", file=sys.stderr)
    return 0
