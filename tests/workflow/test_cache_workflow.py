"""Trust the cache, with real Snakemake on a folder of real image files: a result is recomputed
exactly when what it depends on changed (file content, code, parameters), planning never writes,
a copied project re-plans nothing, and bad input stops the run before any job."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import TINY_CONFIG, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

CLASSES = ["cat", "cup", "dog", "pen"]


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(path)


def photo_config() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["datasets"]["photos"] = {"kind": "image_folder", "root": "photos", "resize": 32, "crop": 32}
    config["run"].update(datasets=["photos"], models=["cnn"], methods=["random", "gradient"], metrics=["deletion"])
    config["shard_size"] = 4
    return config


def ordered_images(root: Path) -> list[str]:
    from attrflow.data.image_folder import list_images

    return list_images(root, flat=False)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> Workflow:
    base = tmp_path_factory.mktemp("photos")
    wf = Workflow(copy_workflow(base / "repo"), base / "work")
    for k, cls in enumerate(CLASSES):
        for i in range(3):
            _image(wf.workdir / "photos" / cls / f"{cls}_{i}.png", seed=10 * k + i)
    wf.write_config(photo_config())
    wf.snakemake()
    return wf


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_an_overwritten_image_replans_exactly_its_shard(photo_run: Workflow):
    root = photo_run.workdir / "photos"
    order = ordered_images(root)
    victim = root / order[5]  # shard 1 (shard size 4)
    original = victim.read_bytes()
    try:
        _image(victim, seed=999)  # another picture under the same name
        jobs = photo_run.planned()
    finally:
        victim.write_bytes(original)
    rules = sorted({rule for rule, _ in jobs})
    assert rules == ["aggregate", "attribute", "evidence", "prepare_dataset", "prepare_eval_shard", "report", "score"]
    for rule, wc in jobs:
        if rule in ("prepare_eval_shard", "attribute", "score"):
            assert wc["shard"] == "1", (rule, wc)
    assert sum(rule == "attribute" for rule, _ in jobs) == 2  # one per method
    proc = photo_run.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, "the original content restores the state"


def test_an_added_image_replans_the_dataset_and_the_shards_it_shifts_only(photo_run: Workflow):
    root = photo_run.workdir / "photos"
    added = root / "pen" / "pen_9.png"  # sorts last by file name: only the last shard changes
    before = tree_digest(photo_run.workdir / "results")
    _image(added, seed=77)
    try:
        jobs = photo_run.planned()
        assert tree_digest(photo_run.workdir / "results") == before, "a dry run changes no byte of results/"
    finally:
        added.unlink()
    shards = {wc["shard"] for rule, wc in jobs if rule == "prepare_eval_shard"}
    assert shards == {"3"}, shards  # 13 images: a new shard 3, shards 0-2 untouched
    assert "prepare_model" not in {rule for rule, _ in jobs}
    assert {wc["shard"] for rule, wc in jobs if rule == "attribute"} == {"3"}


def test_a_copied_project_replans_nothing(photo_run: Workflow, tmp_path):
    moved = Workflow(copy_workflow(tmp_path / "elsewhere" / "repo"), tmp_path / "elsewhere" / "work")
    shutil.copytree(photo_run.workdir, moved.workdir, symlinks=True)  # fresh timestamps on everything
    for path in moved.root.rglob("*.py"):
        path.touch()  # a fresh clone: every source file newer than every result
    proc = moved.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_bad_images_stop_the_run_before_any_job_naming_every_culprit(photo_run: Workflow):
    root = photo_run.workdir / "photos"
    order = ordered_images(root)
    truncated, not_an_image = root / order[2], root / order[7]
    originals = {p: p.read_bytes() for p in (truncated, not_an_image)}
    before = tree_digest(photo_run.workdir / "results")
    truncated.write_bytes(originals[truncated][: len(originals[truncated]) // 2])
    not_an_image.write_text("this is not a picture")
    try:
        proc = photo_run.snakemake(check=False)
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert order[2] in output and order[7] in output, output[-3000:]
    assert "before starting any job" in output
    assert tree_digest(photo_run.workdir / "results") == before, "the previous outputs are intact"


def test_a_checkpoint_with_prefixed_keys_fails_before_any_job(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    for k, cls in enumerate(CLASSES):
        _image(wf.workdir / "photos" / cls / f"{cls}_0.png", seed=k)
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, num_classes=4).state_dict()
    checkpoint = wf.workdir / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, checkpoint)
    config = photo_config()
    config["models"]["r18"] = {"kind": "timm", "name": "resnet18", "checkpoint": "r18.safetensors", "num_classes": 4}
    config["run"].update(models=["r18"], methods=["gradient"])
    wf.write_config(config)
    wf.snakemake()
    model_dir = wf.workdir / "results" / "models" / "r18"
    before = tree_digest(model_dir)
    save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, checkpoint)  # a Lightning-style save
    proc = wf.snakemake(check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "model." in output and "r18" in output and "strip" in output, output[-3000:]
    assert tree_digest(model_dir) == before, "the model prepared from the good checkpoint is intact"
