"""`python -m attrflow.price`: jobs per rule, GPU-hours and storage of a study, on a fake image
folder (tiny JPEGs), against counts and sums computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from attrflow.price import ENTRY_KEYS, main, price
from attrflow.report.costs import params_json
from attrflow.report.schema import COSTS

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["n01440764", "n01443537", "n01484850"]


def _folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / c / f"img{i}.JPEG")
    return root


def _costs(path: Path, rows: list[dict]) -> Path:
    frame = pd.DataFrame([{name: None for name in COSTS.names} | row for row in rows], columns=COSTS.names)
    frame.to_parquet(path)
    return path


def test_entry_keys_are_the_attribute_jobs():
    from attrflow.explainer import ENTRY_KEYS as JOB_KEYS

    assert tuple(ENTRY_KEYS) == tuple(JOB_KEYS)


def test_study_config_on_a_fake_folder(tmp_path):
    config = yaml.safe_load((ROOT / "config/imagenet_study.yaml").read_text())
    config["datasets"]["imagenet_val"].update(root=str(_folder(tmp_path / "val", 4)), train_root=str(_folder(tmp_path / "train", 3)), n=12, n_train=9)
    config["shard_size"] = 5
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    result = price(path, _costs(tmp_path / "costs.parquet", []), {}, workdir=tmp_path)
    methods, models, axioms = len(config["run"]["methods"]), 5, 4
    assert methods == 35
    shards = 3  # 12 images in shards of 5: 5 + 5 + 2
    assert result["jobs"] == {
        "prepare_dataset": 1,
        "prepare_eval_shard": shards,
        "prepare_model": models,
        # train_pool (EG, EG-32, DeepSHAP), lpi (LPI), feature_stats (the IBA family) per model
        "prepare_references": 3 * models,
        "attribute": models * methods * shards,
        "score": models * methods * shards,
        "synthesize_axioms": models * axioms,
        "attribute_axioms": models * methods,
        "score_axioms": models,
        "aggregate": 1,
        "evidence": 1,
        "report": 1,
    }
    # no costs recorded: every method is unknown, not guessed
    assert result["compute"]["gpu_hours"].isna().all()
    assert set(result["compute"]["passes_source"]) == {"not in costs.parquet"}


def _small(tmp_path: Path) -> Path:
    config = {
        "run": {"datasets": ["val"], "models": ["r18"], "methods": ["gradient", "ig"], "metrics": ["deletion"]},
        "device": "cpu",
        "seed": 0,
        "shard_size": 5,
        "datasets": {"val": {"kind": "image_folder", "root": str(_folder(tmp_path / "val", 4)), "resize": 36, "crop": 32, "n": 12, "classes": "imagenet"}},
        "models": {"r18": {"kind": "timm", "name": "resnet18", "dataset": "val"}},
        "methods": {"gradient": {"fn": "gradient"}, "ig": {"fn": "integrated_gradients", "steps": 8, "samples": 10}},
        "metrics": {"deletion": {"fn": "deletion", "steps": 4}},
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _params(config_path: Path, tmp_path: Path, method: str) -> str:
    from attrflow.config import validate_config
    from attrflow.explainer import method_params

    checked = validate_config(yaml.safe_load(config_path.read_text()), workdir=tmp_path)
    return params_json(method_params(checked["methods"][method]))


def test_gpu_hours_and_storage_by_hand(tmp_path, capsys):
    path = _small(tmp_path)
    costs = _costs(
        tmp_path / "costs.parquet",
        [
            # measured at the same settings and image size
            dict(method="gradient", method_fn="gradient", n=64, forward_per_image=1.0, backward_per_image=1.0,
                 params=_params(path, tmp_path, "gradient"), image_size=32),
            # the same settings at another image size: still used
            dict(method="ig_other_name", method_fn="integrated_gradients", n=64, forward_per_image=9.0, backward_per_image=8.0,
                 params=_params(path, tmp_path, "ig"), image_size=64),
            # same name, other settings (steps 32): only a fallback, not taken here
            dict(method="ig", method_fn="integrated_gradients", n=64, forward_per_image=33.0, backward_per_image=32.0,
                 params='{"steps":32}', image_size=32),
        ],
    )
    result = price(path, costs, {"r18": 2.0}, workdir=tmp_path)
    jobs = result["jobs"]
    # 12 images → shards of 5, 5, 2; IG on its first 10 images → 2 shards
    assert jobs["prepare_eval_shard"] == 3 and jobs["attribute"] == 3 + 2 and jobs["score"] == 5
    compute = result["compute"].set_index("method")
    assert compute.loc["gradient", "passes_source"] == "measured at these settings"
    assert compute.loc["ig", "passes_source"] == "these settings, other image size"
    # gradient: 12 images × (1 forward + 2 × 1 backward) × 2 ms; IG: 10 × (9 + 2 × 8) × 2 ms
    assert compute.loc["gradient", "gpu_hours"] == pytest.approx(12 * 3 * 2.0 / 3.6e6)
    assert compute.loc["ig", "gpu_hours"] == pytest.approx(10 * 25 * 2.0 / 3.6e6)
    store = result["storage"]
    assert store["samples"] == 12 * 3 * 32 * 32 * 4
    assert store["maps"] == (12 + 10) * 32 * 32 * 4
    assert store["score_rows"] == 12 + 10

    main(["--configfile", str(path), "--costs", str(costs), "--forward-ms", "r18=2"])
    out = capsys.readouterr().out
    assert "nothing was run" in out and "attribute                    5" in out
    assert f"GPU-hours for attribution: {(12 * 3 + 10 * 25) * 2.0 / 3.6e6:,.1f}" in out


def test_settings_differ_fallback_is_flagged(tmp_path):
    path = _small(tmp_path)
    costs = _costs(tmp_path / "costs.parquet", [dict(method="ig", method_fn="integrated_gradients", n=64, forward_per_image=33.0, backward_per_image=32.0, params='{"steps":32}', image_size=32)])
    compute = price(path, costs, {}, workdir=tmp_path)["compute"].set_index("method")
    assert compute.loc["ig", "passes_source"] == "same entry name, OTHER settings"
    assert math.isnan(compute.loc["gradient", "gpu_hours"])


def test_shard_size_from_the_cost_model(tmp_path):
    path = _small(tmp_path)
    costs = _costs(
        tmp_path / "costs.parquet",
        [
            dict(method="gradient", method_fn="gradient", n=64, forward_per_image=1.0, backward_per_image=1.0, params=_params(path, tmp_path, "gradient"), image_size=32),
            dict(method="ig", method_fn="integrated_gradients", n=64, forward_per_image=9.0, backward_per_image=8.0, params=_params(path, tmp_path, "ig"), image_size=32),
        ],
    )
    # at 1000 ms per forward: gradient 3 s per image, IG 25 s; a 1-minute target → 2 (IG) and
    # 60 / median(3, 25) = 60 / 14 → 4 images per job
    result = price(path, costs, {"r18": 1000.0}, workdir=tmp_path, target_minutes=1.0)
    (costliest, jobs_costliest), (median, jobs_median) = result["shard_sizes"]["costliest"], result["shard_sizes"]["median"]
    assert (costliest, median) == (2, 4)
    # shard 2: 6 eval shards, gradient 6 + IG (10 images) 5 attribute and score jobs; + dataset,
    # model, aggregate, evidence, report
    assert jobs_costliest == 6 + 2 * (6 + 5) + 5
    # shard 4: 3 eval shards, gradient 3 + IG 3 (10 images: 4, 4, 2)
    assert jobs_median == 3 + 2 * (3 + 3) + 5


def test_shards_per_job_from_the_cost_model(tmp_path, capsys):
    path = _small(tmp_path)  # shard_size 5: gradient 12 images in 3 shards, IG 10 images in 2
    costs = _costs(
        tmp_path / "costs.parquet",
        [
            dict(method="gradient", method_fn="gradient", n=64, forward_per_image=1.0, backward_per_image=1.0, params=_params(path, tmp_path, "gradient"), image_size=32),
            dict(method="ig", method_fn="integrated_gradients", n=64, forward_per_image=9.0, backward_per_image=8.0, params=_params(path, tmp_path, "ig"), image_size=32),
        ],
    )
    # at 1000 ms per forward: gradient 3 s per image, IG 25 s. A 1-minute job holds 20 gradient
    # images (4 shards of 5, cut to the 3 it has) and 2.4 IG images (less than a shard: 1).
    grouping, jobs = price(path, costs, {"r18": 1000.0}, workdir=tmp_path, target_minutes=1.0)["shards_per_job"]
    assert grouping == {"gradient": 3, "ig": 1}
    # A config that already groups shards is capped by its evaluation shards, not its jobs.
    config = yaml.safe_load(path.read_text())
    config["methods"]["gradient"]["shards_per_job"] = 2
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text(yaml.safe_dump(config))
    assert price(grouped, costs, {"r18": 1000.0}, workdir=tmp_path, target_minutes=1.0)["shards_per_job"][0] == grouping
    # 3 eval shards; gradient 1 attribute + 1 score, IG 2 + 2; dataset, model, aggregate, evidence, report
    assert jobs == 3 + 2 * (1 + 2) + 5
    # 5 minutes: 12 IG images, 2 shards (all it has)
    grouping, jobs = price(path, costs, {"r18": 1000.0}, workdir=tmp_path, target_minutes=5.0)["shards_per_job"]
    assert grouping == {"gradient": 3, "ig": 2}
    assert jobs == 3 + 2 * (1 + 1) + 5
    main(["--configfile", str(path), "--costs", str(costs), "--forward-ms", "r18=1000", "--target-job-minutes", "1"])
    out = capsys.readouterr().out
    assert "gradient: {shards_per_job: 3}" in out and "ig: {shards_per_job" not in out


def test_a_method_without_passes_runs_as_one_job(tmp_path):
    path = _small(tmp_path)
    costs = _costs(
        tmp_path / "costs.parquet",
        [
            dict(method="gradient", method_fn="gradient", n=64, forward_per_image=0.0, backward_per_image=0.0, params=_params(path, tmp_path, "gradient"), image_size=32),
        ],
    )
    grouping, _ = price(path, costs, {"r18": 1000.0}, workdir=tmp_path, target_minutes=1.0)["shards_per_job"]
    assert grouping == {"gradient": 3}  # IG has no recorded passes: not grouped, not listed
