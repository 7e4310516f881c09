"""Checks run while the workflow is planned, before any job can start.

Snakemake deletes a job's old output when the job starts, so an error found inside the job (a
truncated JPEG, a checkpoint saved with `model.`-prefixed keys) would cost the last good result
and report one culprit per run. What can be checked from the inputs alone is therefore checked
here, and every culprit is named at once:

* every image of a selected image folder opens and decodes (checked once per file content:
  the verdict is kept in the content index beside its digest);
* every local checkpoint's tensor names and shapes match the architecture its model entry
  builds (checked once per checkpoint content and entry);
* no finished store under ``results/`` is damaged (a store is published atomically, so damage
  means a file was edited or lost after the fact: it is named, never silently moved or deleted).

Planning is read-only for ``results/``: nothing here writes there.
"""

from __future__ import annotations

import os
from pathlib import Path


class PreflightError(RuntimeError):
    pass


def preflight(plan, results: str = "results") -> None:
    problems = [*_image_problems(plan), *_checkpoint_problems(plan), *_damaged_stores(plan, results)]
    if problems:
        raise PreflightError(
            "attrflow found problems before starting any job (nothing was changed):\n\n" + "\n\n".join(problems)
        )


def _image_problems(plan) -> list[str]:
    from attrflow.content import check_images, format_bad_files
    from attrflow.data.sources import source_files

    problems = []
    for dataset in plan.run["datasets"]:
        spec = plan.dataset_spec(dataset)
        base = spec["of"] if spec["kind"] == "corrupted" else spec
        if base["kind"] != "image_folder":
            continue
        _, paths = source_files(spec)
        images = [os.fspath(p) for p in paths if Path(p).suffix.lower() in (".jpg", ".jpeg", ".png")]
        bad = check_images(images, index=plan.content_index)
        if bad:
            problems.append(f"datasets.{dataset} ({base['root']}): " + format_bad_files(bad))
    return problems


def _checkpoint_problems(plan) -> list[str]:
    """Each local checkpoint against the architecture its entry builds; the verdict is kept by
    content digest, so torch is imported to check a checkpoint once, not on every plan."""
    from attrflow.models.checkpoint_check import check_model_checkpoint_cached

    problems = []
    for model in plan.run["models"]:
        spec = plan.model_spec(model)
        if not spec.get("checkpoint") or spec.get("kind") not in ("timm", "torchvision"):
            continue
        verdict = check_model_checkpoint_cached(model, spec, index=plan.content_index, base_dir=plan.workdir)
        if verdict:
            problems.append(verdict)
    return problems


def _damaged_stores(plan, results: str) -> list[str]:
    from attrflow.store import verify_store

    stores = [
        *plan.sample_stores(results),
        *plan.eval_shard_stores(results),
        *plan.attribution_stores(results),
    ]
    damaged = []
    for store in stores:
        if Path(store).exists():
            found = verify_store(store, deep=False)
            if found:
                damaged.append(found[0])
    if not damaged:
        return []
    listing = "\n".join(f"  - {d}" for d in damaged[:20])
    more = f"\n  … and {len(damaged) - 20} more" if len(damaged) > 20 else ""
    return [
        f"{len(damaged)} finished store(s) under {results}/ are damaged (a file was changed or lost "
        f"after the store was written):\n{listing}{more}\n"
        "Remove them with `python -m attrflow.clean --damaged` (or by hand) and run again to recompute them."
    ]
