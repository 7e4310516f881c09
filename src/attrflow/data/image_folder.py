"""Images from a folder on disk, ImageNet-validation style.

Two layouts are supported:

* **class sub-folders** — ``root/<class>/<image>``. Classes are the sub-folder names in sorted
  order, and a class's label is its index in that order (the torchvision ``ImageFolder``
  convention, which for ImageNet's WordNet-id folders gives the standard 1000-class indices).
* **flat folder + labels file** — ``root/<image>`` and a text file (``labels_file``) with one
  ``<filename> <label>`` or ``<filename>,<label>`` per line. A line containing a comma is split at
  its last comma, otherwise at its last run of whitespace, so file names may contain spaces
  (with the whitespace form) or not commas. Blank lines and lines starting with ``#`` are
  skipped; there is no header line. The filename may be given with or without its extension.
  Labels are either all integers (used as class indices; the classes are ``0 .. max``) or all
  names (classes are the sorted distinct names over the whole file, indexed like sub-folders).
  A relative ``labels_file`` is resolved against the current working directory.

Images are files whose extension is .jpg, .jpeg or .png (any case). Their order is sorted by file
name, then by path relative to the root: the first ``n`` are the samples, so a larger ``n`` only
appends. Sorting by file name first keeps the classes mixed when ImageNet validation images (whose
names are numbered in random class order) are arranged in class sub-folders.

Pre-processing matches torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` on PIL images:
the shorter side is resized to ``resize`` with antialiased bilinear interpolation (the longer side
to ``int(resize * long / short)``), then the centre ``crop`` × ``crop`` square is cut. Pixels are
RGB float32 in [0, 1]; normalisation belongs to the model wrapper.

Sample ids are the image paths relative to the root (posix separators). There are no object masks.

numpy and PIL are imported inside the loading functions: the workflow counts the images of a
folder (`list_images`) while it plans its jobs, and that must stay cheap.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from attrflow.data.sample_store import SampleSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_RESIZE = 256
DEFAULT_CROP = 224


class ImageFolderError(ValueError):
    """The folder, the labels file or an image is missing or unusable; the message names it."""


# Not hidden, ending in an image extension (any case). A compiled pattern lets `filter` test
# 50 000 names in C, several times faster than a Python-level string check per name.
_IMAGE_NAME = re.compile(r"[^.].*\.(?:jpg|jpeg|png)\Z", re.IGNORECASE | re.DOTALL)


def is_image_file(name: str) -> bool:
    return _IMAGE_NAME.match(name) is not None


def _sort_key(relative: str) -> tuple[str, str]:
    return (relative.rsplit("/", 1)[-1], relative)


def _scan(root: Path, flat: bool) -> list[str]:
    """Image paths relative to `root`, unsorted: files in root (`flat`) or one level down.

    Inside the class sub-folders, names are filtered by extension only (no per-file stat), which
    keeps 50 000 files at a few tens of milliseconds.
    """
    if not root.is_dir():
        raise ImageFolderError(f"image folder {root} does not exist or is not a directory")
    found: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if flat and entry.is_file() and is_image_file(entry.name):
                found.append(entry.name)
            elif not flat and entry.is_dir() and not entry.name.startswith("."):
                prefix = entry.name + "/"
                found.extend(prefix + name for name in filter(_IMAGE_NAME.match, os.listdir(entry.path)))
    if not found:
        where = "directly in" if flat else "in the class sub-folders of"
        raise ImageFolderError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found {where} {root}")
    return found


def list_images(root: str | os.PathLike, flat: bool) -> list[str]:
    """Image paths relative to `root` (posix separators), in sample order.

    `flat` lists the files directly in root; otherwise the files in the class sub-folders.
    """
    return sorted(_scan(Path(root), flat), key=_sort_key)


def count_images(root: str | os.PathLike, flat: bool) -> int:
    """How many images `list_images` would return, with `os.scandir` only: the workflow calls
    this while it plans its jobs, so 50 000 files must take milliseconds."""
    return len(_scan(Path(root), flat))


def class_folders(root: str | os.PathLike) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


@dataclass(frozen=True)
class LabelsFile:
    """A parsed labels file: label index per key (filename and filename without extension)."""

    labels: dict[str, int]
    class_names: list[str]
    path: Path

    def label_of(self, relative: str) -> int:
        name = relative.rsplit("/", 1)[-1]
        for key in (name, os.path.splitext(name)[0]):
            if key in self.labels:
                return self.labels[key]
        raise ImageFolderError(f"image {relative!r} has no entry in the labels file {self.path}")


def read_labels_file(path: str | os.PathLike) -> LabelsFile:
    path = Path(path)
    if not path.is_file():
        raise ImageFolderError(f"labels file {path} does not exist")
    raw: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ImageFolderError(
                f"{path}, line {number}: expected '<filename> <label>' or '<filename>,<label>', got {line!r}"
            )
        name, label = parts[0].strip(), parts[1].strip()
        if name in raw and raw[name] != label:
            raise ImageFolderError(
                f"{path}, line {number}: {name!r} is labelled twice ({raw[name]!r}, {label!r})"
            )
        raw[name] = label
    if not raw:
        raise ImageFolderError(f"labels file {path} has no entries")
    values = set(raw.values())
    if all(_is_int(v) for v in values):
        numeric = {name: int(v) for name, v in raw.items()}
        if min(numeric.values()) < 0:
            bad = min(numeric, key=numeric.get)
            raise ImageFolderError(f"{path}: label of {bad!r} is negative ({numeric[bad]})")
        names = [str(k) for k in range(max(numeric.values()) + 1)]
    elif any(_is_int(v) for v in values):
        raise ImageFolderError(f"{path}: labels mix integers and names; use one or the other")
    else:
        names = sorted(values)
        index = {c: k for k, c in enumerate(names)}
        numeric = {name: index[v] for name, v in raw.items()}
    labels = dict(numeric)
    for name, label in numeric.items():  # also accept the name without its extension
        labels.setdefault(os.path.splitext(name)[0], label)
    return LabelsFile(labels, names, path)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def load_image(path: Path, resize: int, crop: int) -> np.ndarray:
    """(3, crop, crop) float32 in [0, 1]: torchvision's Resize(resize) + CenterCrop(crop) on PIL."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = resize, int(resize * long / short)
            size = (new_short, new_long) if width <= height else (new_long, new_short)
            image = image.resize(size, Image.Resampling.BILINEAR)
    except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ImageFolderError(f"cannot read image {path}: {err}") from err
    width, height = image.size
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    pixels = np.asarray(image, dtype=np.uint8)[top : top + crop, left : left + crop]
    return pixels.transpose(2, 0, 1).astype(np.float32) / 255.0


def _check_sizes(resize: int, crop: int) -> None:
    for key, value in (("resize", resize), ("crop", crop)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImageFolderError(f"{key} must be a positive integer, got {value!r}")
    if crop > resize:
        raise ImageFolderError(
            f"crop ({crop}) must not exceed resize ({resize}): the crop would need padding"
        )


def load_image_folder(
    root: str | os.PathLike,
    *,
    labels_file: str | os.PathLike | None = None,
    resize: int = DEFAULT_RESIZE,
    crop: int = DEFAULT_CROP,
    n: int | None = None,
    class_names: list[str] | None = None,
    start: int = 0,
) -> tuple[SampleSet, list[str]]:
    """Images ``start .. n-1`` of `root` (to the end when `n` is None) and the class names.

    `class_names` pins the class list of a sub-folder layout (a train folder must use the
    evaluation folder's classes); a folder naming a class outside it is an error.
    """
    import numpy as np

    from attrflow.data.sample_store import SampleSet

    _check_sizes(resize, crop)
    root = Path(root)
    labels = read_labels_file(labels_file) if labels_file is not None else None
    files = list_images(root, flat=labels is not None)
    files = files[start:n]
    if labels is not None:
        names = labels.class_names
        targets = [labels.label_of(f) for f in files]
    else:
        names = class_names if class_names is not None else class_folders(root)
        index = {c: k for k, c in enumerate(names)}
        targets = []
        for f in files:
            folder = f.split("/", 1)[0]
            if folder not in index:
                raise ImageFolderError(
                    f"{root / folder} is not one of the {len(names)} classes of the evaluation folder"
                )
            targets.append(index[folder])
    images = np.empty((len(files), 3, crop, crop), dtype=np.float32)
    for k, f in enumerate(files):
        images[k] = load_image(root / f, resize, crop)
    return SampleSet(images, np.asarray(targets, dtype=np.int64), files), names
