"""Which files a dataset's samples are read from, and a fingerprint of their content.

The workflow plans with these: a shard's params carry the fingerprint of the files in its index
range, so an overwritten image re-plans its shard (and what reads it) and nothing else, and an
added image re-plans the shards whose range it shifts. Names and timestamps never decide: a file
is identified by its content digest (`attrflow.content.FileIndex`, which hashes a file once and
reuses the digest while its size and modification time are unchanged).

Only the standard library is imported: this runs while Snakemake parses the workflow.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

GENERATED = "generated"  # a dataset computed from its spec alone (the spec is in the params)


def _image_folder_parts(spec: dict[str, Any], start: int | None, stop: int | None) -> tuple[list, list[Path]]:
    from attrflow.data.annotations import Annotations
    from attrflow.data.image_folder import class_folders, list_images

    flat = spec.get("labels_file") is not None
    root = Path(spec["root"])
    files = list_images(root, flat=flat)
    n = spec.get("n")
    evaluation = files[:n] if n is not None else files
    meta: list = []
    # Labels depend on the class list (sorted sub-folders) or on the labels file, and on the
    # `classes` setting (ImageNet's index: the list timm ships is part of the code's libraries).
    meta.append(["classes", class_folders(root) if not flat else []])
    if spec.get("classes") is not None:
        meta.append(["class_index", spec["classes"]])
    paths: list[Path] = []
    if spec.get("labels_file") is not None:
        paths.append(Path(spec["labels_file"]))
        meta.append(["labels_file", str(spec["labels_file"])])
    chosen = evaluation[start:stop] if start is not None else evaluation
    meta.append(["eval", chosen])
    paths.extend(root / f for f in chosen)
    # Object masks: the mask file or box annotation of every chosen image (a COCO file is shared).
    annotations = Annotations(spec.get("masks_root"), spec.get("boxes"))
    if annotations.provides_masks:
        meta.append(["masks", spec.get("masks_root"), spec.get("boxes")])
        shared = annotations.shared_files()
        per_image = [p for f in chosen for p in annotations.files_for(f)]
        meta.append(["mask_files", [os.fspath(p) for p in per_image]])
        paths.extend(shared)
        paths.extend(per_image)
    train_root = spec.get("train_root")
    if start is None and train_root is not None and spec.get("n_train") != 0:
        train = list_images(Path(train_root), flat=flat)
        if spec.get("n_train") is not None:
            train = train[: spec["n_train"]]
        meta.append(["train", train])
        paths.extend(Path(train_root) / f for f in train)
    return meta, paths


def _cifar_parts(spec: dict[str, Any]) -> tuple[list, list[Path]]:
    from attrflow.data.cifar import batches_folder

    folder = Path(batches_folder(spec["root"], spec.get("variant", "cifar10")))
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return [["files", [p.name for p in files]]], files


def _broden_parts(spec: dict[str, Any], start: int | None, stop: int | None) -> tuple[list, list[Path]]:
    """index.csv and label.csv, and every chosen image with its label PNGs."""
    import csv

    root = Path(spec["root"])
    with open(root / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if spec.get("split") is None or r["split"] == spec["split"]]
    n = spec.get("n")
    rows = rows[:n] if n is not None else rows
    chosen = rows[start:stop] if start is not None else rows
    files = [r["image"] for r in chosen]
    for r in chosen:
        for column, value in r.items():
            if column not in ("image", "split", "ih", "iw", "sh", "sw") and value:
                files += [s for s in value.split(";") if s and not s.isdigit()]
    meta = [["broden", spec.get("split"), spec.get("categories"), files]]
    return meta, [root / "index.csv", root / "label.csv", *(root / "images" / f for f in files)]


def source_files(spec: dict[str, Any], start: int | None = None, stop: int | None = None) -> tuple[list, list[Path]]:
    """(description, files) the samples [start, stop) of the evaluation split — or, without a
    range, every split — are read from. No files for generated datasets."""
    kind = spec["kind"]
    if kind == "corrupted":
        return source_files(spec["of"], start, stop)
    if kind == "image_folder":
        return _image_folder_parts(spec, start, stop)
    if kind == "cifar":
        return _cifar_parts(spec)
    if kind == "broden":
        return _broden_parts(spec, start, stop)
    return [], []


def source_fingerprint(spec: dict[str, Any], start: int | None, stop: int | None, index) -> str:
    """sha256 over the description and each file's content digest, in sample order."""
    meta, paths = source_files(spec, start, stop)
    if not paths and not meta:
        return GENERATED
    h = hashlib.sha256()
    h.update(repr(meta).encode())
    for digest in index.digests([os.fspath(p) for p in paths]):
        h.update(digest.encode())
    return h.hexdigest()[:16]
