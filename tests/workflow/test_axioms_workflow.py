"""The axiom rules end to end on a tiny config: synthesis, maps, scores, report tables, no-op re-run."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from attrflow.store import verify_store

from harness import TINY_CONFIG, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

SCENARIOS = ["null_feature", "class_sensitivity_single", "class_sensitivity_double", "saturation"]


def axiom_config() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["run"].update(models=["cnn"], methods=["gradient", "random"], metrics=["deletion"], axioms=SCENARIOS,
                         axiom_methods=["gradient"])
    small = {"samples": 1, "max_candidates": 2, "batch": 2, "iterations": 6, "warmup": 2, "check_after": 1,
             "patch_size": 8, "prior_width": 4}
    config["axioms"] = {name: dict(small) for name in SCENARIOS}
    return config


def test_axiom_rules_write_inputs_maps_scores_and_tables(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    wf.write_config(axiom_config())
    wf.snakemake()
    results = wf.workdir / "results"
    base = results / "axioms" / "cnn"
    for scenario in SCENARIOS:
        assert verify_store(base / scenario / "inputs.zarr") == []
    assert verify_store(base / "maps" / "gradient.zarr") == [] and (base / "scores.parquet").is_file()
    scores = pd.read_parquet(results / "reports" / "scores.parquet")
    axioms = scores[scores.dataset.str.startswith("axioms/")]
    assert set(axioms.metric) == set(SCENARIOS) and set(axioms.method) == {"gradient"}
    # a candidate that was not accepted is a skipped row, never a value
    assert axioms.loc[axioms.status == "skipped", "value"].isna().all()
    summary = (results / "reports" / "summary.md").read_text()
    assert "Axiom scores, generated inputs (Khakzar et al., 2022, Table 1) — cnn" in summary
    # every started candidate's outcome is stated: accepted, failed, unfinished
    assert "## Axiom inputs synthesised — cnn" in summary and "| started | accepted | failed | unfinished |" in summary
    assert "— axioms/" not in summary  # axiom rows only in the axiom tables, not in the per-metric ones
    assert "<h2>Axiom scenarios</h2>" in (results / "reports" / "report.html").read_text()
    proc = wf.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_configs_without_axioms_plan_no_axiom_job(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    wf.write_config(TINY_CONFIG)
    assert not any(rule.endswith("axioms") for rule, _ in wf.planned())
