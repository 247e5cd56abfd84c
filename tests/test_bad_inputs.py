"""Every bad input is refused before Ray starts and before any compute: ``study validate`` (and ``study run``)
exit with status 2 and one ``error:`` message naming the bad key, never a traceback, and write nothing.

Table-driven: each case is (description, spec edit, regex the message must match). An edit is a function
returning the spec as a dict (dumped as YAML), or the file's text or bytes as they are.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from study.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "searchspaces").glob("*.yaml"))

TRIAL = {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.25},
         "train": {"epochs": 1, "batch_size": 64, "augment": False}, "eval": {"points": 3}, "device": "cpu"}
BASE = {"name": "bad-inputs", "trial": TRIAL,
        "factors": {"seeds": [[0, 1], [2, 3]], "align.method": ["none", "weight"]},
        "resources": {"cpu": 1}, "execution": {"max_failures": 1}}
OPTUNA = {"name": "bad-optuna",
          "trial": {**TRIAL, "curve": {"kind": "bezier", "bends": 3, "train": {"epochs": 1, "batch_size": 64}}},
          "search": "optuna",
          "optuna": {"metric": "barrier_chord/bezier/test_loss", "mode": "min", "samples": 4, "seed": 0,
                     "repeat_seeds": [[0, 1]],
                     "space": {"curve.train.lr": {"type": "loguniform", "low": 1.0e-3, "high": 0.3},
                               "curve.bends": {"type": "int", "low": 3, "high": 5}}},
          "resources": {"cpu": 1}}
NO_ALIGN_FACTOR = {**BASE, "factors": {"seeds": [[0, 1], [2, 3]]}}  # for edits of trial.align
_DELETE = object()
BIG = 2**70


def at(path: str, value, base: dict = BASE):
    """The spec ``base`` with ``value`` at ``path`` (keys separated by '/': factor keys hold dots)."""
    def edit() -> dict:
        raw = copy.deepcopy(base)
        *parents, leaf = path.split("/")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = copy.deepcopy(value)
        return raw
    return edit


def opt(path: str, value):
    return at(path, value, OPTUNA)


def factors(value, base: dict = BASE):
    return at("factors", value, base)


def space(key: str, dist):
    return at(f"optuna/space/{key}", dist, OPTUNA)


def train(key: str, value):
    return at(f"trial/train/{key}", value)


def model(key: str, value):
    return at(f"trial/model/{key}", value)


def align(key: str, value):
    """An edit of ``trial.align`` (``key`` "" for the whole section) in a grid that does not sweep it."""
    return at("trial/align" + (f"/{key}" if key else ""), value, NO_ALIGN_FACTOR)


def options(**values):
    return at("trial/model", {"arch": "mlp", "width": 0.25, "symmetry": "w_asym", "options": values})


DUPLICATE_TOP = """name: a
trial: {data: {name: digits}, device: cpu}
name: b
"""
DUPLICATE_NESTED = """name: dup
trial:
  data: {name: digits}
  train:
    lr: 0.1
    epochs: 1
    lr: 0.2
"""
NOT_UTF8 = b"name: \xff\xfe bad\ntrial: {}\n"
UTF16 = "name: utf16\ntrial: {data: {name: digits}}\n".encode("utf-16")
UTF16_NO_BOM = "name: utf16\ntrial: {data: {name: digits}}\n".encode("utf-16-le")
BINARY = bytes(range(256)) * 4

NUMERIC = r"must be (an integer|a number)"

SPEC_CASES = [
    # --- the file itself
    ("duplicate top-level key", DUPLICATE_TOP, r"line 3: duplicate key 'name' \(first on line 1\)"),
    ("duplicate nested key", DUPLICATE_NESTED, r"line 7: duplicate key 'lr' \(first on line 5\)"),
    ("binary file", BINARY, r"not a UTF-8 text file"),
    ("UTF-16 file with BOM", UTF16, r"not a UTF-8 text file"),
    ("UTF-16 file without BOM", UTF16_NO_BOM, r"not a UTF-8 text file"),
    ("invalid UTF-8 bytes", NOT_UTF8, r"not a UTF-8 text file"),
    ("not YAML", "name: [unclosed\n", r"not valid YAML \(line \d+, column \d+\)"),
    ("tab indentation", "name: x\ntrial:\n\tdata: 1\n", r"not valid YAML"),
    ("empty file", "", r"a study spec is a mapping"),
    ("an alias bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + "name: b\ntrial: {}\n",
     r"more than 1000000 values once YAML aliases are expanded"),
    ("a file too large for a spec", "name: big\ntrial: {}\n" + "# padding\n" * 120_000, r"too large for a study spec"),
    ("a list, not a mapping", "- name: x\n", r"a study spec is a mapping"),
    ("a scalar", "just text\n", r"a study spec is a mapping"),
    # --- top level
    ("typo of name", at("nmae", "x"), r"nmae: unknown top-level key \(did you mean 'name'\?\)"),
    ("typo of trial", at("trail", {}), r"trail: unknown top-level key \(did you mean 'trial'\?\)"),
    ("typo of factors", at("factor", {}), r"factor: unknown top-level key \(did you mean 'factors'\?\)"),
    ("typo of resources", at("resource", {}), r"resource: unknown top-level key \(did you mean 'resources'\?\)"),
    ("typo of execution", at("executon", {}), r"executon: unknown top-level key \(did you mean 'execution'\?\)"),
    ("typo of search", at("serach", "grid"), r"serach: unknown top-level key \(did you mean 'search'\?\)"),
    ("typo of optuna", at("optuan", {}), r"optuan: unknown top-level key \(did you mean 'optuna'\?\)"),
    ("typo of description", at("descripton", "x"), r"descripton: unknown top-level key \(did you mean 'description"),
    ("no trial section", at("trial", _DELETE), r"trial: required"),
    ("trial is null", at("trial", None), r"trial: must be a mapping"),
    ("trial is a list", at("trial", ["data"]), r"trial: must be a mapping"),
    ("no name", at("name", _DELETE), r"name: must be 1-64 letters"),
    ("name with a space", at("name", "has space"), r"name: must be 1-64 letters"),
    ("name with a trailing newline", at("name", "study\n"), r"name: must be 1-64 letters.*got 'study\\n'"),
    ("name with a slash", at("name", "../escape"), r"name: must be 1-64 letters"),
    ("name too long", at("name", "x" * 65), r"name: must be 1-64 letters"),
    ("name is a number", at("name", 123), r"name: must be 1-64 letters.*got 123"),
    ("name starts with a dot", at("name", ".hidden"), r"name: must be 1-64 letters"),
    ("description is a list", at("description", ["a"]), r"description: must be text"),
    # --- trial: unknown keys of every section
    ("typo of trial.data", at("trial/dta", {}), r"trial: unknown key 'dta' \(did you mean 'data'\?\)"),
    ("typo of trial.model", at("trial/modle", {}), r"trial: unknown key 'modle' \(did you mean 'model'\?\)"),
    ("typo of trial.train", at("trial/trian", {}), r"trial: unknown key 'trian' \(did you mean 'train'\?\)"),
    ("typo of trial.align", at("trial/algin", {}), r"trial: unknown key 'algin' \(did you mean 'align'\?\)"),
    ("typo of trial.curve", at("trial/cuvre", {}), r"trial: unknown key 'cuvre' \(did you mean 'curve'\?\)"),
    ("typo of trial.eval", at("trial/evl", {}), r"trial: unknown key 'evl' \(did you mean 'eval'\?\)"),
    ("typo of trial.runtime", at("trial/runtim", {}), r"trial: unknown key 'runtim' \(did you mean 'runtime'\?\)"),
    ("typo of trial.seeds", at("trial/seed", [0, 1]), r"trial: unknown key 'seed' \(did you mean 'seeds'\?\)"),
    ("typo of trial.device", at("trial/devic", "cpu"), r"trial: unknown key 'devic' \(did you mean 'device'\?\)"),
    ("typo of data.name", at("trial/data/nmae", "digits"), r"trial.data: unknown key 'nmae'"),
    ("typo of model.width", model("widht", 1), r"trial.model: unknown key 'widht' \(did you mean 'width'\?\)"),
    ("typo of train.epochs", train("epoch", 1), r"trial.train: Recipe: unknown key 'epoch'"),
    ("typo of train.attack.eps", train("attack", {"epss": 0.1}), r"Recipe.attack: unknown key 'epss'"),
    ("typo of eval.attack.steps", at("trial/eval/attack", {"eps": 0.1, "stepz": 3}),
     r"trial.eval.attack: unknown key 'stepz' \(did you mean 'steps'\?\)"),
    ("typo of align.samples", align("", {"sample": 10}), r"trial.align: unknown key 'sample'"),
    ("typo of curve.bends", at("trial/curve", {"bend": 3}), r"trial.curve: unknown key 'bend'"),
    ("typo of curve.train.lr", at("trial/curve", {"train": {"lrr": 0.1}}), r"trial.curve.train: .*'lrr'"),
    ("typo of eval.points", at("trial/eval/point", 3), r"trial.eval: unknown key 'point'"),
    ("typo of runtime.compile", at("trial/runtime", {"compiel": True}), r"trial.runtime: unknown key 'compiel'"),
    ("typo of a model option", model("options", {"depht": 2}), r"unknown option for mlp 'depht'"),
    ("typo of a data option", at("trial/data/options", {"tset_fraction": 0.1}), r"'tset_fraction'"),
    ("typo of an align option", align("", {"method": "weight", "options": {"max_sweep": 3}}),
     r"unknown option 'max_sweep' of alignment method 'weight'"),
    ("a section that is not a mapping", at("trial/train", 5), r"trial.train: Recipe must be a mapping"),
    # --- train (Recipe)
    ("epochs 0", train("epochs", 0), r"Recipe.epochs must be an integer in \[1, inf\), got 0"),
    ("epochs negative", train("epochs", -1), r"Recipe.epochs must be an integer"),
    ("epochs 1e9", train("epochs", 10**9), r"Recipe.epochs must be an integer in \[1, 100000\], got 1000000000"),
    ("epochs fractional", train("epochs", 2.5), r"Recipe.epochs must be an integer"),
    ("epochs as text", train("epochs", "10"), r"Recipe.epochs must be an integer.*\(str\)"),
    ("epochs true", train("epochs", True), r"Recipe.epochs must be an integer.*True"),
    ("batch_size 0", train("batch_size", 0), r"Recipe.batch_size must be an integer"),
    ("batch_size 2**21", train("batch_size", 2**21), r"Recipe.batch_size must be an integer in \[1, 1048576\]"),
    ("eval_batch_size 0", train("eval_batch_size", 0), r"Recipe.eval_batch_size must be an integer"),
    ("lr 0", train("lr", 0), r"Recipe.lr must be a number in \(0"),
    ("lr negative", train("lr", -0.1), r"Recipe.lr must be a number"),
    ("lr NaN", train("lr", float("nan")), r"Recipe.lr must be a number.*nan"),
    ("lr inf", train("lr", float("inf")), r"Recipe.lr must be a number.*inf"),
    ("lr written 1e-3 (YAML text)", train("lr", "1e-3"), r"Recipe.lr must be a number.*YAML reads 1e-3 as a string"),
    ("momentum 1", train("momentum", 1.0), r"Recipe.momentum must be a number in \[0, 1\)"),
    ("momentum NaN", train("momentum", float("nan")), r"Recipe.momentum must be a number"),
    ("weight_decay negative", train("weight_decay", -1.0), r"Recipe.weight_decay must be a number"),
    ("weight_decay inf", train("weight_decay", float("inf")), r"Recipe.weight_decay must be a number"),
    ("warmup longer than training", train("warmup_epochs", 5), r"Recipe.warmup_epochs must be a number in \[0, 1\]"),
    ("warmup NaN", train("warmup_epochs", float("nan")), r"Recipe.warmup_epochs must be a number"),
    ("step_gamma 0", train("step_gamma", 0), r"Recipe.step_gamma must be a number"),
    ("step_milestones decreasing", train("step_milestones", [0.75, 0.5]), r"Recipe.step_milestones must be strictly"),
    ("step_milestones above 1", train("step_milestones", [1.5]), r"Recipe.step_milestones\[\] must be a number"),
    ("step_milestones a number", train("step_milestones", 0.5), r"Recipe.step_milestones must be a sequence"),
    ("label_smoothing 1", train("label_smoothing", 1.0), r"Recipe.label_smoothing must be a number"),
    ("unknown optimizer", train("optimizer", "adam"), r"Recipe.optimizer must be one of .*\(did you mean 'adamw'\?\)"),
    ("unknown schedule", train("schedule", "cosin"), r"Recipe.schedule must be one of .*\(did you mean 'cosine'\?\)"),
    ("nesterov with adamw", at("trial/train", {"optimizer": "adamw", "nesterov": True}),
     r"Recipe.nesterov=True needs optimizer='sgd'"),
    ("augment as text", train("augment", "yes"), r"Recipe.augment must be True or False"),
    ("bf16 as a number", train("bf16", 1), r"Recipe.bf16 must be True or False"),
    ("attack eps negative", train("attack", {"eps": -0.1}), r"AttackConfig.eps must be a finite number >= 0"),
    ("attack eps NaN", train("attack", {"eps": float("nan")}), r"AttackConfig.eps must be a finite number"),
    ("attack steps 0", train("attack", {"eps": 0.1, "steps": 0}), r"AttackConfig.steps must be an integer >= 1"),
    ("attack steps 1e9", train("attack", {"eps": 0.1, "steps": 10**9}), r"AttackConfig.steps .* <= 10000"),
    ("attack norm l3", train("attack", {"eps": 0.1, "norm": "l3"}), r"AttackConfig.norm must be one of linf, l2"),
    ("attack alpha 0", train("attack", {"eps": 0.1, "alpha": 0}), r"AttackConfig.alpha must be None"),
    ("attack alpha inf", train("attack", {"eps": 0.1, "alpha": float("inf")}), r"AttackConfig.alpha must be"),
    ("attack random_start as text", train("attack", {"eps": 0.1, "random_start": "true"}),
     r"AttackConfig.random_start must be True or False"),
    ("attack as a number", train("attack", 0.03), r"Recipe.attack must be an AttackConfig or None"),
    ("curve epochs 1e9", at("trial/curve", {"train": {"epochs": 10**9}}), r"trial.curve.train: Recipe.epochs"),
    ("curve lr NaN", at("trial/curve", {"train": {"lr": float("nan")}}), r"trial.curve.train: Recipe.lr"),
    # --- model
    ("width 0", model("width", 0), r"trial.model: width must be > 0 and <= 64"),
    ("width negative", model("width", -1), r"trial.model: width must be > 0"),
    ("width 1e6", model("width", 1e6), r"trial.model: width must be > 0 and <= 64.*got 1000000.0"),
    ("width inf", model("width", float("inf")), r"trial.model: width must be .*got inf"),
    ("width NaN", model("width", float("nan")), r"trial.model: width must be .*got nan"),
    ("width as text", model("width", "wide"), r"trial.model: width must be"),
    ("unknown architecture", model("arch", "resnet-20"), r"unknown architecture 'resnet-20' \(did you mean 'resnet20"),
    ("architecture typo", model("arch", "mpl"), r"unknown architecture 'mpl' \(did you mean 'mlp'\?\)"),
    ("architecture a list", model("arch", ["mlp"]), r"trial.model: arch must be a string"),
    ("unknown symmetry", model("symmetry", "w-asym"), r"unknown symmetry 'w-asym' \(did you mean 'w_asym'\?\)"),
    ("mask_seed 2**70", model("mask_seed", BIG), r"trial.model: mask_seed must be an integer in \[0, 2\*\*63\)"),
    ("mask_seed negative", model("mask_seed", -1), r"trial.model: mask_seed must be an integer in \[0, 2\*\*63\)"),
    ("mask_seed fractional", model("mask_seed", 1.5), r"trial.model: mask_seed must be an integer"),
    ("n_fix above the fan-in", options(n_fix=1000), r"n_fix=1000 for layer group 'layer0' must satisfy .*fan-in 64"),
    ("n_fix equal to the fan-in", options(n_fix=64), r"n_fix=64 .*fan-in 64 .*data set 'digits'"),
    ("n_fix per group above fan-in", options(n_fix={"output": 500}), r"n_fix=500 for layer group 'output'"),
    ("n_fix of an unknown group", options(n_fix={"layer7": 3}), r"unknown n_fix layer group 'layer7'"),
    ("n_fix without w_asym", model("options", {"n_fix": 4}), r"option 'n_fix' only applies to symmetry 'w_asym'"),
    ("n_fix negative", options(n_fix=-1), r"options.n_fix must be an integer in \[0, inf\)"),
    ("n_fix as text", options(n_fix="8"), r"options.n_fix must be an integer"),
    ("kappa negative", options(kappa=-1.0), r"options.kappa must be a number in \[0, inf\)"),
    ("kappa NaN", options(kappa=float("nan")), r"options.kappa must be a number"),
    ("figlu_scale 0", at("trial/model", {"arch": "mlp", "symmetry": "sigma_asym", "options": {"figlu_scale": 0}}),
     r"options.figlu_scale must be a number in \(0, inf\)"),
    ("mlp depth 0", model("options", {"depth": 0}), r"options.depth must be an integer in \[1, 64\]"),
    ("mlp depth 1e6", model("options", {"depth": 10**6}), r"options.depth must be an integer in \[1, 64\]"),
    ("mlp hidden 0", model("options", {"hidden": 0}), r"options.hidden must be an integer in \[1, 65536\]"),
    ("mlp hidden 1e7", model("options", {"hidden": 10**7}), r"options.hidden must be an integer in \[1, 65536\]"),
    ("unknown activation", model("options", {"act": "tanh"}), r"unknown act for mlp 'tanh'"),
    ("unknown norm", model("options", {"norm": "batch"}), r"unknown norm for mlp 'batch'"),
    ("options a list", model("options", ["depth"]), r"trial.model: options must be a mapping"),
    ("a model no device could train", at("trial/model", {"arch": "mlp", "width": 64, "options": {"hidden": 4096}}),
     r"trial.model: mlp at width 64 has .* parameters"),
    ("a conv net on flat input", at("trial", {**TRIAL, "model": {"arch": "tinyten"}, "data": {"name": "mnist1d"}}),
     r"conv nets need image input"),
    # --- data
    ("unknown data set", at("trial/data/name", "digitz"), r"unknown data set 'digitz' \(did you mean 'digits'\?\)"),
    ("data set name a number", at("trial/data/name", 10), r"trial.data: name must be a string"),
    ("val_fraction 1", at("trial/data/val_fraction", 1.0), r"trial.data: val_fraction must be a number in \[0, 1\)"),
    ("val_fraction NaN", at("trial/data/val_fraction", float("nan")), r"trial.data: val_fraction must be a number"),
    ("val_fraction negative", at("trial/data/val_fraction", -0.1), r"trial.data: val_fraction must be a number"),
    ("split_seed 2**70", at("trial/data/split_seed", BIG), r"trial.data: split_seed must be an integer in \[0, 2\*\*6"),
    ("split_seed as text", at("trial/data/split_seed", "0"), r"trial.data: split_seed must be an integer"),
    ("download as text", at("trial/data/download", "yes"), r"trial.data: download must be true or false"),
    ("data_root a number", at("trial/data/data_root", 5), r"trial.data: data_root must be a string or null"),
    ("test_fraction above 1", at("trial/data/options", {"test_fraction": 1.5}), r"options.test_fraction must be"),
    ("test_seed 2**70", at("trial/data/options", {"test_seed": BIG}), r"options.test_seed must be an integer in"),
    ("synthetic n_train 1e9", at("trial/data", {"name": "synthetic", "options": {"n_train": 10**9}}),
     r"options.n_train must be an integer in \[1, 100000000\]"),
    ("synthetic in_shape with 0", at("trial/data", {"name": "synthetic", "options": {"in_shape": [0, 8, 8]}}),
     r"options.in_shape\[\] must be an integer in \[1, 65536\]"),
    ("synthetic in_shape a number", at("trial/data", {"name": "synthetic", "options": {"in_shape": 8}}),
     r"options.in_shape must be a list of 1 to 4 sizes"),
    ("synthetic one class", at("trial/data", {"name": "synthetic", "options": {"num_classes": 1}}),
     r"options.num_classes must be an integer in \[2, 100000\]"),
    ("synthetic too large for any device",
     at("trial/data", {"name": "synthetic", "options": {"n_train": 10**8, "in_shape": [3, 256, 256]}}),
     r"trial.data: options: n_train \+ n_test samples .* GiB"),
    ("mnist1d num_samples negative", at("trial/data", {"name": "mnist1d", "options": {"num_samples": -5}}),
     r"options.num_samples must be an integer"),
    ("data options a list", at("trial/data/options", [1]), r"trial.data: options must be a mapping"),
    # --- seeds and device
    ("seeds equal", factors({"seeds": [[0, 0]]}), r"trial.seeds must differ"),
    ("seeds not a pair", factors({"seeds": [[0]]}), r"trial.seeds must be a pair of integers"),
    ("seed 2**70", factors({"seeds": [[0, BIG]]}), r"trial.seeds: each seed must be an integer in \[0, 2\*\*63\)"),
    ("seed 2**63", factors({"seeds": [[0, 2**63]]}), r"trial.seeds: each seed must be an integer in \[0, 2\*\*63\)"),
    ("seed negative", factors({"seeds": [[-1, 1]]}), r"trial.seeds: each seed must be an integer"),
    ("seeds as text", factors({"seeds": ["01"]}), r"trial.seeds must be a pair of integers"),
    ("seeds fractional", factors({"seeds": [[0.0, 1.0]]}), r"trial.seeds must be a pair of integers"),
    ("seeds booleans", factors({"seeds": [[True, False]]}), r"trial.seeds must be a pair of integers"),
    ("unknown device", at("trial/device", "gpu"), r"trial.device: unknown device 'gpu'"),
    ("cuda device without an index", at("trial/device", "cuda:x"), r"trial.device: unknown device 'cuda:x'"),
    ("device a number", at("trial/device", 0), r"trial.device: unknown device 0"),
    # --- align
    ("unknown alignment method", align("method", "wieght"), r"unknown alignment method 'wieght' \(did you"),
    ("align samples 0", align("samples", 0), r"trial.align: samples must be an integer >= 1"),
    ("align samples 1e9", align("samples", 10**9), r"trial.align: samples must be .* <= 100000000"),
    ("align seed 2**70", align("seed", BIG), r"trial.align: seed must be an integer in \[0, 2\*\*63\)"),
    ("option of method none", align("options", {"foo": 1}), r"unknown option 'foo' of alignment method"),
    ("weight max_sweeps 0", align("", {"method": "weight", "options": {"max_sweeps": 0}}),
     r"trial.align: options.max_sweeps must be an integer in \[1, 100000000\]"),
    ("weight max_sweeps as text", align("", {"method": "weight", "options": {"max_sweeps": "many"}}),
     r"trial.align: options.max_sweeps must be an integer"),
    ("pam recipe with a typo", align("", {"method": "pam", "options": {"recipe": {"lrr": 1}}}),
     r"trial.align: Recipe: unknown key 'lrr'"),
    ("align options a list", align("options", ["x"]), r"trial.align: options must be a mapping"),
    ("unknown activation similarity", align("", {"method": "activation", "options": {"similarity": "cosine"}}),
     r"trial.align: options.similarity must be one of pearson, inner; got 'cosine'"),
    ("pam recipe naming epochs", align("", {"method": "pam", "options": {"recipe": {"epochs": 3}}}),
     r"trial.align: options.recipe: set the curve step's epochs with the pam option 'curve_epochs'"),
    ("unknown pam init", align("", {"method": "pam", "options": {"init": "random"}}),
     r"trial.align: options.init must be one of identity, activation"),
    ("pam perm_lr 0", align("", {"method": "pam", "options": {"perm_lr": 0.0}}),
     r"trial.align: options.perm_lr must be a number in \(0, inf\)"),
    ("pam temperature NaN", align("", {"method": "pam", "options": {"temperature": float("nan")}}),
     r"trial.align: options.temperature must be a number"),
    ("ste steps 0", align("", {"method": "ste", "options": {"steps": 0}}),
     r"trial.align: options.steps must be an integer in \[1, 100000000\]"),
    ("ste lr negative", align("", {"method": "ste", "options": {"lr": -0.01}}),
     r"trial.align: options.lr must be a number in \(0, inf\)"),
    ("ste lr 0 (no step would be taken)", align("", {"method": "ste", "options": {"lr": 0.0}}),
     r"trial.align: options.lr must be a number in \(0, inf\)"),
    ("ste weight_init as text", align("", {"method": "ste", "options": {"weight_init": "yes"}}),
     r"trial.align: options.weight_init must be true or false"),
    ("typo of an ste option", align("", {"method": "ste", "options": {"stpes": 10}}),
     r"unknown option 'stpes' of alignment method 'ste' \(did you mean 'steps'\?\)"),
    # --- curve
    ("unknown curve kind", at("trial/curve", {"kind": "bezeir"}), r"unknown curve kind .*'bezeir' \(did you mean"),
    ("curve kind linear", at("trial/curve", {"kind": "linear"}), r"unknown curve kind \(the linear path is always"),
    ("bends 2", at("trial/curve", {"bends": 2}), r"trial.curve: bends must be an integer >= 3"),
    ("bends 1e6", at("trial/curve", {"bends": 10**6}), r"trial.curve: bends must be .*<= 64, got 1000000"),
    ("bends fractional", at("trial/curve", {"bends": 3.0}), r"trial.curve: bends must be an integer"),
    ("curve seed 2**70", at("trial/curve", {"seed": BIG}), r"trial.curve: seed must be an integer in \[0, 2\*\*63\)"),
    ("curve not a mapping", at("trial/curve", True), r"trial.curve must be a mapping"),
    # --- eval
    ("eval points 2", at("trial/eval/points", 2), r"trial.eval: points must be an integer >= 3"),
    ("eval points 1e9", at("trial/eval/points", 10**9), r"trial.eval: points must be .*<= 10000, got 1000000000"),
    ("eval batch_size 0", at("trial/eval/batch_size", 0), r"trial.eval: batch_size must be an integer in \[1, 1048576"),
    ("eval batch_size 2**30", at("trial/eval/batch_size", 2**30), r"trial.eval: batch_size must be an integer"),
    ("eval max_samples 0", at("trial/eval/max_samples", 0), r"trial.eval: max_samples must be an integer"),
    ("eval max_samples 1e9", at("trial/eval/max_samples", 10**9), r"trial.eval: max_samples must be an integer in"),
    ("robust split typo", at("trial/eval/robust_splits", ["tset"]), r"robust_splits: unknown split 'tset'"),
    ("robust splits as text", at("trial/eval/robust_splits", "test"), r"robust_splits must be a list of splits"),
    ("robust split twice", at("trial/eval/robust_splits", ["test", "test"]), r"robust_splits: a split is listed twice"),
    ("eval bf16 as text", at("trial/eval/bf16", "no"), r"trial.eval: bf16 must be true or false"),
    ("eval plane without a curve", at("trial/eval/plane", {"grid": 5}),
     r"trial.eval.plane: the plane runs through .* needs a curve"),
    ("eval plane grid 1", at("trial/eval/plane", {"grid": 1}, {**BASE, "trial": OPTUNA["trial"]}),
     r"trial.eval.plane: grid must be an integer in \[2, 101\], got 1"),
    ("eval plane grid 1e4", at("trial/eval/plane", {"grid": 10**4}, {**BASE, "trial": OPTUNA["trial"]}),
     r"trial.eval.plane: grid must be an integer in \[2, 101\]"),
    ("eval plane negative margin", at("trial/eval/plane", {"margin": -0.1}, {**BASE, "trial": OPTUNA["trial"]}),
     r"trial.eval.plane: margin must be a number in \[0, 10\]"),
    ("eval plane typo", at("trial/eval/plane", {"grids": 5}, {**BASE, "trial": OPTUNA["trial"]}),
     r"trial.eval.plane: unknown key 'grids' \(did you mean 'grid'\?\)"),
    ("eval plane as a number", at("trial/eval/plane", 11, {**BASE, "trial": OPTUNA["trial"]}),
     r"trial.eval.plane must be a mapping"),
    ("eval merge as text", at("trial/eval/merge", "yes"), r"trial.eval: merge must be true or false"),
    ("eval repair as text", at("trial/eval/repair", "yes"), r"trial.eval: repair must be true or false"),
    ("eval repair as a number", at("trial/eval/repair", 1), r"trial.eval: repair must be true or false, got 1"),
    ("typo of eval.repair", at("trial/eval/repiar", True), r"trial.eval: unknown key 'repiar' \(did you mean 'repair'"),
    ("min_endpoint_acc above 1", at("trial/eval/min_endpoint_acc", 1.5),
     r"trial.eval: min_endpoint_acc must be a number in \[0, 1\], got 1.5"),
    ("min_endpoint_acc negative", at("trial/eval/min_endpoint_acc", -0.1), r"trial.eval: min_endpoint_acc must be"),
    ("min_endpoint_acc as percent text", at("trial/eval/min_endpoint_acc", "55%"),
     r"trial.eval: min_endpoint_acc must be a number"),
    ("min_endpoint_acc NaN", at("trial/eval/min_endpoint_acc", float("nan")), r"trial.eval: min_endpoint_acc must be"),
    ("min_endpoint_acc as a boolean", at("trial/eval/min_endpoint_acc", True), r"trial.eval: min_endpoint_acc must be"),
    ("eval attack eps inf", at("trial/eval/attack", {"eps": float("inf")}), r"trial.eval.attack: .*eps must be"),
    # --- runtime
    ("parallel_points 0", at("trial/runtime", {"parallel_points": 0}), r"runtime.parallel_points must be an integer"),
    ("channels_last as text", at("trial/runtime", {"channels_last": "maybe"}), r"runtime.channels_last must be true"),
    ("compile as a number", at("trial/runtime", {"compile": 1}), r"runtime.compile must be true or false"),
    ("typo of runtime.profile", at("trial/runtime", {"profile": "fats"}), r"runtime.profile must be one of default, fast; got 'fats'"),
    # --- factors
    ("factors a list", factors(["seeds"]), r"factors: must be a mapping of dotted trial paths"),
    ("unknown factor", factors({"model.acrh": ["mlp"]}), r"factors.model.acrh: unknown trial setting \(did you mean"),
    ("factor key a number", factors({1: [1]}), r"factors.1: unknown trial setting"),
    ("factor value not a list", factors({"align.method": "none"}), r"factors.align.method: must be a list of values"),
    ("factor empty list", factors({"align.method": []}), r"factors.align.method: empty list"),
    ("factor over a fixed value", factors({"model.arch": ["mlp", "tinyten"]}),
     r"factors.model.arch: sets model.arch, which trial.model.arch also fixes"),
    ("bundle factor over a fixed value", factors({"model": [{"arch": "mlp"}, {"arch": "tinyten"}]}),
     r"factors.model: sets model.arch, which trial.model.arch also fixes"),
    ("root bundle over a fixed value", factors({"trial": [{"data": {"name": "digits"}}]}),
     r"factors.trial: sets data.name, which trial.data.name also fixes"),
    ("factor replacing a fixed section", factors({"train": [None]}), r"factors.train: sets train, which trial.train"),
    ("overlapping factors", factors({"align.method": ["none"], "align": [{"method": "weight"}]}),
     r"factors.align.method and factors.align: both set align.method"),
    ("overlapping factor and bundle", at("factors", {"model.symmetry": ["standard"], "model": [{"symmetry": "w_asym"}]},
                                          {**BASE, "trial": {**TRIAL, "model": {"width": 0.25}}}),
     r"factors.model.symmetry and factors.model: both set model.symmetry"),
    ("overlapping section and setting", factors({"train.attack": [{"eps": 0.1}], "train.attack.eps": [0.0, 0.1]}),
     r"factors.train.attack and factors.train.attack.eps: both set train.attack.eps"),
    ("factor with a bad value", factors({"train.lr": [0.1, -1.0]}), r"factors \(train.lr=-1.0\): .*Recipe.lr must be"),
    ("factor values giving the same trial", factors({"align.method": ["none", "none"]}), r"give the same trial"),
    ("seed pairs listed twice", factors({"seeds": [[0, 1], [0, 1]]}), r"give the same trial"),
    ("root bundle with a non-mapping", factors({"trial": [1]}), r"factors.trial: takes mappings of trial settings"),
    ("bundle with an unknown key", factors({"model": [{"arhc": "mlp"}]}), r"trial.model: unknown key 'arhc'"),
    ("open path on the wrong symmetry", factors({"model.options.n_fix": [4, 8]}),
     r"option 'n_fix' only applies to symmetry 'w_asym'"),
    ("a grid larger than any study", factors({"train.lr": [0.01 * (i + 1) for i in range(50)],
                                              "train.weight_decay": [1e-4 * i for i in range(50)],
                                              "train.momentum": [0.01 * i for i in range(50)]}),
     r"factors: the grid has 125000 combinations"),
    ("a YAML date as a value", "name: d\ntrial: {data: {name: digits}, model: {options: {depth: 2024-01-01}}}\n",
     r"options.depth must be an integer"),
    # --- resources
    ("cpu negative", at("resources", {"cpu": -1}), r"resources.cpu: must be a number >= 0"),
    ("cpu NaN", at("resources", {"cpu": float("nan")}), r"resources.cpu: must be a number >= 0 .*got nan"),
    ("cpu inf", at("resources", {"cpu": float("inf")}), r"resources.cpu: must be a number .*got inf"),
    ("cpu as text", at("resources", {"cpu": "1"}), r"resources.cpu: must be a number"),
    ("cpu true", at("resources", {"cpu": True}), r"resources.cpu: must be a number"),
    ("cpu 1e6", at("resources", {"cpu": 10**6}), r"resources.cpu: must be a number >= 0 and <= 65536"),
    ("gpu NaN", at("resources", {"cpu": 1, "gpu": float("nan")}), r"resources.gpu: must be a number"),
    ("gpu 1.5", at("resources", {"gpu": 1.5}), r"resources.gpu: above 1 it must be a whole number"),
    ("no cpu and no gpu", at("resources", {"cpu": 0, "gpu": 0}), r"resources: a trial needs cpu > 0 or gpu > 0"),
    ("resources a list", at("resources", [1]), r"resources: must be a mapping"),
    ("resources a number", at("resources", 0), r"resources: must be a mapping"),
    ("resources typo", at("resources", {"cpus": 1}), r"resources.cpus: unknown key \(did you mean 'cpu'\?\)"),
    # --- execution
    ("max_failures negative", at("execution", {"max_failures": -1}), r"execution.max_failures: must be an integer"),
    ("max_failures fractional", at("execution", {"max_failures": 1.5}), r"execution.max_failures: must be an integer"),
    ("max_failures as text", at("execution", {"max_failures": "2"}), r"execution.max_failures: must be an integer"),
    ("max_concurrent 0", at("execution", {"max_concurrent": 0}), r"execution.max_concurrent: must be null or"),
    ("max_concurrent negative", at("execution", {"max_concurrent": -3}), r"execution.max_concurrent: must be null"),
    ("max_concurrent NaN", at("execution", {"max_concurrent": float("nan")}), r"execution.max_concurrent: must be"),
    ("execution typo", at("execution", {"max_fail": 1}), r"execution.max_fail: unknown key"),
    ("execution a list", at("execution", [1]), r"execution: must be a mapping"),
    # --- search and optuna
    ("unknown search", at("search", "random"), r"search: unknown search 'random'"),
    ("search a list", at("search", ["grid"]), r"search: unknown search \['grid'\]"),
    ("optuna search without a section", at("search", "optuna"), r"optuna: 'search: optuna' needs an optuna section"),
    ("optuna section on a grid", at("optuna", {"metric": "x"}), r"optuna: only used with 'search: optuna'"),
    ("optuna section a list", opt("optuna", ["metric"]), r"optuna: 'search: optuna' needs an optuna section"),
    ("optuna typo", opt("optuna/sample", 3), r"optuna.sample: unknown key \(did you mean 'samples'\?\)"),
    ("optuna without a metric", opt("optuna/metric", _DELETE), r"optuna.metric: required"),
    ("unknown metric", opt("optuna/metric", "barrier/bezier/test_loss"),
     r"optuna.metric: unknown metric 'barrier/bezier/test_loss' \(did you mean"),
    ("metric of a path not fitted", opt("optuna/metric", "barrier_chord/polychain/test_loss"),
     r"optuna.metric: unknown metric 'barrier_chord/polychain/test_loss'"),
    ("robust metric without an attack", opt("optuna/metric", "robust/barrier_chord/linear/test_loss"),
     r"optuna.metric: unknown metric 'robust/barrier_chord/linear/test_loss'"),
    ("metric of a split not evaluated", opt("optuna/metric", "barrier_chord/linear/val_loss"),
     r"optuna.metric: unknown metric 'barrier_chord/linear/val_loss'"),
    ("metric a number", opt("optuna/metric", 3), r"optuna.metric: must be the name of a metric"),
    ("mode minimize", opt("optuna/mode", "minimize"), r"optuna.mode: must be min or max, got 'minimize'"),
    ("samples 0", opt("optuna/samples", 0), r"optuna.samples: must be an integer >= 1"),
    ("samples 1e9", opt("optuna/samples", 10**9), r"optuna.samples: must be an integer >= 1 and <= 100000"),
    ("samples as text", opt("optuna/samples", "8"), r"optuna.samples: must be an integer"),
    ("samples null", opt("optuna/samples", None), r"optuna.samples: must be an integer"),
    ("optuna seed as text", opt("optuna/seed", "zero"), r"optuna.seed must be an integer in \[0, 2\*\*32\)"),
    ("optuna seed 2**40", opt("optuna/seed", 2**40), r"optuna.seed must be an integer in \[0, 2\*\*32\)"),
    ("optuna seed negative", opt("optuna/seed", -1), r"optuna.seed must be an integer"),
    ("repeat_seeds equal pair", opt("optuna/repeat_seeds", [[0, 0]]), r"optuna.repeat_seeds: must be a list of pairs"),
    ("repeat_seeds 2**70", opt("optuna/repeat_seeds", [[0, BIG]]), r"optuna.repeat_seeds: must be a list of pairs"),
    ("repeat_seeds as text", opt("optuna/repeat_seeds", "01"), r"optuna.repeat_seeds: must be a list of pairs"),
    ("repeat_seeds twice", opt("optuna/repeat_seeds", [[0, 1], [0, 1]]), r"optuna.repeat_seeds: a seed pair is listed"),
    ("space empty", opt("optuna/space", {}), r"optuna.space: must be a non-empty mapping"),
    ("space unknown setting", space("curve.train.lrr", {"type": "uniform", "low": 0.1, "high": 0.2}),
     r"optuna.space.curve.train.lrr: unknown trial setting \(did you mean 'curve.train.lr'\?\)"),
    ("space distribution not a mapping", space("train.lr", 0.1), r"optuna.space.train.lr: must be a mapping with type"),
    ("space unknown type", space("train.lr", {"type": "normal", "low": 0, "high": 1}),
     r"optuna.space.train.lr: must be a mapping with type one of"),
    ("space unknown key", space("train.lr", {"type": "uniform", "low": 0.1, "high": 0.2, "step": 0.1}),
     r"optuna.space.train.lr.step: unknown key for type uniform"),
    ("uniform lr below 0", space("train.lr", {"type": "uniform", "low": -1.0, "high": 0.5}),
     r"optuna.space.train.lr: low=-1.0 gives a trial that cannot run: .*Recipe.lr must be a number"),
    ("int bends from 1", space("curve.bends", {"type": "int", "low": 1, "high": 5}),
     r"optuna.space.curve.bends: low=1 gives a trial that cannot run: .*bends must be an integer >= 3"),
    ("int bends beyond the limit", space("curve.bends", {"type": "int", "low": 3, "high": 100}),
     r"optuna.space.curve.bends: high=100 gives a trial that cannot run"),
    ("uniform over an integer setting", space("curve.bends", {"type": "uniform", "low": 3, "high": 5}),
     r"optuna.space.curve.bends: low=3.0 gives a trial that cannot run: .*bends must be an integer"),
    ("low not below high", space("train.lr", {"type": "uniform", "low": 0.5, "high": 0.1}),
     r"optuna.space.train.lr: needs low < high"),
    ("low NaN", space("train.lr", {"type": "uniform", "low": float("nan"), "high": 0.1}),
     r"optuna.space.train.lr.low must be a number .*got nan"),
    ("high inf", space("train.lr", {"type": "uniform", "low": 0.1, "high": float("inf")}),
     r"optuna.space.train.lr.high must be a number .*got inf"),
    ("bound as text", space("train.lr", {"type": "uniform", "low": "1e-3", "high": 0.1}),
     r"optuna.space.train.lr.low must be a number"),
    ("loguniform from 0", space("train.lr", {"type": "loguniform", "low": 0, "high": 0.1}),
     r"optuna.space.train.lr.low: must be > 0 for loguniform"),
    ("int with fractional bounds", space("curve.bends", {"type": "int", "low": 3.5, "high": 5}),
     r"optuna.space.curve.bends.low must be an integer .*\(type int needs integer bounds\)"),
    ("choice without values", space("model.arch", {"type": "choice", "values": []}),
     r"optuna.space.model.arch.values: a non-empty list is required"),
    ("choice values not a list", space("model.arch", {"type": "choice", "values": "mlp"}),
     r"optuna.space.model.arch.values: a non-empty list is required"),
    ("choice the setting does not allow", space("model.symmetry", {"type": "choice", "values": ["standard", "wasym"]}),
     r"optuna.space.model.symmetry: values\[1\]='wasym' gives a trial that cannot run: .*unknown symmetry 'wasym'"),
    ("choice of mappings", space("model", {"type": "choice", "values": [{"arch": "mlp"}]}),
     r"optuna.space.model.values: a choice must be a number, text"),
    ("choice listed twice", space("align.method", {"type": "choice", "values": ["none", "none"]}),
     r"optuna.space.align.method.values: a choice is listed twice"),
    ("choice making the metric unavailable", space("curve.kind", {"type": "choice", "values": ["bezier", "polychain"]}),
     r"optuna.metric: unknown metric 'barrier_chord/bezier/test_loss'"),
    ("space over the seeds", space("seeds", {"type": "choice", "values": [1, 2]}),
     r"optuna.space.seeds: seeds are not searched"),
    ("space overlapping keys", space("curve.train", {"type": "choice", "values": [None]}),
     r"optuna.space.curve.train and optuna.space.curve.train.lr: both set curve.train.lr"),
    ("factors with optuna", opt("factors", {"align.method": ["none"]}), r"factors: not used with 'search: optuna'"),
    ("searched setting also a factor", at("factors", {"curve.bends": [3]}, OPTUNA),
     r"optuna.space.curve.bends: also a grid factor"),
]


def _write(directory: Path, edit) -> Path:
    path = directory / "spec.yaml"
    if isinstance(edit, bytes):
        path.write_bytes(edit)
    elif isinstance(edit, str):
        path.write_text(edit)
    else:
        path.write_text(yaml.safe_dump(edit(), sort_keys=False, allow_unicode=True))
    return path


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def _assert_one_error(err: str, message: str) -> None:
    assert "Traceback" not in err, err
    assert len(re.findall(r"\berror:", err)) == 1, err
    assert re.search(message, err), f"{message!r} not in:\n{err}"


@pytest.fixture
def no_study(monkeypatch, tmp_path):
    """Nothing may start a study; anything written would land in tmp_path (the working directory)."""
    import study.sweep.driver

    monkeypatch.setattr(study.sweep.driver, "run_study", lambda *a, **k: pytest.fail("started a study"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_table_is_large_and_its_descriptions_unique():
    assert len(SPEC_CASES) + len(CLI_CASES) >= 100
    names = [c[0] for c in SPEC_CASES + CLI_CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("description, edit, message", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_is_refused_before_anything_starts(no_study, capsys, description, edit, message):
    path = _write(no_study, edit)
    before = _files(no_study)
    for command in (["validate", str(path)], ["run", str(path), "--out", str(no_study / "out")]):
        assert main(command) == 2, command
        _assert_one_error(capsys.readouterr().err, message)
        assert _files(no_study) == before, command


# --- command lines ------------------------------------------------------------------------------------------------
def _study_folder(directory: Path) -> Path:
    folder = directory / "study"
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(BASE))
    return folder


SPEC, FOLDER, MISSING = "{spec}", "{folder}", "{missing}"

#: (description, argv, regex). Placeholders: a valid spec, a study folder holding it, a path that does not exist.
CLI_CASES = [
    ("run --max-concurrent 0", ["run", SPEC, "--max-concurrent", "0"], r"--max-concurrent: .*1\.\.100000, got 0"),
    ("run --max-concurrent -1", ["run", SPEC, "--max-concurrent", "-1"], r"--max-concurrent: .*got -1"),
    ("run --max-concurrent text", ["run", SPEC, "--max-concurrent", "many"], r"--max-concurrent: .*got 'many'"),
    ("run --max-concurrent 1e9", ["run", SPEC, "--max-concurrent", "1000000000"], r"--max-concurrent"),
    ("resume --max-concurrent 0", ["resume", FOLDER, "--max-concurrent", "0"], r"--max-concurrent: .*got 0"),
    ("run --tracking-uri bogus", ["run", SPEC, "--tracking-uri", "bogus://x"],
     r"--tracking-uri: unsupported tracking URI scheme 'bogus'"),
    ("run --tracking-uri sqlite without a path", ["run", SPEC, "--tracking-uri", "sqlite://x.db"],
     r"--tracking-uri: malformed sqlite tracking URI"),
    ("run --tracking-uri empty", ["run", SPEC, "--tracking-uri", ""], r"--tracking-uri: not a tracking URI"),
    ("run --tracking-uri ftp", ["run", SPEC, "--tracking-uri", "ftp://host/x"], r"--tracking-uri: unsupported"),
    ("resume --tracking-uri bogus", ["resume", FOLDER, "--tracking-uri", "bogus://x"], r"--tracking-uri: unsupported"),
    ("status --tracking-uri bogus", ["status", FOLDER, "--tracking-uri", "bogus://x"], r"--tracking-uri: unsupported"),
    ("ui --port -1", ["ui", FOLDER, "--port", "-1"], r"--port: port must be an integer in 1\.\.65535, got -1"),
    ("ui --port 0", ["ui", FOLDER, "--port", "0"], r"--port: .*got 0"),
    ("ui --port 70000", ["ui", FOLDER, "--port", "70000"], r"--port: .*got 70000"),
    ("ui --port 65536", ["ui", FOLDER, "--port", "65536"], r"--port: .*got 65536"),
    ("ui --port text", ["ui", FOLDER, "--port", "http"], r"--port: .*got 'http'"),
    ("run a missing spec", ["run", MISSING], r"no such spec file"),
    ("validate a missing spec", ["validate", MISSING], r"no such spec file"),
    ("validate a folder", ["validate", FOLDER], r"no such spec file"),
    ("resume a missing folder", ["resume", MISSING], r"not a study folder"),
    ("status a missing folder", ["status", MISSING], r"not a study folder"),
    ("ui a missing folder", ["ui", MISSING], r"not a study folder"),
    ("ui before the study ran", ["ui", FOLDER], r"no mlflow.db yet"),
    ("unknown command", ["rnu", SPEC], r"invalid choice: 'rnu'"),
    ("no command", [], r"required: COMMAND|the following arguments are required"),
    ("run without a spec", ["run"], r"the following arguments are required: spec"),
    ("unknown flag", ["run", SPEC, "--max-concurent", "2"], r"unrecognized arguments: --max-concurent"),
]


@pytest.mark.parametrize("description, argv, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_exits_2_with_one_message(no_study, capsys, description, argv, message):
    spec = _write(no_study, lambda: copy.deepcopy(BASE))
    folder = _study_folder(no_study)
    values = {SPEC: str(spec), FOLDER: str(folder), MISSING: str(no_study / "missing")}
    argv = [values.get(a, a) for a in argv]
    before = _files(no_study)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    _assert_one_error(capsys.readouterr().err, message)
    assert _files(no_study) == before


# --- what must still be accepted -----------------------------------------------------------------------------------
GOOD_SPECS = [
    ("the base grid", lambda: copy.deepcopy(BASE)),
    ("the base optuna search", lambda: copy.deepcopy(OPTUNA)),
    ("bundles beside a fixed section", at("factors", {"model.arch": ["mlp", "tinyten"],
                                                      "model": [{"symmetry": "standard"},
                                                                {"symmetry": "w_asym", "options": {"n_fix": 8}}]},
                                          {**BASE, "trial": {**TRIAL, "model": {"width": 0.25}}})),
    ("explicit n_fix below every fan-in", options(n_fix=8, kappa=0.5)),
    ("an endpoint-quality threshold", at("trial/eval/min_endpoint_acc", 0.9)),
    ("endpoint-quality flag off", at("trial/eval/min_endpoint_acc", 0)),
    ("limits themselves", at("trial", {**TRIAL, "train": {"epochs": 100_000, "batch_size": 2**20},
                                       "eval": {"points": 10_000}, "curve": {"bends": 64, "seed": 2**63 - 1}})),
    ("a robust metric with an attack", at("optuna", {**OPTUNA["optuna"], "metric": "robust/acc_min/linear/test"},
                                          {**OPTUNA, "trial": {**OPTUNA["trial"], "eval": {"points": 3, "attack": {
                                              "eps": 0.03}}}})),
    ("an alignment diagnostic as metric", opt("optuna/metric", "align/seconds")),
    ("choices the setting allows", space("align.method", {"type": "choice", "values": ["none", "weight"]})),
    ("YAML anchors and aliases", """name: aliases
trial:
  data: {name: digits}
  train: &recipe {epochs: 1, batch_size: 64, augment: false}
  curve: {kind: bezier, train: *recipe}
  eval: {points: 3}
  device: cpu
"""),
    ("a cuda device with an index", at("trial/device", "cuda:1")),
    ("a trial section of defaults only", at("trial", {})),
    ("synthetic data with options", at("trial/data", {"name": "synthetic", "options": {"in_shape": [1, 8, 8],
                                                                                       "n_train": 100}})),
]


@pytest.mark.parametrize("description, edit", GOOD_SPECS, ids=[c[0] for c in GOOD_SPECS])
def test_good_specs_still_validate(no_study, capsys, description, edit):
    path = _write(no_study, edit)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert ": ok" in capsys.readouterr().out


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_specs_validate(no_study, capsys, path):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["run", "s.yaml", "--max-concurrent", "1"], ["run", "s.yaml", "--tracking-uri", "sqlite:///x/mlflow.db"],
    ["run", "s.yaml", "--tracking-uri", "file:/tmp/mlruns"], ["run", "s.yaml", "--tracking-uri", "http://host:5000"],
    ["run", "s.yaml", "--tracking-uri", "postgresql+psycopg2://u@h/db"],
    ["run", "s.yaml", "--tracking-uri", "databricks"],
    ["status", "d", "--tracking-uri", "https://mlflow.example.org"], ["ui", "d", "--port", "65535"],
    ["ui", "d", "--port", "1"]])
def test_good_command_lines_parse(argv):
    build_parser().parse_args(argv)
