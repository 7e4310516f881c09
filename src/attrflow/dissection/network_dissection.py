"""Network Dissection (Bau et al., 2017), as Khakzar et al., 2021 use it to label units.

For unit k of a layer (a channel of its output) with activation maps S_k(x):

1. **Threshold.** T_k is the top-``quantile`` level of the unit's activations over every spatial
   position of every image of the dataset: P(S_k > T_k) = quantile (0.005 in both papers). With
   V values, m = floor(quantile · V) of them may lie above it: T_k is the (m + 1)-th largest
   value, so at most a ``quantile`` share exceeds it and ties at T_k stay in the mask.
2. **Mask.** S_k is upsampled bilinearly to the input size (S'_k) and M_k(x) = S'_k(x) ≥ T_k.
3. **IoU** with the pixels L_c(x) of concept c, summed over the images that contain c:
   IoU_{k,c} = Σ_x |M_k(x) ∩ L_c(x)| / Σ_x |M_k(x) ∪ L_c(x)|.
4. **Detector.** Each unit is labelled with its best concept (highest IoU); it is a detector of
   that concept when that IoU exceeds 0.04. The "network-dissection counts" are, per layer and
   concept, the units that detect it.

Memory stays bounded for any dataset: the thresholds come from a running top-(m + 1) buffer per
unit (exact, unlike the quantile sketch of the authors' release), and the IoU sums accumulate
batch by batch, in chunks of units so that the upsampled masks of one chunk stay below
`MASK_ELEMENTS`. This needs two passes over the data (thresholds first), which costs two
forward passes instead of holding every activation map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_QUANTILE = 0.005
DEFAULT_IOU_THRESHOLD = 0.04
# Elements of one chunk of upsampled unit masks (b × units × H × W); ~128 MiB as float32.
MASK_ELEMENTS = 1 << 25


def kept_above(total_values: int, quantile: float) -> int:
    """m = floor(quantile · V): how many of V values may lie above the threshold."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    if total_values < 1:
        raise ValueError("a threshold needs at least one activation value")
    return min(int(math.floor(quantile * total_values + 1e-9)), total_values - 1)


class ThresholdAccumulator:
    """Per-unit T_k over batches of activations (b, K, h, w), exact, in O(K · (m + 1)) memory."""

    def __init__(self, units: int, total_values: int, quantile: float = DEFAULT_QUANTILE) -> None:
        self.units = units
        self.total_values = total_values
        self.keep = kept_above(total_values, quantile) + 1
        self.buffer: torch.Tensor | None = None
        self.seen = 0

    def add(self, activations: torch.Tensor) -> None:
        if activations.dim() != 4 or activations.shape[1] != self.units:
            raise ValueError(f"activations must be (b, {self.units}, h, w), got {tuple(activations.shape)}")
        values = activations.detach().transpose(0, 1).reshape(self.units, -1).double()
        self.seen += values.shape[1]
        if self.buffer is not None:
            values = torch.cat([self.buffer.to(values.device), values], dim=1)
        self.buffer = values.topk(min(self.keep, values.shape[1]), dim=1).values

    def thresholds(self) -> torch.Tensor:
        """(K,) float64 T_k: the (m + 1)-th largest activation of each unit."""
        if self.seen != self.total_values or self.buffer is None:
            raise ValueError(f"saw {self.seen} activation values per unit, expected {self.total_values}")
        return self.buffer[:, self.keep - 1].cpu()


def unit_thresholds(activations: torch.Tensor, quantile: float = DEFAULT_QUANTILE) -> torch.Tensor:
    """T_k of activations (N, K, h, w) held at once (the accumulator in one batch)."""
    n, k, h, w = activations.shape
    accumulator = ThresholdAccumulator(k, n * h * w, quantile)
    accumulator.add(activations)
    return accumulator.thresholds()


def unit_masks(activations: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M_k = bilinear upsampling of S_k to ``size`` (align_corners False), ≥ T_k: (b, K, H, W) bool."""
    upsampled = F.interpolate(activations.double(), size=size, mode="bilinear", align_corners=False)
    return upsampled >= thresholds.to(upsampled).view(1, -1, 1, 1)


class IoUAccumulator:
    """Σ |M_k ∩ L_c| and Σ |M_k ∪ L_c| over the images containing c, batch by batch, on
    ``device`` (where the activations are: a GPU keeps the upsampling and sums there)."""

    def __init__(self, thresholds: torch.Tensor, concepts: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.thresholds = thresholds.double().to(self.device)
        units = self.thresholds.shape[0]
        self.intersection = torch.zeros(units, concepts, dtype=torch.float64, device=self.device)
        self.union = torch.zeros(units, concepts, dtype=torch.float64, device=self.device)
        self.images_with = torch.zeros(concepts, dtype=torch.float64, device=self.device)

    def add(self, activations: torch.Tensor, concept_masks: torch.Tensor) -> None:
        """activations (b, K, h, w); concept_masks (b, C, H, W) bool at the input size."""
        b, units = activations.shape[:2]
        if concept_masks.shape[:2] != (b, self.intersection.shape[1]):
            raise ValueError(
                f"concept masks {tuple(concept_masks.shape)} do not match {b} images and "
                f"{self.intersection.shape[1]} concepts"
            )
        size = tuple(concept_masks.shape[2:])
        labels = concept_masks.detach().to(self.device).flatten(2).double()  # (b, C, P)
        present = (labels.sum(dim=2) > 0).double()  # (b, C)
        label_area = labels.sum(dim=2)  # (b, C), zero where absent
        self.images_with += present.sum(dim=0)
        activations = activations.detach().to(self.device)
        pixels = size[0] * size[1]
        step = max(1, MASK_ELEMENTS // max(1, b * pixels))
        for lo in range(0, units, step):
            hi = min(units, lo + step)
            masks = unit_masks(activations[:, lo:hi], self.thresholds[lo:hi], size).flatten(2).double()
            inter = torch.einsum("bkp,bcp->kc", masks, labels)
            mask_area = masks.sum(dim=2)  # (b, k)
            self.intersection[lo:hi] += inter
            self.union[lo:hi] += mask_area.T @ present + label_area.sum(dim=0)[None] - inter

    def add_labels(self, activations: torch.Tensor, labels: torch.Tensor) -> None:
        """The same sums from label planes (b, G, H, W) (`attrflow.data.concepts`: value c + 1 marks
        concept c, 0 none), without materialising one mask per concept: a vocabulary of a thousand
        concepts (Broden) costs O(units · pixels) per batch, not O(units · concepts · pixels)."""
        b, units = activations.shape[:2]
        concepts = self.intersection.shape[1]
        labels = distinct_planes(labels.detach().to(self.device).long())  # (b, G, H, W)
        size = tuple(labels.shape[2:])
        pixels = size[0] * size[1]
        if labels.shape[0] != b or (labels.numel() and int(labels.max()) > concepts):
            raise ValueError(f"label planes {tuple(labels.shape)} do not match {b} images and {concepts} concepts")
        owner = torch.arange(b, device=self.device).view(b, 1, 1, 1).expand_as(labels)
        label_area = torch.bincount((owner * (concepts + 1) + labels).reshape(-1), minlength=b * (concepts + 1))
        label_area = label_area.view(b, concepts + 1)[:, 1:].double()
        present = (label_area > 0).double()
        self.images_with += present.sum(dim=0)
        planes = labels.transpose(0, 1).reshape(labels.shape[1], b * pixels)  # (G, b·P), image-major
        activations = activations.detach().to(self.device)
        step = max(1, MASK_ELEMENTS // max(1, b * pixels))
        for lo in range(0, units, step):
            hi = min(units, lo + step)
            masks = unit_masks(activations[:, lo:hi], self.thresholds[lo:hi], size)  # (b, k, H, W)
            flat = masks.transpose(0, 1).reshape(hi - lo, b * pixels).double()
            inter = torch.zeros(hi - lo, concepts + 1, dtype=torch.float64, device=self.device)
            for plane in planes:
                inter.index_add_(1, plane, flat)
            inter = inter[:, 1:]
            mask_area = masks.flatten(2).sum(dim=2).double()  # (b, k)
            self.intersection[lo:hi] += inter
            self.union[lo:hi] += mask_area.T @ present + label_area.sum(dim=0)[None] - inter

    def iou(self) -> torch.Tensor:
        """(K, C) IoU_{k,c} on the CPU; NaN for a concept no image contains."""
        iou = (self.intersection / self.union.clamp(min=1)).cpu()
        iou[:, self.images_with.cpu() == 0] = float("nan")
        return iou


def distinct_planes(labels: torch.Tensor) -> torch.Tensor:
    """Label planes (b, G, H, W) with a concept that an earlier plane already gives a pixel
    cleared there, so each (pixel, concept) counts once however many planes repeat it."""
    out = labels.clone()
    for g in range(1, labels.shape[1]):
        repeated = (labels[:, :g] == labels[:, g : g + 1]).any(dim=1) & (labels[:, g] > 0)
        out[:, g][repeated] = 0
    return out


@dataclass
class Dissection:
    """Network Dissection of one layer: thresholds, IoU table and each unit's label."""

    concepts: list[str]
    categories: list[str]
    thresholds: np.ndarray  # (K,)
    iou: np.ndarray  # (K, C), NaN for concepts absent from the data
    intersection: np.ndarray  # (K, C) pixel counts
    union: np.ndarray  # (K, C)
    images_with: np.ndarray  # (C,) images containing each concept
    iou_threshold: float = DEFAULT_IOU_THRESHOLD

    @property
    def best_concept(self) -> np.ndarray:
        """(K,) index of each unit's highest-IoU concept (-1 where every IoU is NaN)."""
        filled = np.where(np.isnan(self.iou), -np.inf, self.iou)
        best = filled.argmax(axis=1)
        return np.where(np.isfinite(filled.max(axis=1)), best, -1)

    @property
    def best_iou(self) -> np.ndarray:
        best = self.best_concept
        return np.array([self.iou[k, c] if c >= 0 else np.nan for k, c in enumerate(best)])

    @property
    def is_detector(self) -> np.ndarray:
        """(K,) whether the unit's best IoU exceeds the detector threshold."""
        return np.nan_to_num(self.best_iou, nan=-1.0) > self.iou_threshold

    def detector_counts(self) -> dict[str, int]:
        """Units detecting each concept (each unit counts for its best concept only)."""
        counts = dict.fromkeys(self.concepts, 0)
        for unit in np.flatnonzero(self.is_detector):
            counts[self.concepts[int(self.best_concept[unit])]] += 1
        return counts

    def unit_labels(self) -> list[str | None]:
        """Each unit's concept when it is a detector, else None."""
        best, detector = self.best_concept, self.is_detector
        return [self.concepts[int(c)] if d else None for c, d in zip(best, detector)]


def dissect(
    activations: torch.Tensor,
    concept_masks: torch.Tensor,
    concepts: list[str],
    categories: list[str] | None = None,
    *,
    quantile: float = DEFAULT_QUANTILE,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> Dissection:
    """Dissect one layer from activations (N, K, h, w) and concept masks (N, C, H, W) held at once."""
    thresholds = unit_thresholds(activations, quantile)
    accumulator = IoUAccumulator(thresholds, len(concepts))
    accumulator.add(activations, concept_masks)
    return finish(accumulator, concepts, categories, iou_threshold)


def finish(
    accumulator: IoUAccumulator, concepts: list[str], categories: list[str] | None, iou_threshold: float
) -> Dissection:
    return Dissection(
        concepts=list(concepts),
        categories=list(categories) if categories is not None else [c.split(":", 1)[0] for c in concepts],
        thresholds=accumulator.thresholds.cpu().numpy(),
        iou=accumulator.iou().numpy(),
        intersection=accumulator.intersection.cpu().numpy(),
        union=accumulator.union.cpu().numpy(),
        images_with=accumulator.images_with.cpu().numpy(),
        iou_threshold=float(iou_threshold),
    )
