"""Jobs that cover several evaluation shards (a method entry's `shards_per_job`) compute exactly
what one job per shard computes: the same maps, diagnostics and targets, and the same score rows,
bit for bit on CPU — random streams and batches are those of each shard's own job. Peer maps
stored in stores grouped otherwise are joined by sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from attrflow.config import check_entry
from attrflow.data.sample_store import SampleSet, eval_parts, write_eval_shard
from attrflow.jobs.attribute import attribute_shard
from attrflow.jobs.score import score_shard
from attrflow.plan import method_code_fingerprint, metric_code_fingerprint
from attrflow.store import open_store

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASET, MODEL, CLASSES = "tiny", "net", 4
RANGES = [(0, 4), (4, 8), (8, 10)]  # three evaluation shards of 10 samples
RUNTIME = {"device": "cpu", "seed": 3, "max_batch": 64, "target": "predicted"}
METHODS = {
    "smooth": {"fn": "smoothgrad", "n": 3},  # draws noise: the random stream matters
    "shap": {"fn": "exact_shapley", "grid": 2},  # stores diagnostics (the Shapley values)
}
METRICS = {
    "mufidelity": {"fn": "mufidelity", "subsets": 6, "grid": 4},  # draws subsets; scored twice
    "agree": {"fn": "shapley_spearman", "reference": "shap"},  # reads the peer's maps
}


def _filled(family: str, entries: dict) -> dict:
    return {name: check_entry(family, name, dict(e)) for name, e in entries.items()}


@pytest.fixture(scope="module")
def stores(tmp_path_factory, one_thread):
    from attrflow.models.cards import save_model
    from attrflow.models.wrapper import WrappedModel

    root = tmp_path_factory.mktemp("grouped")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=CLASSES).eval()
    card = {
        "name": MODEL, "kind": "torchvision", "num_classes": CLASSES, "mean": list(MEAN), "std": list(STD),
        "cam_layer": "layer4", "is_x_dnn": False,
        "architecture": {"library": "torchvision", "name": "resnet18", "kwargs": {"num_classes": CLASSES}, "x_dnn": False},
    }  # fmt: skip
    save_model(WrappedModel(net, num_classes=CLASSES, mean=MEAN, std=STD, cam_layer="layer4", name=MODEL), card, root / "model")
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    labels = np.arange(10) % CLASSES
    paths = []
    for shard, (start, stop) in enumerate(RANGES):
        part = SampleSet(images[start:stop], labels[start:stop], [f"img-{i}" for i in range(start, stop)])
        attrs = {"shard": shard, "fingerprint": f"fp-{shard}"}
        paths.append(str(write_eval_shard(root / "eval" / f"shard-{shard}.zarr", part, [start, stop], attrs)))
    return root, paths


def _attribute(root, paths, method, shard, sample_range, out):
    entry = _filled("methods", METHODS)[method]
    return attribute_shard(
        samples_path=paths, model_dir=root / "model", out_path=out, dataset=DATASET, model_name=MODEL,
        shard=shard, method=method, entry=entry, code=method_code_fingerprint(entry), sample_range=sample_range,
        **RUNTIME,
    )  # fmt: skip


def _score(root, paths, maps, peers, sample_range, out):
    entry = _filled("methods", METHODS)["smooth"]
    metrics = _filled("metrics", METRICS)
    score_shard(
        samples_path=paths, model_dir=root / "model", maps_path=maps, out_path=out, dataset=DATASET, model=MODEL,
        method="smooth", method_entry=entry, method_code=method_code_fingerprint(entry), metrics=metrics,
        metrics_code={m: metric_code_fingerprint(e["fn"]) for m, e in metrics.items()}, sample_range=sample_range,
        peer_paths={"shap": peers}, **RUNTIME,
    )  # fmt: skip
    return pq.read_table(out).to_pandas()


@pytest.fixture(scope="module")
def one_job_per_shard(stores):
    root, paths = stores
    out = root / "single"
    maps = {
        method: [_attribute(root, path, method, k, list(RANGES[k]), out / method / f"shard-{k}.zarr") for k, path in enumerate(paths)]
        for method in METHODS
    }  # fmt: skip
    scores = [
        _score(root, path, maps["smooth"][k], [maps["shap"][k]], list(RANGES[k]), out / f"scores-{k}.parquet")
        for k, path in enumerate(paths)
    ]
    return maps, scores


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_job_over_three_shards_stores_the_maps_of_three_jobs(stores, one_job_per_shard, method):
    root, paths = stores
    grouped = open_store(_attribute(root, paths, method, 0, [0, 10], root / "grouped" / method / "shard-0.zarr"))
    single = [open_store(path) for path in one_job_per_shard[0][method]]
    assert grouped["ids"][:].tolist() == [i for s in single for i in s["ids"][:].tolist()]
    for name in ("maps", "targets", "labels"):
        np.testing.assert_array_equal(grouped[name][:], np.concatenate([s[name][:] for s in single]))
    assert sorted(grouped["diagnostics"].array_keys()) == sorted(single[0]["diagnostics"].array_keys())
    for key in grouped["diagnostics"].array_keys():
        np.testing.assert_array_equal(
            grouped["diagnostics"][key][:], np.concatenate([s["diagnostics"][key][:] for s in single])
        )
    # The recorded passes are the method's, summed over the shards (the cost model reads them).
    assert grouped.attrs["forward_samples"] == sum(s.attrs["forward_samples"] for s in single)
    assert grouped.attrs["sample_range"] == [0, 10]


def test_a_job_over_three_shards_scores_as_three_jobs_with_peers_grouped_otherwise(stores, one_job_per_shard):
    root, paths = stores
    single_maps, single_scores = one_job_per_shard
    maps = _attribute(root, paths, "smooth", 0, [0, 10], root / "grouped-scores" / "smooth.zarr")
    # The peer's maps as one-per-shard stores: the grouped job joins them by sample.
    grouped = _score(root, paths, maps, single_maps["shap"], [0, 10], root / "grouped-scores" / "scores.parquet")
    columns = ["metric", "sample_id", "value", "value_retest", "status", "target", "correct"]
    got = grouped.sort_values("metric", kind="stable")[columns].reset_index(drop=True)
    expected = pd.concat(single_scores).sort_values("metric", kind="stable")[columns].reset_index(drop=True)
    assert got.equals(expected)
    assert (got["status"] == "ok").any() and got["value_retest"].notna().any()


def test_stores_that_do_not_hold_the_range_are_named(stores):
    _, paths = stores
    with pytest.raises(ValueError, match="do not hold samples \\[0, 10\\)"):
        eval_parts([paths[0], paths[2]], 0, 10)
    assert [(p.start, p.stop, p.shard) for p in eval_parts(paths[:2], 2, 7)] == [(2, 4, 0), (4, 7, 1)]
