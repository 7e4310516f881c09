"""The workflow end to end: outputs, no-op re-runs, precise re-planning, resume, bad configs."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from attrflow.store import verify_store

from harness import TINY_CONFIG, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def expected_score_rows(config: dict) -> int:
    """One row per (model, method, metric, sample); entries with `samples:` cover a prefix only."""
    n = config["datasets"]["tiny"]["n_test"]
    run = config["run"]

    def scored(method: str, metric: str) -> int:
        if method not in config["metrics"][metric].get("methods", [method]):
            return 0
        limits = [config["methods"][method].get("samples"), config["metrics"][metric].get("samples")]
        return min([n, *(k for k in limits if k)])

    return len(run["models"]) * sum(scored(me, mt) for me in run["methods"] for mt in run["metrics"])


def test_a_outputs_and_one_row_per_sample_method_metric(finished_run: Workflow):
    reports = finished_run.workdir / "results" / "reports"
    for name in ("scores.parquet", "summary.parquet", "summary.md", "comparisons.parquet", "ranks.parquet",
                 "metric_quality.parquet", "metric_agreement.parquet", "report.html"):  # fmt: skip
        assert (reports / name).is_file(), name
    scores = pd.read_parquet(reports / "scores.parquet")
    run = TINY_CONFIG["run"]
    assert len(scores) == expected_score_rows(TINY_CONFIG)
    ig_deletion = scores[(scores.method == "ig") & (scores.metric == "deletion") & (scores.model == "cnn")]
    assert sorted(ig_deletion.sample_id) == sorted(scores.sample_id.unique())[:10]
    assert (scores[scores.metric == "mufidelity"].groupby(["model", "method"]).size() == 8).all()
    keys = ["dataset", "model", "sample_id", "method", "metric"]
    assert not scores.duplicated(keys).any()
    # X-Gradient on the network with biases is reported as skipped, never as numbers
    xg_cnn = scores[(scores.method == "xg") & (scores.model == "cnn")]
    assert (xg_cnn.status == "skipped").all() and xg_cnn.reason.str.contains("X-DNN").all()
    # completeness scores only the methods its entry names, and is skipped where they claim nothing
    comp = scores[scores.metric == "completeness"]
    assert set(comp.method) == {"ig", "xg"}
    assert (comp[(comp.method == "ig")].status == "ok").all()
    assert (comp[(comp.method == "xg") & (comp.model == "cnn")].status == "skipped").all()
    summary = pd.read_parquet(reports / "summary.parquet")
    assert len(summary) == len(run["models"]) * (len(run["methods"]) * len(run["metrics"]) - 2)
    text = (reports / "summary.md").read_text()
    assert "## deletion ↓" in text and "| ig |" in text
    for store in (finished_run.workdir / "results" / "attributions").rglob("shard-*.zarr"):
        assert verify_store(store) == []


def test_b_second_run_has_nothing_to_do(finished_run: Workflow):
    proc = finished_run.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_c_changed_method_parameter_replans_only_that_method(finished_run: Workflow):
    changed = copy.deepcopy(TINY_CONFIG)
    changed["methods"]["ig"]["steps"] = 6
    jobs = finished_run.planned(finished_run.write_config(changed, "changed.yaml"))
    rules = {rule for rule, _ in jobs}
    assert rules == {"attribute", "score", "aggregate", "evidence", "report"}
    for rule, wc in jobs:
        if rule in ("attribute", "score"):
            assert wc["method"] == "ig", (rule, wc)
    n_shards = 2
    assert sum(rule == "attribute" for rule, _ in jobs) == n_shards * len(TINY_CONFIG["run"]["models"])


def test_c2_changed_metric_parameter_replans_no_attribution(finished_run: Workflow):
    changed = copy.deepcopy(TINY_CONFIG)
    changed["metrics"]["deletion"]["steps"] = 5
    rules = {rule for rule, _ in finished_run.planned(finished_run.write_config(changed, "metric.yaml"))}
    assert rules == {"score", "aggregate", "evidence", "report"}


def test_d_edited_method_module_replans_only_that_method(finished_run: Workflow):
    module = finished_run.root / "src" / "attrflow" / "methods" / "random_attribution.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        jobs = finished_run.planned()
    finally:
        module.write_text(original)
    assert {rule for rule, _ in jobs} == {"attribute", "score", "aggregate", "evidence", "report"}
    assert {wc["method"] for rule, wc in jobs if rule in ("attribute", "score")} == {"random"}
    proc = finished_run.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, "restoring the source restores the state"


def test_damaged_store_is_recomputed(finished_run: Workflow):
    store = next((finished_run.workdir / "results" / "attributions").rglob("shard-0.zarr"))
    chunk = next(p for p in (store / "maps").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-3])
    jobs = finished_run.planned()
    attribute_jobs = [wc for rule, wc in jobs if rule == "attribute"]
    assert len(attribute_jobs) == 1 and attribute_jobs[0]["shard"] == "0"
    assert list(store.parent.glob("shard-0.zarr.damaged-*")), "the damaged copy is kept aside"
    finished_run.snakemake()
    assert verify_store(store) == []


def test_e_killed_run_resumes_and_never_trusts_half_written_stores(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    config = copy.deepcopy(TINY_CONFIG)
    config["methods"]["ig"]["steps"] = 64  # slow enough to be caught mid-attribution
    wf.write_config(config)
    proc = subprocess.Popen(wf.command(), env=wf.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    logs = wf.workdir / "logs" / "attribute"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not (logs.exists() and any(logs.rglob("*.log"))):
            time.sleep(0.2)
        assert logs.exists(), "attribution never started"
        time.sleep(1.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for store in (wf.workdir / "results").rglob("*.zarr"):
        if ".tmp-" not in store.name:
            assert verify_store(store) == [], f"{store} looks complete but is not"
    wf.snakemake("--unlock")
    wf.snakemake()
    scores = pd.read_parquet(wf.workdir / "results" / "reports" / "scores.parquet")
    assert len(scores) == expected_score_rows(TINY_CONFIG)
    for store in (wf.workdir / "results" / "attributions").rglob("shard-*.zarr"):
        assert verify_store(store) == []


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda c: c["run"]["methods"].append("no_such_method"), "run.methods[4]"),
        (lambda c: c["methods"]["ig"].update(steps=-1), "methods.ig.steps"),
        (lambda c: c["datasets"].update(tiny={"kind": "image_folder", "root": "/no/such/folder"}), "datasets.tiny.root"),
    ],
)
def test_f_bad_config_fails_before_any_job(tmp_path, mutate, key):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    bad = copy.deepcopy(TINY_CONFIG)
    mutate(bad)
    proc = wf.snakemake(config=wf.write_config(bad), check=False)
    assert proc.returncode != 0
    assert f"'{key}'" in proc.stdout + proc.stderr
    assert not (wf.workdir / "results").exists(), "no job ran"


def test_g_more_samples_add_shards_and_keep_finished_ones(finished_run: Workflow):
    grown = copy.deepcopy(TINY_CONFIG)
    grown["datasets"]["tiny"]["n_test"] = 20  # shard 0 is full; shard 1 grows; shard 2 is new
    jobs = finished_run.planned(finished_run.write_config(grown, "grown.yaml"))
    rules = {rule for rule, _ in jobs}
    assert "prepare_model" not in rules, "evaluation samples must not retrain the models"
    shards = {wc["shard"] for rule, wc in jobs if rule == "attribute"}
    assert shards == {"1", "2"}
