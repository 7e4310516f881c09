"""The Broden dataset of Bau et al., 2017 (Network Dissection), read from its folder on disk.

Broden (``broden1_224`` or ``broden1_227`` as the authors released it; nothing is downloaded)
merges ADE20K, Pascal-Context, Pascal-Part, OpenSurfaces, DTD and colour annotations into one
vocabulary of concepts in six categories (colour, object, part, material, scene, texture):

* ``index.csv`` — one row per image: ``image`` (path under ``images/``), ``split``, the image size
  ``ih``, ``iw``, the label size ``sh``, ``sw``, and per category a ``;``-separated list of label
  sources: a PNG file under ``images/`` whose pixel label is ``R + 256·G`` (at ``sh × sw``), or a
  whole-image label number (scenes, textures);
* ``label.csv`` — ``number``, ``name``, ``category`` (e.g. ``object(2004);part(43)``), …; label
  numbers are global, so one number is one concept in every category.

A `broden` dataset entry gives the evaluation split that dissection reads: images in [0, 1] at
their stored size (every selected image must have the same), label planes upsampled to it with
nearest-neighbour sampling, one plane per label source of a category (the most any image of the
index has, so every shard has the same planes), labels 0 (Broden has no classes: it serves
dissection, not the classification metrics). Options: ``root`` (required), ``split`` (``train``,
``val`` or all rows), ``n`` (the first n rows), ``categories`` (default: all six).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")


class BrodenError(ValueError):
    """The Broden folder is missing a file or holds something unusable; the message names it."""


def _rows(root: Path, split: str | None) -> list[dict[str, str]]:
    index = root / "index.csv"
    if not index.is_file():
        raise BrodenError(f"{index} does not exist: a Broden folder holds index.csv, label.csv and images/")
    with open(index, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in META_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise BrodenError(f"{index} lacks the column(s) {missing}")
    return [r for r in rows if split is None or r["split"] == split]


def count_broden(root: str | Path, split: str | None = None, n: int | None = None) -> int:
    """How many images an entry yields (reads index.csv only)."""
    count = len(_rows(Path(root), split))
    return count if n is None else min(n, count)


def read_vocabulary(root: Path) -> tuple[list[str], list[str]]:
    """(names, categories) indexed by label number − 1; a number's category is the one it is
    annotated in most often (label.csv's ``category`` counts)."""
    path = root / "label.csv"
    if not path.is_file():
        raise BrodenError(f"{path} does not exist")
    entries: dict[int, tuple[str, str]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            number = int(row["number"])
            if number == 0:
                continue
            counts = [(int(c or 0), name) for name, c in re.findall(r"([a-z]+)\((\d*)\)", row.get("category", ""))]
            category = max(counts)[1] if counts else "unknown"
            entries[number] = (row["name"], category)
    size = max(entries, default=0)
    names = [entries.get(k, (f"unused-{k}", "unknown"))[0] for k in range(1, size + 1)]
    categories = [entries.get(k, (f"unused-{k}", "unknown"))[1] for k in range(1, size + 1)]
    return names, categories


def _sources(row: dict[str, str], category: str) -> list[str]:
    return [s for s in (row.get(category) or "").split(";") if s]


def plane_layout(rows: list[dict[str, str]], categories: tuple[str, ...]) -> list[str]:
    """The category of every label plane: as many per category as the most sources any row has."""
    return [c for c in categories for _ in range(max((len(_sources(r, c)) for r in rows), default=0))]


def _label_plane(root: Path, source: str, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if source.isdigit():
        return np.full(shape, int(source), dtype=np.uint16)
    path = root / "images" / source
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    except (OSError, ValueError) as err:
        raise BrodenError(f"cannot read the label image {path}: {err}") from None
    label = rgb[:, :, 0] + 256 * rgb[:, :, 1]
    rows = (np.arange(shape[0]) * label.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * label.shape[1]) // shape[1]
    return label[rows][:, cols].astype(np.uint16)


def load_broden(
    root: str | Path,
    *,
    split: str | None = None,
    n: int | None = None,
    start: int = 0,
    categories: list[str] | None = None,
) -> tuple[Any, list[str]]:
    """Samples [start, n) of a Broden folder, with concept labels; returns (SampleSet, class names)."""
    from PIL import Image

    from attrflow.data.concepts import ConceptLabels
    from attrflow.data.sample_store import SampleSet

    root = Path(root)
    wanted = tuple(categories) if categories else CATEGORIES
    unknown = sorted(set(wanted) - set(CATEGORIES))
    if unknown:
        raise BrodenError(f"unknown Broden categories {unknown}; known: {', '.join(CATEGORIES)}")
    every = _rows(root, split)
    layout = plane_layout(every, wanted)
    names, vocabulary_categories = read_vocabulary(root)
    chosen = every[start : n if n is not None else len(every)]
    if not chosen:
        raise BrodenError(f"{root}: no images in rows [{start}, {n}) of split {split!r}")
    size = (int(chosen[0]["ih"]), int(chosen[0]["iw"]))
    images = np.empty((len(chosen), 3, *size), dtype=np.float32)
    labels = np.zeros((len(chosen), len(layout), *size), dtype=np.uint16)
    for i, row in enumerate(chosen):
        if (int(row["ih"]), int(row["iw"])) != size:
            raise BrodenError(f"{row['image']} is {row['ih']}×{row['iw']}, the first image {size[0]}×{size[1]}; select one size")
        path = root / "images" / row["image"]
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, ValueError) as err:
            raise BrodenError(f"cannot read the image {path}: {err}") from None
        if pixels.shape[:2] != size:
            raise BrodenError(f"{path} is {pixels.shape[0]}×{pixels.shape[1]}, index.csv says {size[0]}×{size[1]}")
        images[i] = pixels.transpose(2, 0, 1)
        plane = 0
        for category in wanted:
            sources = _sources(row, category)
            for j in range(layout.count(category)):
                if j < len(sources):
                    labels[i, plane] = _label_plane(root, sources[j], size)
                plane += 1
    if labels.size and int(labels.max()) > len(names):
        raise BrodenError(f"{root}: a label number exceeds label.csv's largest ({len(names)})")
    concepts = ConceptLabels(labels, names, vocabulary_categories, layout)
    ids = [row["image"] for row in chosen]
    return SampleSet(images, np.zeros(len(chosen), dtype=np.int64), ids, concepts=concepts), ["unlabelled"]
