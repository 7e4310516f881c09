"""The `prepare_dataset` and `prepare_model` jobs."""

from __future__ import annotations

import hashlib
import sys
import logging
from pathlib import Path
from typing import Any

LOG = logging.getLogger("attrflow")


def prepare_dataset_store(*, name: str, spec: dict[str, Any], out_path: str | Path) -> Path:
    from attrflow.data.adapters import prepare_dataset
    from attrflow.data.sample_store import write_sample_store

    evaluation, train, attrs = prepare_dataset(name, spec, int(spec.get("seed", 0)))
    # both splits: the evaluation split's own fingerprint, then the train split's
    h = hashlib.sha256()
    for part in (evaluation, train):
        if part is not None:
            h.update(part.fingerprint().encode())
    attrs = {**attrs, "fingerprint": h.hexdigest()[:16]}
    LOG.info(
        "%s: %d evaluation and %d training samples, fingerprint %s",
        name, len(evaluation), len(train) if train is not None else 0, attrs["fingerprint"],
    )
    return write_sample_store(out_path, evaluation, train, attrs)


def prepare_eval_shard(
    *, name: str, spec: dict[str, Any], sample_range: list[int], shard: int, out_path: str | Path
) -> Path:
    """Evaluation samples [start, stop) of a dataset, for the attribution and score jobs of
    shard ``shard``; the fingerprint is that of the pixels, labels and ids stored."""
    from attrflow.data.adapters import class_names_of, prepare_eval_range
    from attrflow.data.sample_store import write_eval_shard

    start, stop = (int(v) for v in sample_range)
    samples = prepare_eval_range(name, spec, int(spec.get("seed", 0)), start, stop)
    if len(samples) != stop - start:
        raise ValueError(
            f"datasets.{name}: {len(samples)} evaluation samples in [{start}, {stop}); the source "
            "holds fewer than the plan expects (was a file removed while the run started?)"
        )
    class_names = class_names_of(spec)  # the label order: which class each label index means
    attrs = {
        "dataset": name,
        "shard": int(shard),
        "spec": dict(spec),
        "class_names": class_names,
        "num_classes": len(class_names),
        "fingerprint": samples.fingerprint(),
    }
    LOG.info("%s shard %d: samples [%d, %d), fingerprint %s", name, shard, start, stop, attrs["fingerprint"])
    return write_eval_shard(out_path, samples, [start, stop], attrs)


def prepare_model_files(
    *,
    name: str,
    spec: dict[str, Any],
    samples_path: str | Path | None,
    out_dir: str | Path,
    seed: int,
    threads: int,
) -> dict[str, Any]:
    from attrflow.models.cards import save_model
    from attrflow.models.preparation import prepare_model

    model, card = prepare_model(
        name, spec, dataset_store=Path(samples_path) if samples_path else None, seed=seed, threads=threads, log=sys.stderr
    )
    save_model(model, card, out_dir)
    LOG.info("%s: test accuracy %s", name, card.get("test_accuracy"))
    return card
