"""Fixtures for the workflow tests (the machinery is in harness.py)."""

from __future__ import annotations

import pytest
from harness import TINY_CONFIG, Workflow, copy_workflow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Workflow:
    """One complete run of the tiny config, shared by the tests that only read or dry-run."""
    base = tmp_path_factory.mktemp("wf")
    wf = Workflow(copy_workflow(base / "repo"), base / "work")
    wf.workdir.mkdir()
    wf.write_config(TINY_CONFIG)
    wf.snakemake()
    return wf
