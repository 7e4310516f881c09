"""CIFAR-10 and CIFAR-100 from the official python batches on local disk (never downloaded).

Layouts (``root`` may be the batches folder itself or the folder that contains it):

* CIFAR-10, ``cifar-10-batches-py/``: ``data_batch_1`` … ``data_batch_5`` (train), ``test_batch``,
  ``batches.meta`` (``label_names``); labels under ``labels``.
* CIFAR-100, ``cifar-100-python/``: ``train``, ``test``, ``meta`` (``fine_label_names``); the
  fine labels (``fine_labels``) are used.

Each batch is a pickled dict whose ``data`` is a uint8 array of shape (N, 3072): the red, then
green, then blue 32×32 plane of each image, row-major, so pixel (c, h, w) is
``data[i, c*1024 + h*32 + w]``.

The batches are pickles, and unpickling runs whatever callables a pickle names. They are
therefore read with an unpickler that resolves only what an ndarray needs (numpy's array
reconstructor, ``ndarray`` and ``dtype``); a file naming anything else is refused with an error
naming the file and the callable. Plain containers, strings, bytes and numbers need no callable.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attrflow.data.sample_store import SampleSet

SIDE = 32
PIXELS_PER_IMAGE = 3 * SIDE * SIDE


@dataclass(frozen=True)
class CifarLayout:
    folder: str  # name of the batches folder inside a download
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{k}" for k in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names"
    ),
}


class CifarError(ValueError):
    """A CIFAR file is missing, malformed or unsafe; the message names the file."""


def _allowed_callables() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: what rebuilding a numpy array requires."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # as written by numpy 1 (and CIFAR's files)
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # as written by numpy 2
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_callables()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Unpickle a CIFAR batch (Python 2 pickles: byte strings stay bytes) without running code."""
    path = Path(path)
    if not path.is_file():
        raise CifarError(f"CIFAR file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            return _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
    ) as err:
        raise CifarError(f"cannot load CIFAR file {path}: {err}") from err


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _field(batch: Any, key: str, path: Path) -> Any:
    """batch[key], whether the pickle's keys are bytes (Python 2 files) or str."""
    if not isinstance(batch, dict):
        raise CifarError(f"{path} does not hold a dict but {type(batch).__name__}")
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise CifarError(f"{path} has no {key!r} entry (keys: {sorted(_text(k) for k in batch)})")


def batches_folder(root: str | os.PathLike, variant: str) -> Path:
    """The folder holding the batch files: `root` itself or its standard sub-folder."""
    layout = _layout(variant)
    root = Path(root)
    for candidate in (root, root / layout.folder):
        if (candidate / layout.test_file).is_file():
            return candidate
    raise CifarError(
        f"no {variant} test file {layout.test_file!r} in {root} or {root / layout.folder}"
        " (attrflow never downloads CIFAR; point root at the extracted python batches)"
    )


def _layout(variant: str) -> CifarLayout:
    if variant not in LAYOUTS:
        raise CifarError(f"unknown CIFAR variant {variant!r}; use one of {sorted(LAYOUTS)}")
    return LAYOUTS[variant]


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 labels of one batch file."""
    batch = safe_unpickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        raise CifarError(
            f"{path}: data must be uint8 of shape (N, {PIXELS_PER_IMAGE}), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise CifarError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, SIDE, SIDE), labels


def _read_split(
    folder: Path, files: tuple[str, ...], label_key: str, limit: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches in order until `limit` samples were produced (all when None)."""
    remaining = limit
    for name in files:
        if remaining is not None and remaining <= 0:
            return
        images, labels = _read_batch(folder / name, label_key)
        if remaining is not None:
            images, labels = images[:remaining], labels[:remaining]
            remaining -= len(labels)
        yield images, labels


def _sample_set(
    parts: list[tuple[np.ndarray, np.ndarray]], split: str, num_classes: int, where: Path
) -> SampleSet:
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CifarError(
            f"{where}: {split} labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    ids = [f"{split}-{i:05d}" for i in range(len(labels))]
    return SampleSet(images.astype(np.float32) / 255.0, labels, ids)


def cifar_class_names(root: str | os.PathLike, variant: str = "cifar10") -> list[str]:
    """The class names in label order, from the batches' meta file."""
    layout = _layout(variant)
    meta_path = batches_folder(root, variant) / layout.meta_file
    return [_text(c) for c in _field(safe_unpickle(meta_path), layout.names_key, meta_path)]


def load_cifar(
    root: str | os.PathLike, *, variant: str = "cifar10", n_test: int, n_train: int | None = None
) -> tuple[SampleSet, SampleSet | None, list[str], Path]:
    """The first `n_test` test samples, the first `n_train` train samples (all when None; no
    train split for 0), the class names and the batches folder.

    A test batch holding fewer than `n_test` images is an error: the workflow planned its
    attribution shards for `n_test` samples, so a short file must not silently give fewer.
    """
    layout = _layout(variant)
    folder = batches_folder(root, variant)
    meta_path = folder / layout.meta_file
    class_names = [_text(c) for c in _field(safe_unpickle(meta_path), layout.names_key, meta_path)]
    test_path = folder / layout.test_file
    test = _sample_set(
        list(_read_split(folder, (layout.test_file,), layout.label_key, n_test)),
        "test",
        len(class_names),
        test_path,
    )
    if len(test) < n_test:
        raise CifarError(f"{test_path} holds {len(test)} images, fewer than the {n_test} requested")
    train = None
    if n_train != 0:
        parts = list(_read_split(folder, layout.train_files, layout.label_key, n_train))
        train = _sample_set(parts, "train", len(class_names), folder)
    return test, train, class_names, folder
