"""The sample store (`samples.zarr`): the images a run explains, plus an optional train split.

Root arrays are the evaluation split: ``images`` (N, C, H, W) float32
in [0, 1], ``labels`` (N,) int64, ``ids`` (N,) str, optional ``masks`` (N, H, W) bool, and, where the masks
were made from bounding boxes, ``boxes`` (M, 5) float64: rows ``[sample, x0, y0, x1, y1]``, the
sample's row in this store and the box in input pixel coordinates, and, where the dataset
has per-pixel concept labels (Network Dissection), ``concept_labels`` (N, G, H, W) uint16 with
its vocabulary (`attrflow.data.concepts`). A
``train`` sub-group holds the same arrays for the split that trained models learn from.

Datasets for regression models (`attrflow.data.regression`) may carry ``severity`` (N, H, W)
float32: each pixel's ground-truth severity score, the map the severity correlation compares
attributions with (Khakzar et al., 2021, after BrixIA's per-region scores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attrflow.data.concepts import ConceptLabels, read_concepts
from attrflow.store import open_store, write_store


@dataclass
class SampleSet:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    ids: list[str]
    masks: np.ndarray | None = None  # (N, H, W) bool
    boxes: np.ndarray | None = None  # (M, 5) float64: [row, x0, y0, x1, y1] in input pixels
    concepts: ConceptLabels | None = None  # per-pixel concept labels (Network Dissection)
    severity: np.ndarray | None = None  # (N, H, W) float32: per-pixel severity score

    def __post_init__(self) -> None:
        self.images = np.ascontiguousarray(self.images, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.ids = [str(i) for i in self.ids]
        n = self.images.shape[0]
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {self.images.shape}")
        if self.labels.shape != (n,) or len(self.ids) != n:
            raise ValueError(f"{n} images but {self.labels.shape[0]} labels and {len(self.ids)} ids")
        if len(set(self.ids)) != n:
            raise ValueError("sample ids must be unique")
        if n and not np.isfinite(self.images).all():
            bad = self.ids[int(np.flatnonzero(~np.isfinite(self.images).reshape(n, -1).all(1))[0])]
            raise ValueError(f"sample {bad!r} has non-finite pixels")
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.shape != (n, *self.images.shape[2:]):
                raise ValueError(f"masks must be (N, H, W), got {self.masks.shape}")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 5)
            rows = self.boxes[:, 0]
            if len(rows) and (rows.min() < 0 or rows.max() >= n or not np.array_equal(rows, np.round(rows))):
                raise ValueError(f"box rows must name samples 0..{n - 1}")
        if self.concepts is not None:
            shape = self.concepts.labels.shape
            if shape[0] != n or shape[2:] != self.images.shape[2:]:
                raise ValueError(f"concept labels have shape {shape}; the images are {self.images.shape}")
        if self.severity is not None:
            self.severity = np.ascontiguousarray(self.severity, dtype=np.float32)
            if self.severity.shape != (n, *self.images.shape[2:]):
                raise ValueError(f"severity maps must be (N, H, W), got {self.severity.shape}")
            if n and not np.isfinite(self.severity).all():
                raise ValueError("severity maps must be finite")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of what the samples are: pixels, labels, ids, masks and boxes."""
        import hashlib

        h = hashlib.sha256()
        h.update(self.images.tobytes())
        h.update(self.labels.tobytes())
        h.update("\0".join(self.ids).encode())
        for extra in (self.boxes, self.masks):
            if extra is not None:
                h.update(extra.tobytes())
        if self.concepts is not None:
            h.update(self.concepts.fingerprint_bytes())
        if self.severity is not None:
            h.update(b"severity")
            h.update(self.severity.tobytes())
        return h.hexdigest()[:16]

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "images": self.images,
            "labels": self.labels,
            "ids": np.asarray(self.ids, dtype=str),
        }
        if self.masks is not None:
            out["masks"] = self.masks
        if self.boxes is not None:
            out["boxes"] = self.boxes
        if self.concepts is not None:
            out.update(self.concepts.arrays())
        if self.severity is not None:
            out["severity"] = self.severity
        return out


def write_sample_store(
    path: str | os.PathLike, evaluation: SampleSet, train: SampleSet | None, attrs: dict[str, Any]
) -> Path:
    groups = {"train": train.arrays()} if train is not None else None
    meta = {"n_eval": len(evaluation), "n_train": len(train) if train is not None else 0, **attrs}
    return write_store(path, evaluation.arrays(), meta, groups=groups)


def write_eval_shard(path: str | os.PathLike, samples: SampleSet, sample_range: list[int], attrs: dict[str, Any]) -> Path:
    """An evaluation shard store: samples [start, stop) of a dataset's evaluation split."""
    start, stop = (int(v) for v in sample_range)
    if len(samples) != stop - start:
        raise ValueError(f"{len(samples)} samples for the range [{start}, {stop})")
    meta = {"n_eval": len(samples), "n_train": 0, "sample_range": [start, stop], **attrs}
    return write_store(path, samples.arrays(), meta)


@dataclass(frozen=True)
class EvalPart:
    """The samples [start, stop) a job reads from one evaluation store: evaluation shard
    ``shard``, or None for a whole-dataset store; ``fingerprint`` is the store's."""

    path: str
    start: int
    stop: int
    shard: int | None
    fingerprint: str = ""


def eval_parts(paths: str | os.PathLike | list, start: int, stop: int) -> list[EvalPart]:
    """The evaluation shard stores holding samples [start, stop), each with its part of the
    range, in sample order; an error names the range no store holds (a job given the wrong
    stores must fail before it writes, not explain fewer samples)."""
    from attrflow.store import read_attrs

    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    parts, at = [], int(start)
    for path in paths:
        attrs = read_attrs(path)
        first, last = (int(v) for v in attrs.get("sample_range", [0, int(attrs.get("n_eval", 0))]))
        lo, hi = max(first, at), min(last, int(stop))
        if lo != at or hi <= lo:
            break
        shard = attrs.get("shard") if "sample_range" in attrs else None
        parts.append(EvalPart(str(path), lo, hi, None if shard is None else int(shard), str(attrs.get("fingerprint", ""))))
        at = hi
    if at != int(stop) or len(parts) != len(paths):
        raise ValueError(
            f"the evaluation stores {[str(p) for p in paths]} do not hold samples [{start}, {stop}) "
            f"in order (held up to {at}); re-run prepare_eval_shard"
        )
    return parts


def joined_fingerprint(fingerprints: list[str]) -> str:
    """One fingerprint for samples read from several stores: a single store's own, else a hash
    of the parts' fingerprints in order."""
    if len(fingerprints) == 1:
        return fingerprints[0]
    import hashlib

    return hashlib.sha256("\0".join(fingerprints).encode()).hexdigest()[:16]


def read_samples(
    path: str | os.PathLike,
    split: str = "eval",
    start: int = 0,
    stop: int | None = None,
    deep: bool = True,
) -> SampleSet:
    """Read samples [start, stop) of a split ("eval" or "train") from a verified store.

    Indices are the dataset's: an evaluation shard store (written for the samples in its
    ``sample_range`` attribute) is read with the same indices as the whole-dataset store.
    """
    root = open_store(path, deep=deep)
    if split == "eval":
        group = root
        first, last = root.attrs.get("sample_range", [0, int(group["labels"].shape[0])])
        stop = last if stop is None else min(stop, last)  # like a slice: a longer range is cut
        if start < first:
            raise ValueError(f"{path} holds samples [{first}, {last}); sample {start} was asked for")
        start, stop = start - first, max(stop - first, start - first)
    elif split == "train":
        if "train" not in root:
            raise ValueError(f"{path} has no train split")
        group = root["train"]
    else:
        raise ValueError(f"unknown split {split!r}; use eval or train")
    sl = slice(start, stop)
    masks = group["masks"][sl] if "masks" in group else None
    boxes = None
    if "boxes" in group:
        boxes = group["boxes"][:]
        first_row, last_row = sl.indices(int(group["labels"].shape[0]))[:2]
        boxes = boxes[(boxes[:, 0] >= first_row) & (boxes[:, 0] < last_row)]
        boxes[:, 0] -= first_row
    concepts = read_concepts(group, sl)
    severity = group["severity"][sl] if "severity" in group else None
    return SampleSet(group["images"][sl], group["labels"][sl], group["ids"][sl].tolist(), masks, boxes, concepts, severity)
