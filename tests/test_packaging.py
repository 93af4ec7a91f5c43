"""One set of version constraints: pyproject.toml's, repeated by environment.yml and honoured
by .ci/setup's torch pin."""
from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT

CONDA_NAMES = {"torch": "pytorch"}


def split(requirement: str) -> tuple[str, str]:
    name, constraint = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", requirement.strip()).groups()
    return name.lower(), constraint.replace(" ", "")


def test_environment_yml_repeats_pyproject_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(split(r) for r in project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted.update(split(r) for r in extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = dict(split(d.split("#")[0]) for d in env if isinstance(d, str))
    pip = dict(split(d) for item in env if isinstance(item, dict) for d in item["pip"])
    for name, constraint in wanted.items():
        listed = conda.get(CONDA_NAMES.get(name, name), pip.get(name))
        assert listed == constraint, f"{name}: pyproject {constraint!r}, environment.yml {listed!r}"


def test_ci_setup_pins_a_torch_that_pyproject_admits():
    setup = (ROOT / ".ci" / "setup").read_text()
    pinned = re.search(r"torch==(\d+)\.(\d+)\.(\d+)", setup).groups()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = next(split(r)[1] for r in project["dependencies"] if split(r)[0] == "torch")
    low = tuple(int(v) for v in floor.removeprefix(">=").split("."))
    assert tuple(int(v) for v in pinned[:len(low)]) >= low
    assert '-e ".[test]"' in setup  # the rest comes from pyproject.toml
