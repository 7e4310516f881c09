"""A non-editable install validates and plans: the schema and everything planning reads ship
inside the package (no path into a checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def test_pip_install_validates_and_plans_from_another_directory(tmp_path):
    # Build from a copy, so the checkout gets no build/ or egg-info directory.
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / part, source / part)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    assert (target / "attrflow" / "schemas" / "config.schema.yaml").is_file()
    assert (target / "attrflow" / "schemas" / "catalog.json").is_file()  # what planning reads
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    shutil.copy2(REPO / "config" / "test.yaml", elsewhere / "config.yaml")
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import attrflow, attrflow.config as c; print(attrflow.__file__); "
         "c.load_config('config.yaml'); print('valid')"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True,
    ).stdout
    assert where.startswith(str(target)) and "valid" in where
    snakemake = Path(sys.executable).parent / "snakemake"
    plan = subprocess.run(
        [str(snakemake), "-s", str(REPO / "Snakefile"), "-d", str(elsewhere), "--configfile", "config.yaml",
         "-n", "--quiet", "rules"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "attribute" in plan.stdout + plan.stderr
    assert not (elsewhere / "results").exists(), "planning writes no results"
