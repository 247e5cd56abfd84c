"""Named comparison tables (the papers' tables for your own runs), written as Markdown, LaTeX and CSV.

=========== ============================================ ========================================== =============
table       subject (the rows' innermost factors)        default metrics                            from spec
=========== ============================================ ========================================== =============
alignment   align.method                                 endpoint test acc, acc_avg and acc_min     neuron_alignment
                                                         along the curve (test)
symmetry    model.symmetry × align.method                linear loss and error barrier (test),      asymmetric_lmc
                                                         endpoint test acc
robust      train.attack.eps × curve.train.attack.eps ×  clean and robust loss barrier (test) on    robust_barrier
            align.method                                 every path, endpoint test acc (clean and
                                                         robust)
merge       model.symmetry × align.method                endpoint, ensemble and merged-θ(½) test    any
                                                         acc on every path (clean and robust)
custom      --by                                         --metric (required)                        any
=========== ============================================ ========================================== =============

**Nothing is pooled silently.** A named table is split by every factor the study sweeps that is not its subject
(model.arch and data.name first, then the others in the spec's order): these are its *row groups* (a LaTeX
table prints each as a group header). With ``--by`` the rows are yours, and the factors you left out are pooled
and named in one line ("Pooled over: ..."). Row factors a study does not sweep are dropped and named too.

**Alignment that was not applied.** On asymmetric nets (W-Asym, σ-Asym) a permutation is not a symmetry, so a
trial computes the alignment as a diagnostic and evaluates the paths with B as trained (``align/applied`` = 0):
its path metrics equal those of ``align.method = none``. Such rows are *collapsed* into the ``none`` row (left
out, and named in a note), so they neither duplicate ``none`` nor print a structural ``0 ± 0`` difference;
``keep_unapplied`` (``--keep-unapplied``) keeps them, marked "(not applied)", and still leaves them out of the
paired section.

Each named table also has a paired section: every other alignment method minus ``none`` on the same seed pair
and other factors (``--paired`` picks another factor for ``custom``). A metric that is identical on both sides of
every pair (endpoint accuracy: alignment does not change the trained endpoints) is left out of it and named.
A cell is ``mean ± half-width of the 95% t-interval``; ``n`` counts finished runs per cell (with ``--columns``,
per column: one number when all cells agree, else each cell's), and ``failed`` / ``missing`` count the runs that
are not in the mean, so nothing is silently dropped. The CSV files hold the full-precision numbers (one row per
group and metric). ``--where F=V`` (:func:`select`) restricts a table to part of the grid. ``--name`` names the
files (a custom table is named after its rows and metrics by default, so two custom tables do not overwrite
each other).
"""

from __future__ import annotations

import fnmatch
import re
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
ALIGN = "align.method"
APPLIED = "align/applied"
NOT_APPLIED = " (not applied)"
GROUPS_FIRST = ("model.arch", "data.name")
NOT_SPLIT = frozenset(("seeds", "study"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


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
    return [*out, ENDPOINT_MEAN, "robust/endpoint_acc/linear/test"]


def _merge_metrics(available: Sequence[str]) -> list[str]:
    paths = [p for p in path_kinds(available)] or ["linear"]
    clean = [ENDPOINT_MEAN, "ensemble/test_acc", *(f"merge/{p}/test_acc" for p in paths)]
    robust = ["robust/endpoint_acc/linear/test", "robust/ensemble/test_acc",
              *(f"robust/merge/{p}/test_acc" for p in paths)]
    return [*clean, *robust]


@dataclass(frozen=True)
class TableDef:
    name: str
    title: str
    rows: tuple[str, ...]        # the table's subject: its innermost row factors
    metrics: Callable[[Sequence[str]], list[str]] | None
    paired: str | None
    groups: tuple[str, ...] = GROUPS_FIRST  # row groups that come first when the study sweeps them


TABLES: dict[str, TableDef] = {t.name: t for t in (
    TableDef("alignment", "Test accuracy along the path, unaligned vs aligned endpoints (Tatro et al. 2020)",
             ("align.method",), _alignment_metrics, PAIRED_DEFAULT),
    TableDef("symmetry", "Linear-path barriers of standard vs asymmetric networks, with and without weight "
             "matching (Lim et al. 2024)", ("model.symmetry", "align.method"), _symmetry_metrics, PAIRED_DEFAULT),
    TableDef("robust", "Clean and robust loss barriers against the PGD training epsilon, aligned vs unaligned",
             ("train.attack.eps", "curve.train.attack.eps", "align.method"), _robust_metrics, PAIRED_DEFAULT),
    TableDef("merge", "Merging vs ensembling: test accuracy of the endpoints, their ensemble (averaged softmax) "
             "and the merged model θ(½) of each path after BN recalibration (Git Re-Basin; Garipov et al. 2018)",
             ("model.symmetry", "align.method"), _merge_metrics, PAIRED_DEFAULT),
    TableDef("custom", "Custom table", (), None, None, ()),
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

# Readable names for a paper table (LaTeX); Markdown and CSV keep the flat names, which --metric and --by take.
FACTOR_LABELS = {"model.arch": "Architecture", "data.name": "Data", "model.symmetry": "Symmetry",
                 "align.method": "Alignment", "train.attack.eps": r"Train $\varepsilon$",
                 "curve.train.attack.eps": r"Curve $\varepsilon$", "model.width": "Width", "curve.kind": "Curve",
                 "study": "Study"}
LEVEL_LABELS = {"mlp": "MLP", "tinyten": "TinyTen", "resnet20": "ResNet-20", "vgg11": "VGG-11", "vgg16": "VGG-16",
                "standard": "Standard", "w_asym": "W-Asym", "sigma_asym": r"$\sigma$-Asym", "none": "None",
                "activation": "Activation", "weight": "Weight", "pam": "PAM", "digits": "Digits", "mnist": "MNIST",
                "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "bezier": "Bezier", "polychain": "Polychain",
                "linear": "linear"}
_KIND_LABELS = {"barrier_chord": "{q} barrier", "barrier_mean": "{q} barrier (max − mean)",
                "barrier_mid": "{q} barrier (mid)", "acc_min": "Min. acc.", "acc_avg": "Avg. acc.",
                "endpoint_acc": "Endpoint acc. (recal.)", "path_length": "Path length"}


def latex_level(value: Any) -> str:
    """A factor level as a paper prints it (``w_asym`` → W-Asym); unknown levels are escaped as they are."""
    if is_missing(value):
        return LATEX.empty
    text = LATEX.value(value)
    if isinstance(value, str) and value.endswith(NOT_APPLIED):
        base = value[:-len(NOT_APPLIED)]
        return LEVEL_LABELS.get(base, _latex_escape(base)) + r"$^\dagger$"
    return LEVEL_LABELS.get(str(value), text) if isinstance(value, str) else text


def latex_factor(name: str) -> str:
    return FACTOR_LABELS.get(name, _latex_escape(name))


def latex_metric(name: str) -> str:
    """``barrier_chord/linear/test_loss`` → "Loss barrier, linear"; ``robust/merge/bezier/test_acc`` → "Robust
    merge acc., Bezier". Names it does not know are escaped as they are."""
    parts = name.split("/")
    robust = parts[0] == "robust"
    if robust:
        parts = parts[1:]
    label = None
    if parts == ["endpoint_mean", "test_acc"]:
        label = "Endpoint acc."
    elif len(parts) == 2 and parts[0] == "ensemble":
        split, _, quantity = parts[1].rpartition("_")
        label = f"Ensemble {'acc.' if quantity == 'acc' else 'loss'}" + ("" if split == "test" else f", {split}")
    elif len(parts) == 3 and parts[0] == "merge":
        split, _, quantity = parts[2].rpartition("_")
        label = f"Merge {'acc.' if quantity == 'acc' else 'loss'}, {LEVEL_LABELS.get(parts[1], parts[1])}" + \
            ("" if split == "test" else f", {split}")
    elif len(parts) >= 2 and parts[0] in _KIND_LABELS:
        path = LEVEL_LABELS.get(parts[1], _latex_escape(parts[1]))
        last = parts[2] if len(parts) > 2 else ""
        split, _, quantity = last.rpartition("_") if last.endswith(("_loss", "_error")) else (last, "", "")
        label = _KIND_LABELS[parts[0]].format(q="Loss" if quantity == "loss" else "Error") + f", {path}"
        if split and split != "test":
            label += f", {split}"
    if label is None:
        return _latex_escape(name)
    return ("Robust " + label[0].lower() + label[1:]) if robust else label


def _markdown(frame: pd.DataFrame) -> str:
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < frame.attrs.get("text_columns", 0) else "---:"
                            for i in range(len(header))) + "|"]
    for row in frame.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table: the first ``attrs["group_columns"]`` text columns become group header rows (one
    ``\\midrule`` + italic line per group), a repeated leading value is printed once, and count columns that
    are 0 everywhere (failed, missing) are left out. Headers are ``attrs["labels"]`` (readable names)."""
    frame = frame.copy()
    labels = dict(frame.attrs.get("labels", {}))
    text_columns = frame.attrs.get("text_columns", 0)
    group_columns = frame.attrs.get("group_columns", 0)
    for column in ("failed", "unfinished", "missing", "incomplete"):
        if column in frame and frame[column].astype(str).isin(["0"]).all():
            frame = frame.drop(columns=column)
    group_names = list(frame.columns[:group_columns])
    body = frame.drop(columns=group_names)
    text_columns -= group_columns
    spec = "l" * text_columns + "r" * (len(body.columns) - text_columns)
    header = [labels.get(c, _latex_escape(str(c))) for c in body.columns]
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\"]
    previous_group: tuple | None = None
    previous: list[str] = []
    values = frame[group_names].itertuples(index=False, name=None) if group_names else iter(lambda: (), None)
    for group, row in zip(values, body.itertuples(index=False, name=None)):
        if group_names and group != previous_group:
            title = ", ".join(f"{labels.get(g, _latex_escape(g))}: {v}" for g, v in zip(group_names, group))
            lines += [r"\midrule", rf"\multicolumn{{{len(body.columns)}}}{{l}}{{\textit{{{title}}}}} \\"]
            previous_group, previous = group, []
        elif not group_names and previous_group is None:
            lines.append(r"\midrule")
            previous_group = ()
        cells = [str(v) for v in row]
        shown = list(cells)
        for i in range(max(text_columns - 1, 0)):  # repeated leading values once, as a paper prints them
            if i < len(previous) and cells[:i + 1] == previous[:i + 1]:
                shown[i] = ""
            else:
                break
        previous = cells
        lines.append(" & ".join(shown) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# A built table
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A named table's numbers (``stats``, ``paired``: long frames, see :mod:`analysis.aggregate`) and layout.

    ``by`` are the row factors (``groups`` first: the factors that are not the table's subject), ``name`` is
    the file stem (``<name>.md`` ...), ``kind`` the registered table it was built from."""

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
    groups: list[str] = field(default_factory=list)
    kind: str = ""
    paired_notes: list[str] = field(default_factory=list)

    # -- layout ------------------------------------------------------------------------------------------------
    @property
    def rows(self) -> list[str]:
        return [b for b in self.by if b not in self.columns]

    def _value(self, style: _Style, value: Any) -> str:
        return latex_level(value) if style is LATEX else style.value(value)

    def display(self, style: _Style = MARKDOWN) -> pd.DataFrame:
        """One row per group of the row factors: factor values, counts, then a cell per metric (× column level).

        ``n`` is the number of finished runs of each cell: one number when every column level has the same,
        else one per column level (``3/2``); a cell whose metric has fewer values than that says ``(n=k)``."""
        stats, rows = self.stats, self.rows
        row_keys = list(dict.fromkeys(keys(stats, rows)))
        col_keys = list(dict.fromkeys(keys(stats, self.columns)))
        show_unfinished = bool((stats["unfinished"] > 0).any())
        stat_rows = {(rk, ck, m): r for rk, ck, m, r in zip(keys(stats, rows), keys(stats, self.columns),
                                                             stats["metric"], stats.itertuples(index=False))}
        labels = {f: latex_factor(f) for f in rows}
        out = []
        for rk in row_keys:
            line: dict[str, Any] = {f: self._value(style, v) for f, v in zip(rows, rk)}
            groups = {ck: stat_rows.get((rk, ck, self.metrics[0])) for ck in col_keys}
            present = [g for g in groups.values() if g is not None]
            finished = [g.finished for g in present]
            line["n"] = finished[0] if len(set(finished)) == 1 else "/".join(map(str, finished))
            line["failed"] = sum(g.failed for g in present)
            if show_unfinished:
                line["unfinished"] = sum(g.unfinished for g in present)
            line["missing"] = sum(g.missing for g in present)
            for metric in self.metrics:
                for ck in col_keys:
                    label = metric if not self.columns else \
                        f"{metric} [{', '.join(f'{c}={style.value(v)}' for c, v in zip(self.columns, ck))}]"
                    if self.columns:
                        labels[label] = latex_metric(metric) + " [" + ", ".join(
                            f"{latex_factor(c)} = {latex_level(v)}" for c, v in zip(self.columns, ck)) + "]"
                    else:
                        labels[label] = latex_metric(metric)
                    r = stat_rows.get((rk, ck, metric))
                    line[label] = style.empty if r is None else style.cell(r.mean, r.ci95, r.n, r.finished)
            out.append(line)
        frame = pd.DataFrame(out)
        frame.attrs["text_columns"] = len(rows)
        frame.attrs["group_columns"] = len([g for g in self.groups if g in rows])
        frame.attrs["labels"] = labels
        return frame

    def paired_display(self, style: _Style = MARKDOWN) -> pd.DataFrame | None:
        metrics = self.paired_metrics()
        if self.paired is None or not len(self.paired) or not metrics:
            return None
        p, factor = self.paired, self.paired_factor
        rows = [b for b in self.by if b != factor]
        row_keys = list(dict.fromkeys(keys(p, [*rows, factor])))
        index = {(k, m): r for k, m, r in zip(keys(p, [*rows, factor]), p["metric"], p.itertuples(index=False))}
        labels = {f: latex_factor(f) for f in rows}
        labels.update({"comparison": "Comparison", "pairs": "Pairs", "incomplete": "Incomplete"})
        out = []
        for key in row_keys:
            line: dict[str, Any] = {f: self._value(style, v) for f, v in zip(rows, key[:-1])}
            line["comparison"] = f"{self._value(style, key[-1])} {style.minus} {self._value(style, self.baseline)}"
            cells = [index[(key, m)] for m in metrics]
            line["pairs"] = max(c.n for c in cells)
            line["incomplete"] = max(c.incomplete for c in cells)
            for metric, c in zip(metrics, cells):
                labels[metric] = "$\\Delta$ " + latex_metric(metric)
                identical = c.n > 1 and c.std == 0 and c.mean == 0
                line[metric] = "0 (identical)" if identical else style.cell(c.mean, c.ci95, c.n, line["pairs"])
            out.append(line)
        frame = pd.DataFrame(out)
        frame.attrs["text_columns"] = len(rows) + 1
        frame.attrs["group_columns"] = len([g for g in self.groups if g in rows])
        frame.attrs["labels"] = labels
        return frame

    def paired_metrics(self) -> list[str]:
        """The metrics of the paired section: those not identical on both sides of every complete pair."""
        if self.paired is None or not len(self.paired):
            return []
        return [m for m in self.metrics if m not in set(_identical_metrics(self.paired))]

    # -- text --------------------------------------------------------------------------------------------------
    def legend(self) -> str:
        level = f"{self.confidence:.0%}"
        return (f"Cells: mean ± half-width of the {level} Student-t interval over finished runs (n − 1 degrees of "
                f"freedom); n = finished runs per cell, failed = runs that failed, missing = planned in the spec but "
                f"never run; failed and missing runs are not in the means.")

    def paired_legend(self) -> str:
        return (f"Paired differences: {self.paired_factor} level − {self.baseline} on the same study, seed pair and "
                f"other factors, mean ± half-width of the {self.confidence:.0%} t-interval over pairs; incomplete = "
                f"pairs lacking a finished value on either side.")

    def to_markdown(self) -> str:
        parts = [f"### {self.name}: {self.title}", "", self.legend(), *(f"{n}" for n in self.notes), "",
                 _markdown(self.display(MARKDOWN))]
        paired = self.paired_display(MARKDOWN)
        if paired is not None:
            parts += ["", self.paired_legend(), *self.paired_notes, "", _markdown(paired)]
        elif self.paired_notes:
            parts += ["", *self.paired_notes]
        return "\n".join(parts) + "\n"

    def to_latex(self) -> str:
        caption = _latex_escape(" ".join([f"{self.title}.", *self.notes])) + " " + \
            _latex_escape(self.legend())
        if any(isinstance(v, str) and v.endswith(NOT_APPLIED) for v in self.stats.get(ALIGN, [])):
            caption += r" $^\dagger$alignment computed but not applied (a permutation is not a symmetry of the net)."
        caption = caption.replace("±", r"$\pm$").replace("−", "$-$").replace("θ", r"$\theta$")
        parts = [f"% {self.name} table, written by `study table` (needs \\usepackage{{booktabs}})",
                 _latex(self.display(LATEX), caption, f"tab:{self.name}")]
        paired = self.paired_display(LATEX)
        if paired is not None:
            legend = _latex_escape(" ".join([self.paired_legend(), *self.paired_notes]))
            legend = legend.replace("±", r"$\pm$").replace("−", "$-$").replace("θ", r"$\theta$")
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


def _identical_metrics(paired: pd.DataFrame) -> list[str]:
    """Metrics whose every complete pair has a difference of exactly 0 (e.g. endpoint accuracy across alignment
    methods: the trained endpoints are the same on both sides)."""
    out = []
    for metric, rows in paired.groupby("metric", sort=False):
        rows = rows[rows["n"] > 0]
        if len(rows) and (rows["mean"] == 0).all() and ((rows["std"] == 0) | (rows["n"] == 1)).all():
            out.append(str(metric))
    return out


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


def _combos(frame: pd.DataFrame, factors: Sequence[str]) -> list[tuple]:
    return keys(frame.reindex(columns=list(factors)), list(factors))


def unapplied_alignment(runs: pd.DataFrame, planned: pd.DataFrame | None, *, keep: bool = False
                        ) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """Runs (and planned trials) of grid cells whose alignment was computed but not applied (``align/applied``
    = 0 with a method other than the baseline ``none``): left out (``keep``: relabelled ``<method> (not
    applied)``), with a note naming them. A cell is all of a trial's factors but its seed pair."""
    if ALIGN not in runs or APPLIED not in runs:
        return runs, planned, []
    levels = [v for v in level_order(ALIGN, planned, runs) if v is not None]
    if len(levels) < 2:
        return runs, planned, []
    baseline = default_baseline(levels)
    cell_factors = ["study", *[f for f in factor_columns(runs) if f != "seeds"]]
    methods = [k[0] for k in keys(runs, [ALIGN])]
    applied = runs[APPLIED].to_numpy(dtype=float)
    flagged = [m != baseline and a == 0 for m, a in zip(methods, applied)]
    cells = set(c for c, f in zip(_combos(runs, cell_factors), flagged) if f)
    if not cells:
        return runs, planned, []
    in_runs = [c in cells for c in _combos(runs, cell_factors)]
    in_planned = [c in cells for c in _combos(planned, cell_factors)] if planned is not None else []
    hit = runs[in_runs]
    where = ""
    if "model.symmetry" in hit:
        where = " on model.symmetry = " + ", ".join(str(v) for v in dict.fromkeys(hit["model.symmetry"]))
    what = ", ".join(str(v) for v in dict.fromkeys(hit[ALIGN]))
    reason = (f"Alignment not applied (align/applied = 0; a permutation is not a symmetry of these nets, so their "
              f"paths are the unaligned ones): {ALIGN} = {what}{where}")
    if keep:
        def relabel(frame: pd.DataFrame, mask: list[bool]) -> pd.DataFrame:
            frame = frame.copy()
            frame[ALIGN] = frame[ALIGN].astype(object)
            frame.loc[mask, ALIGN] = [f"{v}{NOT_APPLIED}" for v in frame.loc[mask, ALIGN]]
            return frame
        runs = relabel(runs, in_runs)
        planned = relabel(planned, in_planned) if planned is not None else None
        return runs, planned, [f"{reason}; marked{NOT_APPLIED}, they equal the {baseline} rows."]
    runs = runs[[not x for x in in_runs]]
    planned = planned[[not x for x in in_planned]] if planned is not None else None
    return runs, planned, [f"{reason}; {int(sum(in_runs))} run(s) collapsed into {ALIGN} = {baseline} "
                           f"(left out; --keep-unapplied shows them)."]


def custom_name(by: Sequence[str] | None, columns: Sequence[str], metrics: Sequence[str] | None,
                where: Sequence[str] = ()) -> str:
    """A custom table's default file stem, from its rows, columns, metrics and filter (so two differently built
    custom tables do not overwrite each other): ``custom_<metric>_by_<factor>...``, hashed when long."""
    import hashlib

    def slug(items: Sequence[str]) -> str:
        return "+".join(re.sub(r"[^A-Za-z0-9._]+", "-", i).strip("-") for i in items)

    parts = ["custom", slug(metrics or [])]
    if by:
        parts += ["by", slug(by)]
    if columns:
        parts += ["cols", slug(columns)]
    if where:
        parts += ["where", slug(where)]
    name = "_".join(p for p in parts if p)
    if len(name) > 80:
        name = name[:68] + "_" + hashlib.sha256(name.encode()).hexdigest()[:10]
    return name


def build_table(name: str, runs: pd.DataFrame, planned: pd.DataFrame | None = None, *,
                by: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                columns: Sequence[str] = (), paired: str | None = "default", baseline: Any = None,
                confidence: float = 0.95, keep_unapplied: bool = False, file_name: str | None = None,
                where: Sequence[str] = ()) -> Table:
    """Table ``name`` of ``runs`` (see :func:`analysis.load.load`); ``by``/``metrics`` replace the defaults,
    ``columns`` pivots factors into columns, ``paired`` names the toggled factor (``None``: no paired section).

    By default the rows are every swept factor that is not the table's subject (its row groups) followed by the
    subject; with ``by`` the rows are exactly those and the rest is pooled (and named in a note). Grid cells
    whose alignment was not applied are collapsed (see :func:`unapplied_alignment`). ``file_name`` names the
    files (default: the table's name; for ``custom`` :func:`custom_name`, given ``where`` for it).

    ``planned`` (one row per trial of the grid) turns trials that never ran into ``missing`` counts; when you
    subset ``runs``, subset ``planned`` the same way (:func:`select` does both)."""
    definition = table_def(name)
    if file_name is not None and not _NAME.match(file_name):
        raise UsageError(f"--name {file_name!r}: use letters, digits and . _ + - (a file name, at most 100 "
                          f"characters)")
    if planned is not None and "study" in planned:
        planned = planned[planned["study"].isin(set(runs["study"]))]
    factors = [*factor_columns(runs), "study"]
    available = metric_columns(runs)
    notes: list[str] = []

    for factor in [*(by or []), *columns]:
        if factor not in factors:
            raise UsageError(unknown_name("factor", factor, factors))
    varying = {f for f in factors if len([v for v in level_order(f, planned, runs)]) > 1}
    groups: list[str] = []
    if by is None:
        subject = [f for f in definition.rows if f in factors]
        if name == "custom":
            rows = []
        else:
            first = [f for f in definition.groups if f in varying and f not in subject]
            others = [f for f in factors if f in varying and f not in NOT_SPLIT and f not in subject
                      and f not in first and f not in columns]
            groups = [*first, *others]
            rows = [*groups, *subject]
            if others:
                notes.append("Split by (not this table's subject): " + ", ".join(groups) + ".")
    else:
        rows = list(dict.fromkeys(by))
    rows = list(dict.fromkeys([*rows, *columns]))
    constant = [f for f in rows if f not in varying]
    if constant:
        values = {f: ", ".join(MARKDOWN.value(v) for v in level_order(f, planned, runs)) or "–" for f in constant}
        notes.append("Constant: " + ", ".join(f"{f} = {v}" for f, v in values.items()) + ".")
    rows = [f for f in rows if f in varying]
    columns = [c for c in columns if c in rows]
    pooled = [f for f in sorted(varying - set(rows) - NOT_SPLIT, key=factors.index)]
    if pooled:
        notes.append("Pooled over: " + "; ".join(
            f"{f} ({', '.join(MARKDOWN.value(v) for v in level_order(f, planned, runs))})" for f in pooled) +
            (" (not in --by)." if by is not None else "."))

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

    runs, planned, collapsed = unapplied_alignment(runs, planned, keep=keep_unapplied)
    notes += collapsed
    stats = summarize(runs, rows, chosen, planned=planned, confidence=confidence)
    factor = definition.paired if paired == "default" else paired
    paired_frame, base, paired_notes = None, None, []
    if factor is not None:
        if factor not in factors or factor == "study":
            raise UsageError(unknown_name("factor", factor, factors[:-1]))
        levels = [v for v in level_order(factor, planned, runs) if v is not None]
        if len(levels) > 1:
            base = default_baseline(levels) if baseline is None else _match_level(baseline, levels, factor)
            paired_frame = paired_differences(runs, factor, chosen, by=rows, baseline=base, planned=planned,
                                              confidence=confidence)
            if factor == ALIGN:  # marked non-applied levels only repeat the baseline: no differences for them
                paired_frame = paired_frame[[not str(v).endswith(NOT_APPLIED) for v in paired_frame[ALIGN]]]
            if collapsed:  # a level collapsed away in a group has nothing to pair there (not "incomplete")
                side = [*[r for r in rows if r != factor], factor]
                present = set(_combos(runs, side)) | (set(_combos(planned, side)) if planned is not None else set())
                paired_frame = paired_frame[[k in present for k in _combos(paired_frame, side)]]
            paired_frame = paired_frame.reset_index(drop=True)
            same = _identical_metrics(paired_frame)
            if same:
                paired_notes.append(f"Identical on both sides of every pair, so left out here: {', '.join(same)}"
                                    + (" (alignment does not change the trained endpoints)." if factor == ALIGN
                                       else "."))
        elif paired != "default":
            raise UsageError(f"--paired {factor}: the runs have only one level of it "
                              f"({', '.join(map(str, levels)) or 'none'}); nothing to compare")
        else:
            factor = None
    studies = ", ".join(dict.fromkeys(runs["study"]))
    title = definition.title if name != "custom" else f"Custom table of {studies}"
    notes.insert(0, f"Studies: {studies}." + (f" Only runs with {', '.join(where)}." if where else ""))
    stem = file_name or (custom_name(by, columns, metrics, where) if name == "custom" else name)
    return Table(stem, title, rows, columns, chosen, stats, paired_frame, factor, base, notes, confidence,
                 groups=[g for g in groups if g in rows], kind=name, paired_notes=paired_notes)
