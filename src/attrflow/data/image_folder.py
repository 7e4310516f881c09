"""Images from a folder on disk, ImageNet-validation style.

Two layouts are supported:

* **class sub-folders** — ``root/<class>/<image>``.
* **flat folder + labels file** — ``root/<image>`` and a text file (``labels_file``) with one
  ``<filename> <label>`` or ``<filename>,<label>`` per line. A line containing a comma is split at
  its last comma, otherwise at its last run of whitespace, so file names may contain spaces
  (with the whitespace form) or not commas. Blank lines and lines starting with ``#`` are
  skipped; there is no header line. The filename may be given with or without its extension.
  Labels are either all integers (used as class indices) or all names. A relative
  ``labels_file`` is resolved against the current working directory.

**Which index a class gets** (`resolve_classes`) is set by ``classes``:

* absent — the sub-folder names (or the label names of a labels file) in sorted order, indexed
  0 .. k-1 (torchvision's ``ImageFolder`` convention). Right for a model trained on this folder;
  wrong for a pretrained ImageNet model on a subset of ImageNet's classes, which is why a
  pretrained model whose class count differs from the folder's is refused at config time.
* ``imagenet`` — the names are WordNet ids (``n01440764`` …) mapped to the standard
  1000-class ImageNet-1k index (the synset list timm ships, read from its package files without
  importing it); a name that is not one of the 1000 ids is an error.
* a mapping ``{name: index}`` — every sub-folder (or label name) must appear in it.

Integer labels in a labels file are indices already and take no ``classes``.

Images are files whose extension is .jpg, .jpeg or .png (any case); hidden files (a leading
dot) are ignored. Any other file is *listed*, not silently skipped (`non_image_files`): the
config check warns with their count and the first names, and the prepare job logs them all. A
file that looks like a mistyped or unsupported image (``.jgp``, ``.pgn``, ``.jpeg2``, ``.webp``,
``.tif`` …: see `looks_like_image`) is an error at config time, since dropping it would silently
change the samples. Their order is sorted by file
name, then by path relative to the root: the first ``n`` are the samples, so a larger ``n`` only
appends. Sorting by file name first keeps the classes mixed when ImageNet validation images (whose
names are numbered in random class order) are arranged in class sub-folders.

Pre-processing matches torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` on PIL images:
the shorter side is resized to ``resize`` with antialiased bilinear interpolation (the longer side
to ``int(resize * long / short)``), then the centre ``crop`` × ``crop`` square is cut. Pixels are
RGB float32 in [0, 1]; normalisation belongs to the model wrapper. Object masks (from a mask
folder or from bounding boxes) go through the same geometry: see `attrflow.data.annotations`.

Sample ids are the image paths relative to the root (posix separators).

numpy and PIL are imported inside the loading functions: the workflow counts the images of a
folder (`list_images`) while it plans its jobs, and that must stay cheap.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from attrflow.data.annotations import Geometry
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


# Formats PIL reads that this loader does not take: a file in one of them is meant as a sample.
OTHER_IMAGE_EXTENSIONS = (
    ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif", ".jpe", ".jp2",
    ".heic", ".heif", ".avif",
)


def _near(a: str, b: str) -> bool:
    """Whether `a` is `b` with one character inserted, deleted, replaced, or two swapped."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [k for k in range(len(a)) if a[k] != b[k]]
        if len(diff) == 1:
            return True
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:k] + long[k + 1 :] == short for k in range(len(long)))


def looks_like_image(name: str) -> bool:
    """A non-image file name that is probably meant as an image: another image format PIL reads,
    an extension one keystroke from jpg/jpeg/png (``.jgp``, ``.pnng``, ``.jpeg2``), or an image
    extension followed by stray whitespace or a copy suffix (``a.jpg ``, ``a.png~``)."""
    if is_image_file(name):
        return False
    stem, ext = os.path.splitext(name)
    ext = ext.lower()
    if not stem or not ext:
        return False
    if ext in OTHER_IMAGE_EXTENSIONS:
        return True
    cleaned = ext.rstrip(" ~")
    if cleaned != ext and cleaned in IMAGE_EXTENSIONS:
        return True
    return any(_near(ext[1:], known[1:]) for known in IMAGE_EXTENSIONS) and len(ext) > 2


def non_image_files(root: str | os.PathLike, flat: bool) -> list[str]:
    """Visible files the image listing leaves out, relative to `root`, sorted: in a flat folder
    the files that are not images; with class sub-folders those files inside the sub-folders and
    every file directly in root (a sub-folder layout has no samples there)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file():
                if not flat or not is_image_file(entry.name):
                    found.append(entry.name)
            elif not flat and entry.is_dir():
                with os.scandir(entry.path) as inner:
                    found.extend(
                        f"{entry.name}/{e.name}"
                        for e in inner
                        if not e.name.startswith(".") and not is_image_file(e.name) and not e.is_dir()
                    )
    return sorted(found)


WNID = re.compile(r"n[0-9]{8}\Z")
IMAGENET_CLASS_COUNT = 1000


def imagenet_synsets() -> list[str]:
    """The 1000 WordNet ids of ImageNet-1k in the standard class-index order.

    Read from the list timm ships (``timm/data/_info/imagenet_synsets.txt``, the order every
    ImageNet-1k classifier in timm and torchvision uses). The file is located without importing
    timm, which would import torch: the config check calls this.
    """
    from importlib.util import find_spec

    spec = find_spec("timm")
    if spec is None or spec.origin is None:
        raise ImageFolderError("classes: imagenet needs the timm package (it ships the ImageNet class list)")
    path = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt"
    if not path.is_file():
        raise ImageFolderError(
            f"classes: imagenet: timm's ImageNet class list {path} is missing (timm >= 0.9 ships it)"
        )
    synsets = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(synsets) != IMAGENET_CLASS_COUNT or len(set(synsets)) != IMAGENET_CLASS_COUNT:
        raise ImageFolderError(f"{path} lists {len(synsets)} classes, expected {IMAGENET_CLASS_COUNT} distinct ones")
    return synsets


@dataclass(frozen=True)
class ClassIndex:
    """How class names (sub-folders or label names) map to label indices.

    `names` holds the name of every index of the label space ("" where an explicit mapping
    leaves an index unnamed). `exact`: the label space is exactly ``len(names)`` classes (sorted
    names, ImageNet); otherwise the labels are indices into a model's possibly larger space (an
    explicit mapping, integer labels), and a model needs more than ``max(index)`` classes.
    """

    names: list[str]
    index: dict[str, int]
    exact: bool
    rule: str  # how the indices were chosen, for error messages and the store's attributes

    def label_of(self, name: str, where: str) -> int:
        if name not in self.index:
            raise ImageFolderError(f"{where}: class {name!r} is not one of the {len(self.index)} classes ({self.rule})")
        return self.index[name]


def class_index(names: list[str], classes: str | dict[str, int] | None, where: str) -> ClassIndex:
    """The `ClassIndex` of class `names` (sub-folders or label names) under a ``classes`` setting."""
    if classes is None:
        ordered = sorted(set(names))
        return ClassIndex(ordered, {c: k for k, c in enumerate(ordered)}, True, "sorted names, indexed 0..k-1")
    if classes == "imagenet":
        synsets = imagenet_synsets()
        position = {c: k for k, c in enumerate(synsets)}
        unknown = sorted(set(names) - set(position))
        if unknown:
            raise ImageFolderError(
                f"{where}: {len(unknown)} of {len(set(names))} class names are not ImageNet-1k WordNet ids "
                f"(like n01440764), so classes: imagenet cannot index them: {_listing(unknown)}"
            )
        return ClassIndex(synsets, position, True, "ImageNet-1k class index")
    if isinstance(classes, dict):
        by_index: dict[int, str] = {}
        for name, k in classes.items():
            if not isinstance(k, int) or isinstance(k, bool) or k < 0:
                raise ImageFolderError(f"{where}: classes.{name} must be a non-negative integer index, got {k!r}")
            if k in by_index:
                raise ImageFolderError(f"{where}: classes maps both {by_index[k]!r} and {name!r} to {k}")
            by_index[k] = str(name)
        unknown = sorted(set(names) - set(map(str, classes)))
        if unknown:
            raise ImageFolderError(
                f"{where}: {len(unknown)} class name(s) have no index in classes: {_listing(unknown)}"
            )
        ordered = [by_index.get(k, "") for k in range(max(by_index) + 1)]
        return ClassIndex(ordered, {str(c): int(k) for c, k in classes.items()}, False, "the classes: mapping")
    raise ImageFolderError(f"{where}: classes must be 'imagenet' or a mapping name -> index, got {classes!r}")


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


def resolve_classes(
    root: str | os.PathLike,
    labels_file: str | os.PathLike | None = None,
    classes: str | dict[str, int] | None = None,
) -> ClassIndex:
    """The label space of an image folder: its sub-folders, or its labels file, under ``classes``."""
    if labels_file is not None:
        return read_labels_file(labels_file, classes).classes
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"image folder {root} does not exist or is not a directory")
    return class_index(class_folders(root), classes, str(root))


@dataclass(frozen=True)
class LabelsFile:
    """A parsed labels file: label index per key (filename and filename without extension)."""

    labels: dict[str, int]
    classes: ClassIndex
    path: Path

    @property
    def class_names(self) -> list[str]:
        return self.classes.names

    def label_of(self, relative: str) -> int:
        name = relative.rsplit("/", 1)[-1]
        for key in (name, os.path.splitext(name)[0]):
            if key in self.labels:
                return self.labels[key]
        raise ImageFolderError(f"image {relative!r} has no entry in the labels file {self.path}")


def read_labels_file(path: str | os.PathLike, classes: str | dict[str, int] | None = None) -> LabelsFile:
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
        if classes is not None:
            raise ImageFolderError(
                f"{path}: the labels are integer class indices already; classes: applies to names only"
            )
        numeric = {name: int(v) for name, v in raw.items()}
        if min(numeric.values()) < 0:
            bad = min(numeric, key=numeric.get)
            raise ImageFolderError(f"{path}: label of {bad!r} is negative ({numeric[bad]})")
        top = max(numeric.values())
        index = ClassIndex([str(k) for k in range(top + 1)], {str(k): k for k in range(top + 1)}, False,
                           "integer labels of the labels file")
    elif any(_is_int(v) for v in values):
        raise ImageFolderError(f"{path}: labels mix integers and names; use one or the other")
    else:
        index = class_index(sorted(values), classes, str(path))
        numeric = {name: index.index[v] for name, v in raw.items()}
    labels = dict(numeric)
    for name, label in numeric.items():  # also accept the name without its extension
        labels.setdefault(os.path.splitext(name)[0], label)
    return LabelsFile(labels, index, path)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def load_image(path: Path, resize: int, crop: int) -> np.ndarray:
    """(3, crop, crop) float32 in [0, 1]: torchvision's Resize(resize) + CenterCrop(crop) on PIL."""
    return load_image_with_geometry(path, resize, crop)[0]


def load_image_with_geometry(path: Path, resize: int, crop: int) -> tuple[np.ndarray, Geometry]:
    """The pixels of `load_image` and the geometry that made them (for masks and boxes)."""
    import numpy as np
    from PIL import Image

    from attrflow.data.annotations import Geometry

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            geometry = Geometry.of(*image.size, resize, crop)
            image = image.resize((geometry.new_width, geometry.new_height), Image.Resampling.BILINEAR)
    except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ImageFolderError(f"cannot read image {path}: {err}") from err
    top, left = geometry.top, geometry.left
    pixels = np.asarray(image, dtype=np.uint8)[top : top + crop, left : left + crop]
    return pixels.transpose(2, 0, 1).astype(np.float32) / 255.0, geometry


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
    classes: str | dict[str, int] | None = None,
    masks_root: str | os.PathLike | None = None,
    boxes: dict[str, Any] | None = None,
) -> tuple[SampleSet, list[str]]:
    """Images ``start .. n-1`` of `root` (to the end when `n` is None) and the class names (the
    name of every label index).

    `classes` chooses the label indices (see the module docstring). `class_names` pins the
    class list of a sub-folder layout without ``classes`` (a train folder must use the
    evaluation folder's classes); a folder naming a class outside it is an error. `masks_root`
    or `boxes` give every sample an object mask (`attrflow.data.annotations`).
    """
    import numpy as np

    from attrflow.data.annotations import AnnotationError, Annotations
    from attrflow.data.sample_store import SampleSet

    _check_sizes(resize, crop)
    root = Path(root)
    labels = read_labels_file(labels_file, classes) if labels_file is not None else None
    files = list_images(root, flat=labels is not None)
    files = files[start:n]
    if labels is not None:
        names = labels.class_names
        targets = [labels.label_of(f) for f in files]
    else:
        if class_names is not None and classes is None:
            pinned = {c: k for k, c in enumerate(class_names)}
            index = ClassIndex(list(class_names), pinned, True, "the evaluation folder's classes")
        else:
            index = resolve_classes(root, None, classes)
        names = index.names
        targets = []
        for f in files:
            folder = f.split("/", 1)[0]
            if folder not in index.index:
                raise ImageFolderError(
                    f"{root / folder} is not one of the {len(index.index)} classes of the evaluation folder"
                )
            targets.append(index.index[folder])
    try:
        annotations = Annotations(None if masks_root is None else str(masks_root), boxes)
    except AnnotationError as err:
        raise ImageFolderError(str(err)) from None
    images = np.empty((len(files), 3, crop, crop), dtype=np.float32)
    masks = np.empty((len(files), crop, crop), dtype=bool) if annotations.provides_masks else None
    box_rows: list[list[float]] = []
    for k, f in enumerate(files):
        images[k], geometry = load_image_with_geometry(root / f, resize, crop)
        if masks is not None:
            try:
                masks[k], mapped = annotations.mask(f, geometry)
            except AnnotationError as err:
                raise ImageFolderError(str(err)) from None
            box_rows.extend([float(k), *b] for b in mapped)
    box_array = np.asarray(box_rows, dtype=np.float64).reshape(-1, 5) if boxes is not None else None
    return SampleSet(np.asarray(images), np.asarray(targets, dtype=np.int64), files, masks, box_array), names
