"""cluster.yaml is checked offline with the same code `ray up` runs before it touches AWS.

`ray up` calls `ray.autoscaler._private.util.prepare_config` (merge with the provider's defaults.yaml, fold
`setup_commands` into the head/worker lists, fill per-type worker limits) and then `validate_config`
(Ray's JSON schema `ray/autoscaler/ray-schema.json` plus cross-field checks). Only after that does it
call the provider's `bootstrap_config`, which needs boto3 and AWS; that step is deliberately not run here.
Both functions are private Ray API: if a Ray upgrade moves them, this test says so loudly.
"""
from __future__ import annotations

import copy
import re
import socket
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
TEXT = CLUSTER_YAML.read_text()
RAW = yaml.safe_load(TEXT)
README = (ROOT / "README.md").read_text()
RAY_PIN = re.compile(r'"ray\[default\]==([^"\s]+)"')


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("validating cluster.yaml must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def validated(raw: dict) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def config() -> dict:
    return validated(RAW)


def _active_lines() -> list[str]:
    """The file's lines without comments (what Ray actually reads)."""
    return [line.split(" #", 1)[0] for line in TEXT.splitlines() if not line.lstrip().startswith("#")]


def test_passes_rays_own_validation_offline(config):
    # Our node types replace the defaults' (m5.large head/workers) instead of being merged with them.
    assert set(config["available_node_types"]) == set(RAW["available_node_types"])
    assert config["head_node_type"] in RAW["available_node_types"]
    assert "boto3" not in sys.modules, "validation must not need boto3 / the AWS bootstrap step"


def test_head_runs_no_trials_and_workers_autoscale(config):
    """The README's layout: trials never land on the head (it has no CPU or GPU to offer), and the GPU worker
    type scales from zero up to the cluster's limit and back down when idle."""
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU", 0) == 0 and head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers
    for worker in workers.values():
        assert worker["resources"].get("GPU", 0) >= 1 and worker["resources"].get("CPU", 0) >= 1
        assert worker["min_workers"] == 0 and 1 <= worker["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_dashboard_binds_loopback(config):
    head_start = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert head_start and all("--dashboard-host=127.0.0.1" in c for c in head_start)
    assert "0.0.0.0" not in "\n".join(_active_lines())


def _ray_pins(commands: list[str]) -> set[str]:
    return {version for c in commands if not c.lstrip().startswith("#") for version in RAY_PIN.findall(c)}


def test_setup_installs_the_project_from_its_file_mount(config):
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        installs = [m for c in commands for m in re.findall(r"pip install .*-e (\S+)", c)]
        assert installs, commands
        # what pip installs on a node is the copy of this working tree that file_mounts puts there
        assert all(config["file_mounts"].get(path) == "." for path in installs), (installs, config["file_mounts"])
    # Our head_setup_commands replace the defaults', which installed boto3 for the AWS autoscaler.
    assert any("boto3" in c for c in config["head_setup_commands"])


def test_nodes_install_the_ray_the_readme_tells_the_launcher_machine_to_install(config):
    """The launcher and the cluster must run the same Ray (the dashboard/autoscaler need ray[default]): every
    node pins one version, the README's launcher instruction names the same one, and the project's own Ray
    requirement (pip install -e on the nodes) accepts it, so pip does not replace it."""
    head, worker = _ray_pins(config["head_setup_commands"]), _ray_pins(config["worker_setup_commands"])
    assert len(head) == 1 and head == worker, (head, worker)
    readme = set(re.findall(r'pip install\s+"ray\[default\]==([^"\s]+)"', README))
    assert readme == head, f"README says ray[default]=={readme}, cluster.yaml installs {head}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    ray_requirements = [Requirement(r) for r in re.findall(r'"(ray\[[^"]*)"', pyproject)]
    assert ray_requirements and all(r.specifier.contains(next(iter(head))) for r in ray_requirements), (
        ray_requirements, head)


def test_rsync_excludes_local_state(config):
    assert {".git", ".venv", "studies", "mlruns", "*.db"} <= set(config["rsync_exclude"])


def test_study_folders_live_on_shared_storage(config):
    commands = config["initialization_commands"] + config["setup_commands"]
    mounts = [c for c in commands if "mount -t nfs" in c]
    assert mounts and all("/mnt/studies" in c for c in mounts)
    assert "fs-REPLACE_ME" in mounts[0], "the EFS id must stay an obvious placeholder in the repo"


def test_no_secrets_in_the_file():
    assert not re.search(r"AKIA[0-9A-Z]{16}", TEXT)
    assert not re.search(r"aws_secret|secret_access_key|session_token", TEXT, re.IGNORECASE)
    assert "PRIVATE KEY" not in TEXT
    assert not re.search(r"\b[0-9a-fA-F]{32,}\b", TEXT), "looks like a literal token (Ray's are 64 hex chars)"
    assert not re.search(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/])", TEXT), "looks like an AWS key"
    # The token may only be referenced (a file path or an env var), never given as a value.
    for value in re.findall(r"RAY_AUTH_TOKEN\s*[=:]\s*(\S+)", TEXT):
        assert value.startswith("$"), value
    assert "ssh_private_key" not in yaml.safe_dump(RAW["auth"])


def _set(path: tuple, value):
    def mutate(raw: dict) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


BROKEN = {
    "unknown top-level key": (_set(("max_worker",), 4), jsonschema.ValidationError, "'max_worker' was unexpected"),
    "max_workers not an integer": (_set(("max_workers",), "four"), jsonschema.ValidationError,
                                   "'four' is not of type 'integer'"),
    "unknown key in a node type": (_set(("available_node_types", "gpu_worker", "gpus"), 1),
                                   jsonschema.ValidationError, "'gpus' was unexpected"),
    "negative resource": (_set(("available_node_types", "head", "resources"), {"CPU": -1}),
                          jsonschema.ValidationError, "less than the minimum of 0"),
    "head type that does not exist": (_set(("head_node_type",), "ray.head.default"), ValueError,
                                      "head_node_type` must be one of"),
    "min_workers above max_workers": (_set(("available_node_types", "gpu_worker", "min_workers"), 5), ValueError,
                                      "smaller than the sum of `min_workers`"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_copies_fail_the_same_validation(name):
    mutate, error, message = BROKEN[name]
    raw = copy.deepcopy(RAW)
    mutate(raw)
    with pytest.raises(error, match=re.escape(message)):
        validated(raw)


def test_token_auth_lines_validate_once_uncommented():
    """The commented token-auth lines are what the README tells Ray >= 2.61 users to uncomment."""
    lines = {
        '  # "~/.ray/auth_token": "~/.ray/auth_token"': '  "~/.ray/auth_token": "~/.ray/auth_token"',
        "  # - grep -q RAY_AUTH_MODE": "  - grep -q RAY_AUTH_MODE",
    }
    text = TEXT
    for commented, active in lines.items():
        assert text.count(commented) == 1, commented
        text = text.replace(commented, active)
    config = validated(yaml.safe_load(text))
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        assert any("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in c
                   for c in commands)
