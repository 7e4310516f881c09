"""Per-pixel concept labels for Network Dissection (Bau et al., 2017), stored with the samples.

Network Dissection scores how well each unit's high activations overlap the pixels of a named
concept. It needs, for every image, which pixels show which concept, several concepts per image
and per pixel: a pixel can be "red", "striped" and "background" at once. The layout follows the
Broden dataset of Bau et al., 2017, which labels each pixel once per *category* (colour, object,
part, material, texture, scene):

* ``labels`` (N, G, H, W) uint16: for each of the G categories, the concept a pixel shows, as
  ``1 + its index`` in the vocabulary, or 0 for "no concept of this category here";
* ``names`` (K,) and ``categories`` (K,): the vocabulary, concept ``k`` is ``names[k]`` of the
  category ``categories[k]``; ``category_order`` (G,) says which category each label plane holds
  (a category may have several planes where its annotations overlap, as Broden's do). A value
  means the same concept in every plane.

In the sample store the labels are the array ``concept_labels``; the vocabulary is the arrays
``concept_names``, ``concept_categories`` and ``concept_category_order`` (not per sample).

The embedded shapes (`attrflow.data.synthetic_shapes`) know what they drew, so their concepts
cost nothing to annotate and dissection runs end to end without network access. Four categories:

* ``region``: ``object`` (the shape's pixels) or ``background`` (the rest);
* ``shape``: the shape's name, on the object's pixels;
* ``colour``: the nearest of the eleven basic colour terms Broden uses (black, blue, brown, green,
  grey, orange, pink, purple, red, white, yellow) to the object's colour on object pixels and to
  the background's mean colour (midway between its two texture colours) on background pixels;
* ``texture``: the background's texture (``noise``, ``stripes``, ``checker``), on background pixels.

The generator's random draws for sample i depend only on (seed, split, i), so the concepts are
re-derived here from the same draws (the generator itself is untouched) and the object masks it
rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from attrflow.data.sample_store import SampleSet

# Broden's colour vocabulary (Bau et al., 2017), with sRGB prototypes in [0, 1].
COLOUR_PROTOTYPES = {
    "black": (0.0, 0.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "brown": (0.55, 0.27, 0.07),
    "green": (0.0, 0.7, 0.0),
    "grey": (0.5, 0.5, 0.5),
    "orange": (1.0, 0.55, 0.0),
    "pink": (1.0, 0.6, 0.75),
    "purple": (0.5, 0.0, 0.5),
    "red": (1.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
REGIONS = ("object", "background")
SHAPE_CATEGORIES = ("region", "shape", "colour", "texture")


@dataclass
class ConceptLabels:
    """Concept labels of N samples, Broden-style (module doc)."""

    labels: np.ndarray  # (N, G, H, W) uint16, 0 = no concept of that category
    names: list[str]
    categories: list[str]
    category_order: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.uint16)
        self.names = [str(v) for v in self.names]
        self.categories = [str(v) for v in self.categories]
        self.category_order = [str(v) for v in self.category_order]
        if self.labels.ndim != 4 or self.labels.shape[1] != len(self.category_order):
            raise ValueError(
                f"concept labels must be (N, {len(self.category_order)} categories, H, W), got {self.labels.shape}"
            )
        if len(self.names) != len(self.categories):
            raise ValueError(f"{len(self.names)} concept names but {len(self.categories)} categories")
        if self.labels.size and int(self.labels.max()) > len(self.names):
            raise ValueError(f"a concept label exceeds the vocabulary of {len(self.names)} concepts")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def concepts(self) -> list[str]:
        """Qualified names, ``category:name``, in vocabulary order."""
        return [f"{c}:{n}" for c, n in zip(self.categories, self.names)]

    def masks(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """(n, K, H, W) bool: which pixels of samples ``rows`` show each concept (in any plane:
        a category may have several planes, e.g. Broden's overlapping object annotations)."""
        labels = self.labels[rows]
        out = np.zeros((labels.shape[0], len(self.names), *labels.shape[2:]), dtype=bool)
        for plane in range(labels.shape[1]):
            for k in np.unique(labels[:, plane]):
                if k:
                    out[:, int(k) - 1] |= labels[:, plane] == k
        return out

    def select(self, rows: slice) -> ConceptLabels:
        return ConceptLabels(self.labels[rows], self.names, self.categories, self.category_order)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "concept_labels": self.labels,
            "concept_names": np.asarray(self.names, dtype=str),
            "concept_categories": np.asarray(self.categories, dtype=str),
            "concept_category_order": np.asarray(self.category_order, dtype=str),
        }

    def fingerprint_bytes(self) -> bytes:
        vocabulary = "\0".join([*self.concepts, "|", *self.category_order]).encode()
        return self.labels.tobytes() + vocabulary


VOCABULARY_ARRAYS = ("concept_names", "concept_categories", "concept_category_order")


def read_concepts(group, rows: slice) -> ConceptLabels | None:
    """The concept labels of samples ``rows`` of a store group, or None when it has none."""
    if "concept_labels" not in group:
        return None
    names, categories, order = (group[key][:].tolist() for key in VOCABULARY_ARRAYS)
    return ConceptLabels(group["concept_labels"][rows], names, categories, order)


def colour_name(rgb: np.ndarray) -> np.ndarray:
    """Index into `COLOUR_PROTOTYPES` of the nearest prototype (Euclidean in RGB), per row."""
    prototypes = np.asarray(list(COLOUR_PROTOTYPES.values()))
    distance = ((np.asarray(rgb, dtype=np.float64)[:, None, :] - prototypes[None]) ** 2).sum(-1)
    return distance.argmin(axis=1)


def shapes_vocabulary(classes: int) -> tuple[list[str], list[str]]:
    """(names, categories) of the embedded data's concepts for its first ``classes`` shapes."""
    from attrflow.data.synthetic_shapes import BACKGROUND_KINDS, class_names

    entries = [("region", r) for r in REGIONS]
    entries += [("shape", s) for s in class_names(classes)]
    entries += [("colour", c) for c in COLOUR_PROTOTYPES]
    entries += [("texture", t) for t in BACKGROUND_KINDS]
    return [n for _, n in entries], [c for c, _ in entries]


def shape_concepts(
    split: str, masks: np.ndarray, *, seed: int, size: int, classes: int, start: int = 0
) -> ConceptLabels:
    """Concept labels of samples start..start+len(masks)-1 of the embedded shapes' ``split``.

    ``masks`` are those samples' object masks as the generator rendered them; the colours and
    textures come from re-drawing each sample's parameters from its own random stream.
    """
    from attrflow.data.synthetic_shapes import BACKGROUND_KINDS, SPLIT_CODES, SceneParameters

    masks = np.asarray(masks, dtype=bool)
    count = masks.shape[0]
    names, categories = shapes_vocabulary(classes)
    index = {(c, n): k + 1 for k, (n, c) in enumerate(zip(names, categories))}
    params = SceneParameters(count)
    for k in range(count):
        params.draw(k, np.random.default_rng([seed, SPLIT_CODES[split], start + k]), size)
    colours = list(COLOUR_PROTOTYPES)
    object_colour = colour_name(params.object_colour)
    background_colour = colour_name((params.colour_a + params.colour_b) / 2)
    labels = np.zeros((count, len(SHAPE_CATEGORIES), size, size), dtype=np.uint16)
    region, shape, colour, texture = range(len(SHAPE_CATEGORIES))
    for k in range(count):
        obj = masks[k]
        shape_name = class_names_cycle(start + k, classes)
        labels[k, region] = np.where(obj, index["region", "object"], index["region", "background"])
        labels[k, shape] = np.where(obj, index["shape", shape_name], 0)
        labels[k, colour] = np.where(
            obj, index["colour", colours[object_colour[k]]], index["colour", colours[background_colour[k]]]
        )
        texture_name = BACKGROUND_KINDS[int(params.background_kind[k])]
        labels[k, texture] = np.where(obj, 0, index["texture", texture_name])
    return ConceptLabels(labels, names, categories, list(SHAPE_CATEGORIES))


def class_names_cycle(i: int, classes: int) -> str:
    """The shape of sample i: labels cycle through the classes (``label = i % classes``)."""
    from attrflow.data.synthetic_shapes import class_names

    return class_names(classes)[i % classes]


def with_concepts(samples: SampleSet, concepts: ConceptLabels | None) -> SampleSet:
    """The same samples with concept labels attached (checked against their count and size)."""
    from dataclasses import replace

    return replace(samples, concepts=concepts)
