"""The Python API (`attrflow.explain`, `score`, `compare`, `open_results`) against the workflow.

A torchvision ResNet-18 (random weights, 4 classes, 32×32 inputs) is prepared as the workflow
prepares a model (`save_model`, a card), its maps and scores are computed by the workflow's own
jobs (`attribute_shard`, `score_shard`) into a `results/` folder, and the API, given a *plain*
copy of the network (a fresh torchvision module, never wrapped by the workflow), must give the
same maps and the same score rows for the same samples and seed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import attrflow
from attrflow.config import ConfigError, ParameterError, check_entry, validate_config
from attrflow.data.sample_store import SampleSet, write_sample_store
from attrflow.jobs.attribute import attribute_shard
from attrflow.jobs.runtime import derive_seed
from attrflow.jobs.score import score_shard
from attrflow.plan import method_code_fingerprint, metric_code_fingerprint

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")  # many small passes: threads cost more than they save

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASET, MODEL, N, CLASSES = "shapes", "shapes_cnn", 6, 4
# Workflow-style catalogues (defaults are filled in by the config's own check below).
METHODS = {
    "random": {"fn": "random_attribution"},
    "gradient": {"fn": "gradient"},
    "ig": {"fn": "integrated_gradients", "steps": 4},
    "smooth": {"fn": "smoothgrad", "n": 2, "keep_channels": True},
}
METRICS = {
    "deletion": {"fn": "deletion", "steps": 4},
    "mufidelity": {"fn": "mufidelity", "subsets": 8, "grid": 4},  # stochastic: scored twice (retest)
    "completeness": {"fn": "completeness", "methods": ["ig"]},  # diagnostic: reads what IG stored
    # explainer: re-runs the method after each of ResNet-18's 41 layers is randomised (2 samples)
    "sanity": {"fn": "randomization_sanity", "samples": 2, "retest": False, "methods": ["gradient", "smooth"]},
}
COMPARED = ["dataset", "model", "method", "metric", "sample_id", "target", "label", "correct", "value",
            "value_retest", "status", "reason", "direction", "method_fn", "metric_fn", "method_fingerprint",
            "metric_fingerprint", "dataset_fingerprint"]  # fmt: skip


def _filled(family: str, entries: dict) -> dict:
    return {name: check_entry(family, name, dict(e)) for name, e in entries.items()}


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=CLASSES)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, one_thread):
    """A results/ folder made by the workflow's jobs, and the inputs they read."""
    from attrflow.models.cards import save_model
    from attrflow.models.wrapper import WrappedModel

    root = tmp_path_factory.mktemp("api") / "results"
    net = _network().eval()
    card = {
        "name": MODEL, "kind": "torchvision", "num_classes": CLASSES, "mean": list(MEAN), "std": list(STD),
        "cam_layer": "layer4", "is_x_dnn": False,
        "architecture": {"library": "torchvision", "name": "resnet18", "kwargs": {"num_classes": CLASSES}, "x_dnn": False},
    }  # fmt: skip
    wrapped = WrappedModel(net, num_classes=CLASSES, mean=MEAN, std=STD, cam_layer="layer4", name=MODEL)
    save_model(wrapped, card, root / "models" / MODEL)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(N, 3, 32, 32, generator=generator).numpy()
    labels = np.arange(N) % CLASSES
    ids = [f"img-{i}" for i in range(N)]
    samples = write_sample_store(root / "data" / DATASET / "samples.zarr", SampleSet(images, labels, ids), None, {"fingerprint": "t"})
    methods, metrics = _filled("methods", METHODS), _filled("metrics", METRICS)
    metrics_code = {name: metric_code_fingerprint(e["fn"]) for name, e in metrics.items()}
    runtime = {"device": "cpu", "seed": 0, "max_batch": 64, "target": "predicted"}
    for method, entry in methods.items():
        maps_path = root / "attributions" / DATASET / MODEL / method / "shard-0.zarr"
        attribute_shard(
            samples_path=samples, model_dir=root / "models" / MODEL, out_path=maps_path, dataset=DATASET,
            model_name=MODEL, shard=0, method=method, entry=entry, code=method_code_fingerprint(entry),
            sample_range=[0, N], **runtime,
        )  # fmt: skip
        chosen = {  # what the plan gives a score job: the metrics that score this method, less their list
            m: {k: v for k, v in e.items() if k != "methods"} for m, e in metrics.items() if method in e.get("methods", [method])
        }
        score_shard(
            samples_path=samples, model_dir=root / "models" / MODEL, maps_path=maps_path,
            out_path=root / "scores" / f"dataset={DATASET}" / f"model={MODEL}" / f"method={method}" / "shard-0.parquet",
            dataset=DATASET, model=MODEL, method=method, method_entry=entry, method_code=method_code_fingerprint(entry),
            metrics=chosen, metrics_code={m: metrics_code[m] for m in chosen}, sample_range=[0, N], **runtime,
        )  # fmt: skip
    return {"root": root, "images": torch.from_numpy(images), "labels": torch.from_numpy(labels), "ids": ids,
            "methods": methods, "metrics": metrics}  # fmt: skip


@pytest.fixture()
def plain():
    """A plain torchvision module (train mode, as torchvision builds it) with the same weights."""
    net = torchvision.models.resnet18(num_classes=CLASSES)
    net.load_state_dict(_network().state_dict())
    return attrflow.wrap(net, mean=MEAN, std=STD)


def _stored(workflow, method: str):
    from attrflow.store import open_store

    return open_store(workflow["root"] / "attributions" / DATASET / MODEL / method / "shard-0.zarr")


def _scores(workflow) -> pd.DataFrame:
    files = sorted((workflow["root"] / "scores").rglob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


# ----------------------------------------------------------------------------- equal to the workflow


@pytest.mark.parametrize("method", list(METHODS))
def test_explain_on_a_plain_module_equals_the_workflow_maps(workflow, plain, method):
    entry = workflow["methods"][method]
    params = {k: v for k, v in entry.items() if k not in ("fn", "keep_channels")}
    e = attrflow.explain(
        plain, workflow["images"], "predicted", entry["fn"], seed=derive_seed(0, DATASET, MODEL, method, 0),
        keep_channels=entry.get("keep_channels", False), **params,
    )  # fmt: skip
    stored = _stored(workflow, method)
    np.testing.assert_array_equal(e.targets.numpy(), stored["targets"][:])
    np.testing.assert_allclose(e.numpy(), stored["maps"][:], rtol=1e-5, atol=1e-6)
    assert e.params == dict(stored.attrs)["params"]  # the complete setting, defaults filled in
    for key in stored["diagnostics"].array_keys() if "diagnostics" in stored else []:
        if key != "nonfinite":
            np.testing.assert_allclose(e.diagnostics[key].numpy(), stored["diagnostics"][key][:], rtol=1e-5, atol=1e-6)


def test_compare_gives_the_workflow_rows_and_the_report_statistics(workflow, plain):
    table = attrflow.compare(
        plain, workflow["images"], "predicted", labels=workflow["labels"], ids=workflow["ids"],
        methods=METHODS, metrics=METRICS,
        dataset=DATASET, model_name=MODEL, seed=0, max_batch=64, draws=200,
    )  # fmt: skip
    key = ["method", "metric", "sample_id"]
    ours = table.scores.sort_values(key).reset_index(drop=True)
    theirs = _scores(workflow).sort_values(key).reset_index(drop=True)
    assert len(ours) == len(theirs) == len(METHODS) * 2 * N + N + 2 * 2
    pd.testing.assert_frame_equal(ours[COMPARED], theirs[COMPARED], check_exact=False, rtol=1e-5, atol=1e-6)
    assert (ours["status"] == "ok").any() and ours["value_retest"].notna().any()  # mufidelity retested
    # the report's statistics, over the same rows
    assert set(table.ranks["method"]) == set(METHODS) and set(table.summary["metric"]) == set(METRICS)
    quality = table.metric_quality.set_index("metric")
    assert (quality.loc[["deletion", "mufidelity"], "random_method"] == "random").all()
    assert quality.loc["completeness", "separation_note"].startswith("no random control")  # IG only
    pairs = table.comparisons[table.comparisons["metric"] == "deletion"]
    assert len(pairs) == 6 and pairs["p_holm"].notna().any()  # 4 methods: 6 paired comparisons


def test_score_of_a_map_metric_equals_the_workflow(workflow, plain):
    stored = _stored(workflow, "gradient")
    entry = workflow["metrics"]["deletion"]
    out = attrflow.score(
        plain, workflow["images"], stored["maps"][:], "deletion", target=stored["targets"][:],
        labels=workflow["labels"], seed=derive_seed(0, DATASET, MODEL, "gradient", "deletion"),
        **{k: v for k, v in entry.items() if k != "fn"},
    )  # fmt: skip
    rows = _scores(workflow)
    expected = rows[(rows["method"] == "gradient") & (rows["metric"] == "deletion")].sort_values("sample_id")
    np.testing.assert_allclose(out.values, expected["value"].to_numpy(), rtol=1e-6)


def test_explainer_metric_through_score_takes_a_method_name_or_an_explanation(plain, workflow):
    x = workflow["images"][:2]
    e = attrflow.explain(plain, x, "predicted", "smoothgrad", n=2, seed=5)
    from_explanation = attrflow.score(plain, x, e, "randomization_sanity", seed=5)
    by_name = attrflow.score(
        plain, x, e.maps, "randomization_sanity", target=e.targets, method="smoothgrad", method_params={"n": 2}, seed=5,
    )  # fmt: skip
    assert from_explanation.status == ["ok"] * 2
    np.testing.assert_allclose(from_explanation.values, by_name.values, rtol=1e-6)
    with pytest.raises(ValueError, match="explainer metric: it re-runs the method"):
        attrflow.score(plain, x, e.maps, "randomization_sanity", target=e.targets)
    with pytest.raises(ParameterError, match=r"smoothgrad\.n"):
        attrflow.score(plain, x, e.maps, "randomization_sanity", target=e.targets, method="smoothgrad",
                       method_params={"n": 0})  # fmt: skip
    ig = attrflow.explain(plain, x, "predicted", "integrated_gradients", steps=4)
    diagnostic = attrflow.score(plain, x, ig, "completeness")  # reads the Explanation's diagnostics
    assert diagnostic.status == ["ok"] * 2 and np.isfinite(diagnostic.values).all()
    bare = attrflow.score(plain, x, ig.maps, "completeness", target=ig.targets)  # maps of no known method
    assert bare.status == ["skipped"] * 2 and "does not claim completeness" in bare.reasons[0]


# ----------------------------------------------------------------------------- parameters and inputs


def _config_error(family: str, entry: dict) -> ConfigError:
    import yaml

    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config[family]["probe"] = entry
    with pytest.raises(ConfigError) as caught:
        validate_config(config, workdir=REPO)
    return caught.value


@pytest.mark.parametrize(
    ("family", "entry"),
    [
        ("methods", {"fn": "integrated_gradients", "steps": 0}),
        ("methods", {"fn": "integrated_gradients", "stepz": 8}),
        ("methods", {"fn": "integrated_gradients", "baseline": "grey"}),
        ("methods", {"fn": "integrated_gradient"}),
        ("metrics", {"fn": "deletion", "fill": "purple"}),
    ],
)
def test_a_wrong_parameter_gets_the_config_message(plain, family, entry):
    expected = _config_error(family, entry)
    x = torch.rand(2, 3, 32, 32)
    params = {k: v for k, v in entry.items() if k != "fn"}
    with pytest.raises(ParameterError) as caught:
        if family == "methods":
            attrflow.explain(plain, x, 0, entry["fn"], **params)
        else:
            attrflow.score(plain, x, torch.rand(2, 32, 32), entry["fn"], target=0, **params)
    assert caught.value.detail == expected.detail
    # the same place: the config's 'methods.probe[.key]' is the API's '<fn>[.key]'
    assert expected.key_path.split(".")[2:] == caught.value.key_path.split(".")[1:]
    assert caught.value.key_path.split(".")[0] == entry["fn"]


@pytest.mark.parametrize(
    ("images", "cause"),
    [
        (lambda x: (x * 255).to(torch.uint8), r"torch\.uint8, not floating point: integer pixels \(0–255"),
        (lambda x: (x * 255).round(), r"above 1: pixels on a 0–255 scale \(divide by 255\)"),
        (lambda x: (x - 0.45) / 0.225, r"below 0: it looks already normalised"),
        (lambda x: x.masked_fill(x > 0.99, float("nan")), "non-finite"),
    ],
)
def test_normalised_uint8_and_nonfinite_inputs_are_refused_with_their_cause(plain, images, cause):
    x = images(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    for call in (
        lambda: attrflow.explain(plain, x, 0, "gradient"),
        lambda: attrflow.score(plain, x, torch.rand(2, 32, 32), "deletion", target=0),
        lambda: attrflow.compare(plain, x, 0, methods=["gradient"], metrics=["deletion"]),
    ):
        with pytest.raises(ValueError, match=cause):
            call()


def test_wrap_reads_a_timm_models_normalisation_and_refuses_to_guess_torchvisions():
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    wrapped = attrflow.wrap(net)
    assert wrapped.mean.flatten().tolist() == pytest.approx(list(net.pretrained_cfg["mean"]))
    assert wrapped.std.flatten().tolist() == pytest.approx(list(net.pretrained_cfg["std"]))
    assert wrapped.num_classes == 3 and wrapped.cam_layer == "layer4"
    e = attrflow.explain(net, torch.rand(2, 3, 32, 32), [0, 2], "gradcam")  # a plain timm module, unwrapped
    assert e.maps.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="torchvision model: say which normalisation"):
        attrflow.explain(torchvision.models.resnet18(num_classes=3), torch.rand(1, 3, 32, 32), 0, "gradient")


def test_a_module_remembers_its_normalisation_and_its_device():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    net(torch.rand(1, 3, 4, 4))
    wrapped = attrflow.wrap(net, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    e = attrflow.explain(net, torch.rand(2, 3, 4, 4), 1, "gradient")  # the plain module again
    assert e.explainer.model is wrapped and wrapped.std.flatten().tolist() == pytest.approx([0.2] * 3)
    assert "_attrflow_wrapped" not in dict(net.named_modules()) and not any("wrapped" in k for k in net.state_dict())


def test_explain_is_deterministic_in_its_seed(plain):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    first = attrflow.explain(plain, x, 1, "smoothgrad", n=2, seed=7).maps
    again = attrflow.explain(plain, x, 1, "smoothgrad", n=2, seed=7).maps
    other = attrflow.explain(plain, x, 1, "smoothgrad", n=2, seed=8).maps
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


# ----------------------------------------------------------------------------- results and README


def test_open_results_reads_scores_maps_and_provenance(workflow):
    results = attrflow.open_results(workflow["root"])
    rows = results.scores(metric="deletion", method="gradient")
    assert len(rows) == N and set(rows["sample_id"]) == set(workflow["ids"])
    means = results.sql("select method, avg(value) as mean from scores where metric = 'deletion' group by method").df()
    assert set(means["method"]) == set(METHODS)
    assert (DATASET, MODEL, "ig") in results.evaluations()
    maps = results.maps(DATASET, MODEL, "ig")
    np.testing.assert_array_equal(maps[workflow["ids"][2]], _stored(workflow, "ig")["maps"][2])
    assert maps.to_numpy().shape == (N, 32, 32) and maps.ids == workflow["ids"]
    assert maps.provenance[0]["params"]["steps"] == 4 and maps.provenance[0]["fn"] == "integrated_gradients"
    with pytest.raises(ValueError, match="no column"):
        results.scores(metrik="deletion")
    with pytest.raises(FileNotFoundError, match="maps here"):
        results.maps(DATASET, MODEL, "nope")


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's 'Use from Python' has no python block"
    return "\n".join(blocks)


def test_the_readme_python_example_runs(workflow, tmp_path, monkeypatch):
    """README.md 'Use from Python', run as written, in a folder whose results/ a workflow made."""
    shutil.copytree(workflow["root"], tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_snippet(), "README.md", "exec"), namespace)
    assert namespace["e"].maps.shape[0] == namespace["x"].shape[0]


def test_importing_attrflow_stays_cheap():
    code = "import sys, attrflow; assert 'torch' not in sys.modules, 'torch'; attrflow.__all__; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")})
    assert out.stdout.strip() == "ok", out.stderr
