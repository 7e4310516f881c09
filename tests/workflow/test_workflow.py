"""The workflow end to end: outputs, no-op re-runs, precise re-planning, resume, bad configs."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
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


def test_a2_labels_correctness_and_progress(finished_run: Workflow):
    import torch

    from attrflow.data.sample_store import read_samples
    from attrflow.models.cards import load_model

    results = finished_run.workdir / "results"
    scores = pd.read_parquet(results / "reports" / "scores.parquet")
    samples = read_samples(results / "data" / "tiny" / "samples.zarr")
    for model in TINY_CONFIG["run"]["models"]:
        net = load_model(results / "models" / model)
        with torch.no_grad():
            predicted = net(torch.from_numpy(samples.images)).argmax(1).numpy()
        truth = dict(zip(samples.ids, predicted == samples.labels))
        labels = dict(zip(samples.ids, samples.labels.tolist()))
        rows = scores[scores.model == model]
        assert rows.correct.tolist() == [bool(truth[i]) for i in rows.sample_id], model
        assert rows.label.tolist() == [labels[i] for i in rows.sample_id], model
    # progress per batch of samples, with a rate, in the job logs
    log = (finished_run.workdir / "logs" / "attribute" / "tiny" / "cnn" / "gradient" / "shard-0.log").read_text()
    assert "img/s" in log or "s/img" in log, log[-2000:]
    # stochastic metrics are scored twice (test-retest), deterministic ones once
    assert scores[scores.metric == "mufidelity"].value_retest.notna().any()
    assert scores[scores.metric == "deletion"].value_retest.isna().all()


def test_a3_the_python_api_gives_the_runs_table(finished_run: Workflow):
    """`attrflow.compare` on the plain networks, the same samples, entries, names and seed gives
    the rows the run wrote: every value, retest, target, status, reason and code fingerprint."""
    import numpy as np
    import torch

    import attrflow
    from attrflow.data.sample_store import read_samples
    from attrflow.models.cards import load_model

    results = finished_run.workdir / "results"
    config = TINY_CONFIG
    samples = read_samples(results / "data" / "tiny" / "samples.zarr")
    key = ["method", "metric", "sample_id"]
    # Not the fingerprints of the model (a weights file's hash in the run, the module's state in the
    # API) nor of the samples (the run's also cover what no score reads: concept labels, severity).
    same = ["target", "label", "correct", "status", "reason", "method_fn", "metric_fn", "method_fingerprint",
            "metric_fingerprint"]  # fmt: skip
    for model_name in config["run"]["models"]:
        loaded = load_model(results / "models" / model_name)
        net = loaded.net  # the plain network, as a notebook would hold it
        model = attrflow.wrap(
            net, mean=loaded.mean.flatten().tolist(), std=loaded.std.flatten().tolist(), x_dnn=loaded.is_x_dnn, name=model_name
        )  # the name is in the reasons of skipped rows
        torch.set_num_threads(1)
        table = attrflow.compare(
            model, samples.images, config["target"] if "target" in config else "predicted", labels=samples.labels,
            ids=samples.ids, masks=samples.masks, methods={m: config["methods"][m] for m in config["run"]["methods"]},
            metrics={m: config["metrics"][m] for m in config["run"]["metrics"]}, random_control=False,
            dataset="tiny", model_name=model_name, seed=config["seed"], shard_size=config["shard_size"],
            max_batch=config["max_batch"], draws=100,
        )  # fmt: skip
        ours = table.scores.sort_values(key).reset_index(drop=True)
        theirs = attrflow.open_results(results).scores(model=model_name).sort_values(key).reset_index(drop=True)
        assert ours[key].equals(theirs[key]), model_name
        def plain(frame: pd.DataFrame) -> pd.DataFrame:  # Arrow strings (NaN) vs DuckDB's objects (None)
            return frame[same].astype(object).where(frame[same].notna(), None)

        pd.testing.assert_frame_equal(plain(ours), plain(theirs), check_dtype=False)
        for column in ("value", "value_retest"):
            np.testing.assert_array_equal(ours[column].to_numpy(float), theirs[column].to_numpy(float))


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


def _edit(path, transform):
    original = path.read_text()
    path.write_text(transform(original))
    return original


def _add_statement(function: str):
    """A transform that adds a real statement at the top of ``function``'s body."""

    def change(text: str) -> str:
        head, tail = text.split(f"def {function}(", 1)
        signature, body = tail.split(":\n", 1)
        return f"{head}def {function}({signature}:\n    _marker = 1\n{body}"

    return change


def test_d_edited_method_module_replans_only_that_method(finished_run: Workflow):
    module = finished_run.root / "src" / "attrflow" / "methods" / "random_attribution.py"
    original = _edit(module, _add_statement("random_attribution"))  # a real statement in the method
    try:
        jobs = finished_run.planned()
    finally:
        module.write_text(original)
    assert {rule for rule, _ in jobs} == {"attribute", "score", "aggregate", "evidence", "report"}
    assert {wc["method"] for rule, wc in jobs if rule in ("attribute", "score")} == {"random"}
    proc = finished_run.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, "restoring the source restores the state"


SHARED_MODULES = ["catalog.py", "registry.py", "methods/base.py", "metrics/base.py", "config.py", "plan.py",
                  "methods/random_attribution.py", "jobs/attribute.py"]


def test_d2_docstrings_and_comments_replan_nothing(finished_run: Workflow):
    package = finished_run.root / "src" / "attrflow"
    originals = {}
    try:
        for name in SHARED_MODULES:
            originals[name] = _edit(
                package / name, lambda text: text.replace('"""', '"""Edited. ', 1) + "\n# a comment\n"
            )
        proc = finished_run.snakemake("-n")
    finally:
        for name, text in originals.items():
            (package / name).write_text(text)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_d3_a_real_change_to_a_shared_helper_replans_exactly_its_users(finished_run: Workflow):
    helper = finished_run.root / "src" / "attrflow" / "methods" / "_batching.py"
    original = _edit(helper, _add_statement("path_diagnostics"))  # used by path methods only
    try:
        jobs = finished_run.planned()
    finally:
        helper.write_text(original)
    assert {wc["method"] for rule, wc in jobs if rule in ("attribute", "score")} == {"ig"}
    assert sum(rule == "attribute" for rule, _ in jobs) == 2 * len(TINY_CONFIG["run"]["models"])


def test_d4_the_same_config_in_another_form_replans_nothing(finished_run: Workflow):
    import yaml

    def reverse(value):
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in sorted(value, reverse=True)}
        return value

    same = reverse(copy.deepcopy(TINY_CONFIG))
    same["methods"]["ig"]["rule"] = "right"  # a default, written out
    path = finished_run.workdir / "reordered.yaml"
    path.write_text(yaml.safe_dump(same, sort_keys=False, default_flow_style=True))  # flow style, too
    proc = finished_run.snakemake("-n", config=path)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_d5_a_new_metric_computes_only_itself(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    config = copy.deepcopy(TINY_CONFIG)
    config["run"]["methods"] = ["random", "gradient"]
    config["run"]["models"] = ["cnn"]
    wf.write_config(config)
    wf.snakemake()
    before = pd.read_parquet(wf.workdir / "results" / "reports" / "scores.parquet")
    config["metrics"]["faithfulness"] = {"fn": "faithfulness_correlation", "subsets": 4}
    config["run"]["metrics"].append("faithfulness")
    new = wf.write_config(config, "more.yaml")
    assert {rule for rule, _ in wf.planned(new)} == {"score", "aggregate", "evidence", "report"}
    wf.snakemake(config=new)
    logs = "".join(p.read_text() for p in (wf.workdir / "logs" / "score").rglob("*.log"))
    for metric in ("deletion", "insertion", "mufidelity"):
        assert f"{metric}: reused" in logs, metric
    after = pd.read_parquet(wf.workdir / "results" / "reports" / "scores.parquet")
    key = ["model", "method", "metric", "sample_id"]
    merged = before.merge(after, on=key, suffixes=("_before", "_after"))
    assert len(merged) == len(before)
    pd.testing.assert_series_equal(merged.value_before, merged.value_after, check_names=False)
    assert (after.metric == "faithfulness").sum() > 0


def test_damaged_store_stops_planning_and_is_never_moved(finished_run: Workflow):
    store = next((finished_run.workdir / "results" / "attributions").rglob("shard-0.zarr"))
    chunk = next(p for p in (store / "maps").rglob("*") if p.is_file() and p.name != "zarr.json")
    good = chunk.read_bytes()
    chunk.write_bytes(good[:-3])
    try:
        proc = finished_run.snakemake("-n", check=False)
        assert proc.returncode != 0
        assert str(store.relative_to(finished_run.workdir)) in proc.stdout + proc.stderr
        assert "attrflow.clean --damaged" in proc.stdout + proc.stderr
        assert store.exists() and not list(store.parent.glob("*.damaged-*")), "planning moved nothing"
    finally:
        chunk.write_bytes(good)
    assert verify_store(store) == []


def test_damaged_store_is_recomputed_after_clean(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    config = copy.deepcopy(TINY_CONFIG)
    config["run"].update(methods=["gradient"], models=["cnn"], metrics=["deletion"])
    wf.write_config(config)
    wf.snakemake()
    store = wf.workdir / "results" / "attributions" / "tiny" / "cnn" / "gradient" / "shard-0.zarr"
    chunk = next(p for p in (store / "maps").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-3])
    subprocess.run([sys.executable, "-m", "attrflow.clean", "--damaged"], cwd=wf.workdir, env=wf.env(), check=True)
    assert not store.exists()
    jobs = wf.planned()
    assert [(r, wc["shard"]) for r, wc in jobs if r == "attribute"] == [("attribute", "0")]
    wf.snakemake()
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


def test_h_a_config_that_comes_back_reuses_its_results(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    config = copy.deepcopy(TINY_CONFIG)
    config["run"].update(models=["cnn"], methods=["ig"], metrics=["deletion"])
    first = wf.write_config(config)
    wf.snakemake()
    maps = wf.workdir / "results" / "attributions" / "tiny" / "cnn" / "ig" / "shard-0.zarr"
    original = (maps / "maps" / "c" / "0" / "0" / "0").read_bytes() if (maps / "maps" / "c").exists() else None
    config["methods"]["ig"]["steps"] = 6
    wf.snakemake(config=wf.write_config(config, "other.yaml"))
    assert not any("reused" in p.read_text() for p in (wf.workdir / "logs" / "attribute").rglob("*.log"))
    wf.snakemake(config=first)  # back to the first config: Snakemake re-runs the jobs ...
    logs = [p.read_text() for p in (wf.workdir / "logs" / "attribute").rglob("*.log")]
    assert logs and all("reused the result computed earlier" in text for text in logs), "... which reuse"
    assert verify_store(maps) == []
    if original is not None:
        assert (maps / "maps" / "c" / "0" / "0" / "0").read_bytes() == original


def test_i_jobs_forked_by_the_fork_server_give_the_same_numbers(finished_run: Workflow, tmp_path, monkeypatch):
    """A local run's torch jobs are children of the warm fork server; jobs in fresh interpreters
    (ATTRFLOW_NO_FORKSERVER=1, as on a cluster) give every score and map bit for bit."""
    import numpy as np
    import zarr

    def forked_jobs(wf: Workflow) -> int:
        return sum("run by a child of the fork server" in p.read_text() for p in (wf.workdir / "logs").rglob("*.log"))

    assert forked_jobs(finished_run) > 0, "no job of the local run went through the fork server"
    monkeypatch.setenv("ATTRFLOW_NO_FORKSERVER", "1")
    fresh = Workflow(finished_run.root, tmp_path / "work")
    fresh.workdir.mkdir()
    fresh.write_config(TINY_CONFIG)
    fresh.snakemake()
    assert forked_jobs(fresh) == 0
    ours, theirs = finished_run.workdir / "results", fresh.workdir / "results"
    # Not compared: wall times (Snakemake's benchmark files, the cost table).
    tables = [
        p.relative_to(ours) for p in ours.rglob("*.parquet")
        if p.relative_to(ours).parts[0] != "benchmarks" and p.parts[-2:] != ("reports", "costs.parquet")
    ]  # fmt: skip
    assert any(p.parts[0] == "scores" for p in tables)
    for table in tables:
        pd.testing.assert_frame_equal(pd.read_parquet(ours / table), pd.read_parquet(theirs / table), obj=str(table))

    def arrays(group, prefix=""):
        for name, array in group.arrays():
            yield prefix + name, array[:]
        for name, sub in group.groups():
            yield from arrays(sub, f"{prefix}{name}/")

    stores = [p.relative_to(ours) for p in ours.rglob("*.zarr") if ".cache" not in p.parts]
    assert any(p.parts[0] == "attributions" for p in stores)
    for store in stores:
        mine = dict(arrays(zarr.open_group(str(ours / store), mode="r")))
        other = dict(arrays(zarr.open_group(str(theirs / store), mode="r")))
        assert mine.keys() == other.keys(), store
        for name, values in mine.items():
            np.testing.assert_array_equal(values, other[name], err_msg=f"{store}/{name}")
