"""The execution profiles: the workflow profile Snakemake loads on every run holds nothing
machine-specific, and every way the README runs the workflow loads the content rerun triggers."""

from __future__ import annotations

from pathlib import Path

import yaml

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
TRIGGERS = ["params", "input", "software-env"]


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def test_the_auto_loaded_workflow_profile_cannot_cap_a_cluster():
    default = _profile("default")
    assert default["rerun-triggers"] == TRIGGERS
    # nothing about cores, GPUs, schedulers or failure policy: those differ per machine
    assert set(default) <= {"rerun-triggers", "rerun-incomplete"}


def test_every_profile_sets_the_content_rerun_triggers():
    for name in ("workstation", "slurm", "slurm-ci"):
        assert _profile(name)["rerun-triggers"] == TRIGGERS, name
    assert _profile("workstation")["resources"] == {"gpu": 1}
    assert "gpu" not in _profile("slurm").get("resources", {})


def test_the_documented_commands_use_the_profiles():
    root = PROFILES.parent
    assert "--profile profiles/workstation" in (root / "Makefile").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "--profile profiles/slurm-ci" in ci and "--workflow-profile none" not in ci
    assert (
        "--profile profiles/slurm`" in (root / "README.md").read_text()
        or "--profile profiles/slurm " in (root / "README.md").read_text()
    )
