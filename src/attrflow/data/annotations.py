"""Object masks for your own images: from a mask folder or from bounding boxes.

An ``image_folder`` entry takes one of

* ``masks_root`` — a folder with one mask per image at the same relative path (the same file
  name, or the same name with another image extension, e.g. ``n01440764/a.png`` for
  ``n01440764/a.JPEG``). Any image mode; a pixel is object where any colour channel is nonzero
  (an alpha channel is ignored; a palette image is read as its indices, so index 0 is
  background, as in PASCAL VOC's segmentation masks);
* ``boxes: {format: imagenet_xml, root: DIR}`` — ImageNet's PASCAL-VOC-style XML annotations,
  ``DIR/<relative path with .xml>`` or ``DIR/<file name with .xml>`` (the ILSVRC validation
  annotations are one flat folder). Coordinates are VOC's 1-based inclusive pixel indices, so a
  box covers the continuous span ``[xmin - 1, xmax) × [ymin - 1, ymax)``; the ``<size>`` recorded
  in the file must match the image's;
* ``boxes: {format: coco, file: FILE}`` — a COCO-style JSON (``images`` with ``id`` and
  ``file_name``, the relative path or the bare file name; ``annotations`` with ``image_id`` and
  ``bbox: [x, y, width, height]`` in continuous pixel coordinates).

Every box of an image counts (all objects; ImageNet's validation boxes all belong to the image's
class). An image without a mask file or without any box is an error naming it: a missing
annotation would otherwise score as "nothing to find".

Masks and boxes go through exactly the image's geometry (`Geometry`: the shorter side resized to
``resize``, the centre ``crop`` square cut). A mask is resized with nearest-neighbour sampling; a
box is mapped to input coordinates (scaled, shifted by the crop, clipped to the crop) and becomes
the mask of the pixels whose centres lie inside it. The mapped boxes are kept as the sample set's
``boxes`` array: rows ``[sample, x0, y0, x1, y1]`` in input pixels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MASK_EXTENSIONS = (".png", ".PNG", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jpg", ".jpeg", ".JPEG")
BOX_FORMATS = ("imagenet_xml", "coco")


class AnnotationError(ValueError):
    """A mask or box file is missing or unusable; the message names it."""


@dataclass(frozen=True)
class Geometry:
    """Where an image's pixels go: resized to (new_width, new_height), then the `crop` square
    at (left, top) is cut — torchvision's Resize(resize) + CenterCrop(crop)."""

    width: int
    height: int
    new_width: int
    new_height: int
    left: int
    top: int
    crop: int

    @classmethod
    def of(cls, width: int, height: int, resize: int, crop: int) -> Geometry:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize, int(resize * long / short)
        new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
        top = int(round((new_height - crop) / 2.0))
        left = int(round((new_width - crop) / 2.0))
        return cls(width, height, new_width, new_height, left, top, crop)

    def box_to_input(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box (x0, y0, x1, y1) in original pixel coordinates, in the input's, clipped to it."""
        sx, sy = self.new_width / self.width, self.new_height / self.height
        x0, y0, x1, y1 = box
        clip = lambda v: min(max(v, 0.0), float(self.crop))  # noqa: E731
        return (
            clip(x0 * sx - self.left),
            clip(y0 * sy - self.top),
            clip(x1 * sx - self.left),
            clip(y1 * sy - self.top),
        )

    def boxes_mask(self, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
        """(crop, crop) bool: the pixels whose centre lies inside any of the input-space boxes."""
        import numpy as np

        centres = np.arange(self.crop) + 0.5
        mask = np.zeros((self.crop, self.crop), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            rows = (centres >= y0) & (centres < y1)
            cols = (centres >= x0) & (centres < x1)
            mask |= rows[:, None] & cols[None, :]
        return mask


def mask_path(masks_root: str | os.PathLike, relative: str) -> Path:
    """The mask file of image `relative`: the same relative path, else the same path with another
    image extension."""
    root = Path(masks_root)
    same = root / relative
    if same.is_file():
        return same
    stem = os.path.splitext(relative)[0]
    for ext in MASK_EXTENSIONS:
        candidate = root / (stem + ext)
        if candidate.is_file():
            return candidate
    raise AnnotationError(f"no mask for image {relative!r}: looked for {same} and {stem}.png etc. in {root}")


def load_mask(path: Path, geometry: Geometry) -> np.ndarray:
    """(crop, crop) bool: nonzero pixels of the mask file, through the image's geometry."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            size, mode = image.size, image.mode
            values = np.asarray(image)
    except OSError as err:
        raise AnnotationError(f"cannot read mask {path}: {err}") from err
    if size != (geometry.width, geometry.height):
        raise AnnotationError(f"mask {path} is {size[0]}×{size[1]} but its image is {geometry.width}×{geometry.height}")
    if values.ndim == 3:
        colour = values[..., :-1] if mode in ("RGBA", "LA", "PA", "RGBa", "La") else values
        values = colour.any(axis=-1)
    binary = Image.fromarray((values != 0).astype(np.uint8) * 255)
    resized = binary.resize((geometry.new_width, geometry.new_height), Image.Resampling.NEAREST)
    pixels = np.asarray(resized)[
        geometry.top : geometry.top + geometry.crop, geometry.left : geometry.left + geometry.crop
    ]
    return pixels > 0


def xml_path(xml_root: str | os.PathLike, relative: str) -> Path:
    """The ImageNet XML annotation of image `relative`: by relative path, else by file name."""
    root = Path(xml_root)
    stem = os.path.splitext(relative)[0]
    for candidate in (root / f"{stem}.xml", root / f"{os.path.basename(stem)}.xml"):
        if candidate.is_file():
            return candidate
    raise AnnotationError(
        f"no box annotation for image {relative!r}: looked for {root / (stem + '.xml')} and "
        f"{root / (os.path.basename(stem) + '.xml')}"
    )


def read_imagenet_xml(path: Path) -> tuple[tuple[int, int], list[tuple[float, float, float, float]]]:
    """((width, height), boxes as continuous (x0, y0, x1, y1)) of a PASCAL-VOC-style XML file."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        boxes = []
        for obj in root.iter("object"):
            b = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise AnnotationError(
            f"{path} is not a PASCAL-VOC-style annotation (<size><width>, <height>; <object><bndbox> "
            f"with xmin, ymin, xmax, ymax): {err}"
        ) from None
    for box in boxes:
        if not (box[0] < box[2] and box[1] < box[3]):
            raise AnnotationError(f"{path}: box {box} is empty (xmax must exceed xmin, ymax ymin)")
    return (width, height), boxes


class CocoBoxes:
    """The boxes of a COCO-style JSON file, looked up by relative path or bare file name."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
            images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
            sizes = {int(im["id"]): (im.get("width"), im.get("height")) for im in data["images"]}
            boxes: dict[int, list[tuple[float, float, float, float]]] = {k: [] for k in images}
            for ann in data.get("annotations", []):
                x, y, w, h = (float(v) for v in ann["bbox"])
                if int(ann["image_id"]) not in boxes:
                    raise AnnotationError(
                        f"{self.path}: annotation {ann.get('id')} names unknown image_id {ann['image_id']}"
                    )
                boxes[int(ann["image_id"])].append((x, y, x + w, y + h))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if isinstance(err, AnnotationError):
                raise
            raise AnnotationError(
                f"{self.path} is not a COCO-style JSON (images: id, file_name; annotations: image_id, "
                f"bbox [x, y, width, height]): {type(err).__name__}: {err}"
            ) from None
        self._by_name: dict[str, int] = {}
        for image_id, name in images.items():
            self._by_name[name] = image_id
            self._by_name.setdefault(os.path.basename(name), image_id)
        self._boxes, self._sizes = boxes, sizes

    def boxes_of(self, relative: str) -> tuple[tuple[Any, Any], list[tuple[float, float, float, float]]]:
        image_id = self._by_name.get(relative, self._by_name.get(os.path.basename(relative)))
        if image_id is None:
            raise AnnotationError(f"image {relative!r} is not listed in {self.path}")
        return self._sizes[image_id], self._boxes[image_id]


_COCO_CACHE: dict[tuple[str, int, int], CocoBoxes] = {}


def _coco_boxes(path: str | os.PathLike) -> CocoBoxes:
    """A parsed COCO file, parsed once per content version (path, size, mtime): planning asks for
    it once per shard, and a full COCO annotation file takes a second to parse."""
    try:
        stat = os.stat(path)
    except OSError:
        raise AnnotationError(f"COCO box file {path} does not exist") from None
    key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _COCO_CACHE:
        if len(_COCO_CACHE) >= 4:  # a run reads one or two such files: drop stale versions
            _COCO_CACHE.clear()
        _COCO_CACHE[key] = CocoBoxes(path)
    return _COCO_CACHE[key]


class Annotations:
    """The mask source of an image-folder entry: a mask folder, boxes, or none."""

    def __init__(self, masks_root: str | None = None, boxes: dict[str, Any] | None = None) -> None:
        if masks_root is not None and boxes is not None:
            raise AnnotationError("give either masks_root or boxes, not both")
        self.masks_root = masks_root
        self.boxes = boxes
        self._coco: CocoBoxes | None = None
        if boxes is not None:
            check_boxes_spec(boxes)
            if boxes["format"] == "coco":
                self._coco = _coco_boxes(boxes["file"])

    @property
    def provides_masks(self) -> bool:
        return self.masks_root is not None or self.boxes is not None

    def files_for(self, relative: str) -> list[Path]:
        """The annotation files sample `relative` is read from (for the content fingerprint)."""
        if self.masks_root is not None:
            return [mask_path(self.masks_root, relative)]
        if self.boxes is not None and self.boxes["format"] == "imagenet_xml":
            return [xml_path(self.boxes["root"], relative)]
        return []

    def shared_files(self) -> list[Path]:
        """Annotation files every sample reads (a COCO JSON)."""
        return [Path(self.boxes["file"])] if self.boxes is not None and self.boxes["format"] == "coco" else []

    def mask(self, relative: str, geometry: Geometry) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
        """(mask, boxes in input coordinates) of image `relative` (no boxes for a mask folder)."""
        if self.masks_root is not None:
            return load_mask(mask_path(self.masks_root, relative), geometry), []
        if self.boxes["format"] == "imagenet_xml":
            path = xml_path(self.boxes["root"], relative)
            size, boxes = read_imagenet_xml(path)
        else:
            path = self._coco.path
            size, boxes = self._coco.boxes_of(relative)
        known = tuple(size) if all(v is not None for v in size) else None
        if known is not None and tuple(int(v) for v in known) != (geometry.width, geometry.height):
            raise AnnotationError(
                f"{path} gives image {relative!r} the size {known[0]}×{known[1]}, but it is "
                f"{geometry.width}×{geometry.height}"
            )
        if not boxes:
            raise AnnotationError(f"{path} has no box for image {relative!r}")
        mapped = [geometry.box_to_input(b) for b in boxes]
        return geometry.boxes_mask(mapped), mapped

    def describe(self) -> dict[str, Any] | None:
        if self.masks_root is not None:
            return {
                "source": "mask folder",
                "root": str(self.masks_root),
                "object": "nonzero pixels",
                "resampling": "nearest",
            }
        if self.boxes is not None:
            convention = (
                "PASCAL VOC 1-based inclusive pixel indices"
                if self.boxes["format"] == "imagenet_xml"
                else "COCO [x, y, width, height], continuous pixels"
            )
            return {
                "source": "bounding boxes",
                **self.boxes,
                "convention": convention,
                "object": "pixel centres inside any box",
                "boxes_array": "[sample, x0, y0, x1, y1] in input pixels",
            }
        return None


def check_boxes_spec(boxes: Any) -> None:
    if not isinstance(boxes, dict) or boxes.get("format") not in BOX_FORMATS:
        raise AnnotationError(
            f"boxes must be {{format: imagenet_xml, root: DIR}} or {{format: coco, file: FILE}}, got {boxes!r}"
        )
    needed = "root" if boxes["format"] == "imagenet_xml" else "file"
    extra = sorted(set(boxes) - {"format", needed})
    if not isinstance(boxes.get(needed), str) or extra:
        raise AnnotationError(
            f"boxes of format {boxes['format']} take exactly the key {needed!r} (a path), got {boxes!r}"
        )
