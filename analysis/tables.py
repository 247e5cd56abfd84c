"""Named comparison tables (the papers' tables for your own runs), written as Markdown, LaTeX and CSV.

=========== ================================================== ===================================== =============
table       default rows                                       default metrics                       from spec
=========== ================================================== ===================================== =============
alignment   model.arch × data.name × align.method              endpoint test acc, acc_avg and         neuron_alignment
                                                               acc_min along the curve (test)
symmetry    model.arch × data.name × model.symmetry ×           linear loss and error barrier (test),  asymmetric_lmc
            align.method                                       endpoint test acc
robust      train.attack.eps × curve.train.attack.eps ×         clean and robust loss barrier (test)   robust_barrier
            align.method                                       on every path
custom      --by                                               --metric (required)                    any
=========== ================================================== ===================================== =============

Row factors a study does not sweep (or sweeps with one value) are dropped and named in the caption; factors the
study sweeps that are not rows are *pooled* and named in the caption too. Each named table also has a paired
section: every other alignment method minus ``none`` on the same seed pair and other factors (``--paired`` picks
another factor for ``custom``). A cell is ``mean ± half-width of the 95% t-interval``; ``n`` counts finished runs
only, and ``failed`` / ``missing`` count the runs that are not in the mean, so nothing is silently dropped.
The CSV files hold the full-precision numbers (one row per group and metric). ``--where F=V`` (:func:`select`)
restricts a table to part of the grid, e.g. the clean endpoints of a study that also sweeps PGD.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.aggregate import default_baseline, keys, level_order, paired_differences, summarize
from analysis.load import ENDPOINT_MEAN, factor_columns, is_missing, metric_columns, path_kinds
from study.common.errors import UsageError
from study.common.validation import unknown_name

PAIRED_DEFAULT = "align.method"


# ---------------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------------
def _alignment_metrics(available: Sequence[str]) -> list[str]:
    curves = [k for k in path_kinds(available) if k != "linear"] or ["linear"]
    return [ENDPOINT_MEAN, *(f"acc_avg/{c}/test" for c in curves), *(f"acc_min/{c}/test" for c in curves)]


def _symmetry_metrics(available: Sequence[str]) -> list[str]:
    return ["barrier_chord/linear/test_loss", "barrier_chord/linear/test_error", ENDPOINT_MEAN]


def _robust_metrics(available: Sequence[str]) -> list[str]:
    out = []
    for path in path_kinds(available) or ["linear"]:
        out += [f"barrier_chord/{path}/test_loss", f"robust/barrier_chord/{path}/test_loss"]
    return out


@dataclass(frozen=True)
class TableDef:
    name: str
    title: str
    rows: tuple[str, ...]
    metrics: Callable[[Sequence[str]], list[str]] | None
    paired: str | None


TABLES: dict[str, TableDef] = {t.name: t for t in (
    TableDef("alignment", "Test accuracy along the path, unaligned vs aligned endpoints (Tatro et al. 2020)",
             ("model.arch", "data.name", "align.method"), _alignment_metrics, PAIRED_DEFAULT),
    TableDef("symmetry", "Linear-path barriers of standard vs asymmetric networks, with and without weight "
             "matching (Lim et al. 2024)", ("model.arch", "data.name", "model.symmetry", "align.method"),
             _symmetry_metrics, PAIRED_DEFAULT),
    TableDef("robust", "Clean and robust loss barriers against the PGD training epsilon, aligned vs unaligned",
             ("train.attack.eps", "curve.train.attack.eps", "align.method"), _robust_metrics, PAIRED_DEFAULT),
    TableDef("custom", "Custom table", (), None, None),
)}


# ---------------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Style:
    pm: str
    empty: str
    minus: str
    escape: Callable[[str], str] = str

    def value(self, value: Any) -> str:
        if is_missing(value):
            return self.empty
        if isinstance(value, float):
            return f"{value:g}"
        return self.escape(str(value))

    def cell(self, mean: float, half: float, n: int, expected: int) -> str:
        if n == 0:
            return self.empty
        mean = 0.0 if abs(mean) < 5e-5 else mean  # no "-0.0000"
        text = f"{mean:.4f}" if n == 1 or is_missing(half) else f"{mean:.4f}{self.pm}{half:.4f}"
        return text + (f" (n={n})" if n != expected else "")


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")


MARKDOWN = _Style(" ± ", "–", "−", _markdown_escape)
LATEX = _Style(r" $\pm$ ", "--", "$-$", _latex_escape)


def _markdown(frame: pd.DataFrame) -> str:
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < frame.attrs.get("text_columns", 0) else "---:"
                            for i in range(len(header))) + "|"]
    for row in frame.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    text_columns = frame.attrs.get("text_columns", 0)
    spec = "l" * text_columns + "r" * (len(frame.columns) - text_columns)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_latex_escape(str(c)) for c in frame.columns) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False, name=None):
        lines.append(" & ".join(str(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# A built table
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A named table's numbers (``stats``, ``paired``: long frames, see :mod:`analysis.aggregate`) and layout."""

    name: str
    title: str
    by: list[str]
    columns: list[str]
    metrics: list[str]
    stats: pd.DataFrame
    paired: pd.DataFrame | None = None
    paired_factor: str | None = None
    baseline: Hashable | None = None
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.95

    # -- layout ------------------------------------------------------------------------------------------------
    @property
    def rows(self) -> list[str]:
        return [b for b in self.by if b not in self.columns]

    def display(self, style: _Style = MARKDOWN) -> pd.DataFrame:
        """One row per group of the row factors: factor values, counts, then a cell per metric (× column level)."""
        stats, rows = self.stats, self.rows
        row_keys = list(dict.fromkeys(keys(stats, rows)))
        col_keys = list(dict.fromkeys(keys(stats, self.columns)))
        show_unfinished = bool((stats["unfinished"] > 0).any())
        stat_rows = {(rk, ck, m): r for rk, ck, m, r in zip(keys(stats, rows), keys(stats, self.columns),
                                                             stats["metric"], stats.itertuples(index=False))}
        out = []
        for rk in row_keys:
            line: dict[str, Any] = {f: style.value(v) for f, v in zip(rows, rk)}
            groups = {ck: stat_rows.get((rk, ck, self.metrics[0])) for ck in col_keys}
            present = [g for g in groups.values() if g is not None]
            line["n"] = sum(g.finished for g in present)
            line["failed"] = sum(g.failed for g in present)
            if show_unfinished:
                line["unfinished"] = sum(g.unfinished for g in present)
            line["missing"] = sum(g.missing for g in present)
            for metric in self.metrics:
                for ck in col_keys:
                    label = metric if not self.columns else \
                        f"{metric} [{', '.join(f'{c}={style.value(v)}' for c, v in zip(self.columns, ck))}]"
                    r = stat_rows.get((rk, ck, metric))
                    line[label] = style.empty if r is None else style.cell(r.mean, r.ci95, r.n, r.finished)
            out.append(line)
        frame = pd.DataFrame(out)
        frame.attrs["text_columns"] = len(rows)
        return frame

    def paired_display(self, style: _Style = MARKDOWN) -> pd.DataFrame | None:
        if self.paired is None or not len(self.paired):
            return None
        p, factor = self.paired, self.paired_factor
        rows = [b for b in self.by if b != factor]
        row_keys = list(dict.fromkeys(keys(p, [*rows, factor])))
        index = {(k, m): r for k, m, r in zip(keys(p, [*rows, factor]), p["metric"], p.itertuples(index=False))}
        out = []
        for key in row_keys:
            line: dict[str, Any] = {f: style.value(v) for f, v in zip(rows, key[:-1])}
            line["comparison"] = f"{style.value(key[-1])} {style.minus} {style.value(self.baseline)}"
            cells = [index[(key, m)] for m in self.metrics]
            line["pairs"] = max(c.n for c in cells)
            line["incomplete"] = max(c.incomplete for c in cells)
            for metric, c in zip(self.metrics, cells):
                line[metric] = style.cell(c.mean, c.ci95, c.n, line["pairs"])
            out.append(line)
        frame = pd.DataFrame(out)
        frame.attrs["text_columns"] = len(rows) + 1
        return frame

    # -- text --------------------------------------------------------------------------------------------------
    def legend(self) -> str:
        level = f"{self.confidence:.0%}"
        return (f"Cells: mean ± half-width of the {level} Student-t interval over finished runs (n − 1 degrees of "
                f"freedom); n = finished runs, failed = runs that failed, missing = planned in the spec but never "
                f"run; failed and missing runs are not in the means.")

    def paired_legend(self) -> str:
        return (f"Paired differences: {self.paired_factor} level − {self.baseline} on the same study, seed pair and "
                f"other factors, mean ± half-width of the {self.confidence:.0%} t-interval over pairs; incomplete = "
                f"pairs lacking a finished value on either side.")

    def to_markdown(self) -> str:
        parts = [f"### {self.name}: {self.title}", "", self.legend(), *(f"{n}" for n in self.notes), "",
                 _markdown(self.display(MARKDOWN))]
        paired = self.paired_display(MARKDOWN)
        if paired is not None:
            parts += ["", self.paired_legend(), "", _markdown(paired)]
        return "\n".join(parts) + "\n"

    def to_latex(self) -> str:
        caption = _latex_escape(" ".join([f"{self.title}.", *self.notes])) + " " + \
            _latex_escape(self.legend()).replace("±", r"$\pm$").replace("−", "$-$")
        parts = [f"% {self.name} table, written by `study table` (needs \\usepackage{{booktabs}})",
                 _latex(self.display(LATEX), caption, f"tab:{self.name}")]
        paired = self.paired_display(LATEX)
        if paired is not None:
            legend = _latex_escape(self.paired_legend()).replace("±", r"$\pm$").replace("−", "$-$")
            parts.append(_latex(paired, legend, f"tab:{self.name}-paired"))
        return "\n\n".join(parts) + "\n"

    def to_csv(self) -> str:
        return self.stats.to_csv(index=False)

    def render(self, fmt: str) -> str:
        return {"md": self.to_markdown, "latex": self.to_latex, "csv": self.to_csv}[fmt]()

    def write(self, directory: str | Path) -> list[Path]:
        """``<name>.md``, ``<name>.tex``, ``<name>.csv`` (and ``<name>_paired.csv``) in ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for suffix, text in ((".md", self.to_markdown()), (".tex", self.to_latex()), (".csv", self.to_csv())):
            path = directory / f"{self.name}{suffix}"
            path.write_text(text)
            written.append(path)
        path = directory / f"{self.name}_paired.csv"
        if self.paired is not None:
            path.write_text(self.paired.to_csv(index=False))
            written.append(path)
        elif path.exists():  # a stale one from an earlier call would pass for this table's
            path.unlink()
        return written


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------
def _resolve_metrics(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in requested:
        if any(ch in item for ch in "*?["):
            matches = fnmatch.filter(available, item)
            if not matches:
                raise UsageError(unknown_name("metric pattern", item, available))
            out += matches
        elif item in available:
            out.append(item)
        else:
            raise UsageError(unknown_name("metric", item, available))
    return list(dict.fromkeys(out))


def _match_level(text: Any, levels: Sequence[Hashable], factor: str) -> Hashable:
    if text in levels:
        return text
    for level in levels:
        if str(level) == str(text):
            return level
        try:
            if float(level) == float(text):  # type: ignore[arg-type]
                return level
        except (TypeError, ValueError):
            pass
    raise UsageError(unknown_name(f"level of {factor}", str(text), [str(v) for v in levels]))


def table_def(name: str) -> TableDef:
    """The registered table ``name``; a usage error with a did-you-mean for anything else."""
    if name not in TABLES:
        raise UsageError(unknown_name("table", name, list(TABLES)))
    return TABLES[name]


def select(runs: pd.DataFrame, planned: pd.DataFrame | None, where: Sequence[str]) -> tuple[pd.DataFrame,
                                                                                           pd.DataFrame | None]:
    """Keep the runs (and planned trials) whose factors match every ``F=V`` of ``where``; several values of one
    factor are alternatives (``model.symmetry=standard model.symmetry=w_asym``)."""
    wanted: dict[str, list[Hashable]] = {}
    factors = [*factor_columns(runs), "study"]
    for item in where:
        factor, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--where {item!r}: expected FACTOR=VALUE, e.g. model.symmetry=standard")
        if factor not in factors:
            raise UsageError(unknown_name("factor", factor, factors))
        levels = [v for v in level_order(factor, planned, runs) if v is not None]
        wanted.setdefault(factor, []).append(_match_level(text, levels, factor))
    for factor, values in wanted.items():
        runs = runs[[k[0] in values for k in keys(runs, [factor])]]
        if planned is not None and factor in planned:
            planned = planned[[k[0] in values for k in keys(planned, [factor])]]
    if wanted and not len(runs):
        raise UsageError(f"no runs match {' '.join(where)}")
    return runs, planned


def build_table(name: str, runs: pd.DataFrame, planned: pd.DataFrame | None = None, *,
                by: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                columns: Sequence[str] = (), paired: str | None = "default", baseline: Any = None,
                confidence: float = 0.95) -> Table:
    """Table ``name`` of ``runs`` (see :func:`analysis.load.load`); ``by``/``metrics`` replace the defaults,
    ``columns`` pivots factors into columns, ``paired`` names the toggled factor (``None``: no paired section).

    ``planned`` (one row per trial of the grid) turns trials that never ran into ``missing`` counts; when you
    subset ``runs``, subset ``planned`` the same way (:func:`select` does both)."""
    definition = table_def(name)
    if planned is not None and "study" in planned:
        planned = planned[planned["study"].isin(set(runs["study"]))]
    factors = [*factor_columns(runs), "study"]
    available = metric_columns(runs)
    notes: list[str] = []

    for factor in [*(by or []), *columns]:
        if factor not in factors:
            raise UsageError(unknown_name("factor", factor, factors))
    varying = {f for f in factors if len([v for v in level_order(f, planned, runs)]) > 1}
    if by is None:
        rows = [f for f in definition.rows if f in factors]
    else:
        rows = list(dict.fromkeys(by))
    rows = list(dict.fromkeys([*rows, *columns]))
    constant = [f for f in rows if f not in varying]
    if constant:
        values = {f: ", ".join(MARKDOWN.value(v) for v in level_order(f, planned, runs)) or "–" for f in constant}
        notes.append("Constant: " + ", ".join(f"{f} = {v}" for f, v in values.items()) + ".")
    rows = [f for f in rows if f in varying]
    columns = [c for c in columns if c in rows]
    pooled = [f for f in sorted(varying - set(rows) - {"seeds", "study"}, key=factors.index)]
    if pooled:
        notes.append("Pooled over: " + "; ".join(
            f"{f} ({', '.join(MARKDOWN.value(v) for v in level_order(f, planned, runs))})" for f in pooled) + ".")

    if metrics:
        chosen = _resolve_metrics(metrics, available)
    elif definition.metrics is None:
        raise UsageError(f"table {name!r} needs --metric M [M ...] (and usually --by F ...); available metrics: "
                          f"{', '.join(available[:40])}{' ...' if len(available) > 40 else ''}")
    else:
        wanted = definition.metrics(available)
        chosen = [m for m in wanted if m in available]
        if not chosen:
            raise UsageError(f"table {name!r}: these runs logged none of its metrics ({', '.join(wanted)}); "
                              f"name others with --metric")
        absent = [m for m in wanted if m not in available]
        if absent:
            notes.append(f"Not logged by these runs: {', '.join(absent)}.")

    stats = summarize(runs, rows, chosen, planned=planned, confidence=confidence)
    factor = definition.paired if paired == "default" else paired
    paired_frame, base = None, None
    if factor is not None:
        if factor not in factors or factor == "study":
            raise UsageError(unknown_name("factor", factor, factors[:-1]))
        levels = [v for v in level_order(factor, planned, runs) if v is not None]
        if len(levels) > 1:
            base = default_baseline(levels) if baseline is None else _match_level(baseline, levels, factor)
            paired_frame = paired_differences(runs, factor, chosen, by=rows, baseline=base, planned=planned,
                                              confidence=confidence)
        elif paired != "default":
            raise UsageError(f"--paired {factor}: the runs have only one level of it "
                              f"({', '.join(map(str, levels)) or 'none'}); nothing to compare")
        else:
            factor = None
    studies = ", ".join(dict.fromkeys(runs["study"]))
    title = definition.title if name != "custom" else f"Custom table of {studies}"
    notes.insert(0, f"Studies: {studies}.")
    return Table(name, title, rows, columns, chosen, stats, paired_frame, factor, base, notes, confidence)
