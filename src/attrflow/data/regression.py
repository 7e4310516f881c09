"""An embedded regression task: severity scenes, after BrixIA's chest X-ray severity score.

Khakzar et al. (2021) explain a model that predicts BrixIA's total severity of a chest X-ray
(Signoroni et al., 2021): each lung is split into three regions, each region gets a score 0–3, and
the label is the sum over the six regions (0–18); the severity map of an image gives every pixel
its region's score, and the Pearson correlation of an attribution with that map says how well
the attribution follows the severity the model implicitly learnt.

The embedded analogue, generated from a seed without network access: a 64×64 image is split into
a grid of 3 rows × 2 columns, six *zones* (the lungs' three regions each). Each zone draws a
score s ∈ {0, 1, 2, 3} uniformly and shows s *lesions* — small bright discs of random size and
colour at random non-overlapping positions inside the zone — on a textured background (smooth
noise between two colours plus low-frequency colour noise, as the classification shapes use).
The label is the total score Σ s (an integer 0–18, stored in ``labels``), and each sample carries

* ``severity`` (H, W): every pixel's zone score (BrixIA's severity map);
* ``masks`` (H, W): the lesion pixels (for localisation metrics);
* ``boxes``: one box per lesion, ``[row, x0, y0, x1, y1]`` in input pixels (for box IoU).

A model that predicts the total must count lesions in every zone, so an attribution that
follows the severity map is one that found every lesion — the property Inverse IBA claims.

Sample ``i`` depends only on ``(seed, split, i, size)`` (``numpy.random.default_rng([seed,
split_code, i, 18])``, a stream apart from the shapes'), so a larger ``n`` only appends samples.
"""

from __future__ import annotations

import numpy as np

from attrflow.data.sample_store import SampleSet

ZONE_ROWS, ZONE_COLUMNS = 3, 2
MAX_ZONE_SCORE = 3
MAX_TOTAL = ZONE_ROWS * ZONE_COLUMNS * MAX_ZONE_SCORE  # 18, as BrixIA's
SPLIT_CODES = {"train": 0, "test": 1}
STREAM = 18  # keeps these scenes' random streams apart from the classification shapes'
LESION_RADIUS = (0.04, 0.06)  # fraction of the image side: 2.6–3.8 px at 64 (fits a slot, below)
LESION_CONTRAST = 0.5  # RGB distance of a lesion's colour from both background colours
BACKGROUND_CONTRAST = (0.15, 0.4)
NOISE_GRID = 6
COLOUR_NOISE = 0.08
MAX_DRAWS = 1000
MIN_SIZE = 48  # three lesions, 2 px apart, must fit in a zone of a sixth of the image


def _upsampling(size: int, grid: int) -> np.ndarray:
    """(size, grid) linear interpolation weights from control points to pixel centres."""
    position = (np.arange(size) + 0.5) / size * (grid - 1)
    low = np.clip(np.floor(position).astype(int), 0, grid - 2)
    frac = position - low
    weights = np.zeros((size, grid))
    weights[np.arange(size), low] = 1.0 - frac
    weights[np.arange(size), low + 1] = frac
    return weights


def zone_bounds(size: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) pixel bounds of the six zones, row-major."""
    rows = np.linspace(0, size, ZONE_ROWS + 1).round().astype(int)
    cols = np.linspace(0, size, ZONE_COLUMNS + 1).round().astype(int)
    return [
        (int(rows[r]), int(rows[r + 1]), int(cols[c]), int(cols[c + 1]))
        for r in range(ZONE_ROWS) for c in range(ZONE_COLUMNS)
    ]


def _scene(rng: np.random.Generator, size: int, zones: list[tuple[int, int, int, int]]):
    """One image (3, H, W), its lesion mask, severity map, total score and lesion boxes."""
    for _ in range(MAX_DRAWS):
        colour_a, colour_b = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
        if BACKGROUND_CONTRAST[0] <= np.linalg.norm(colour_a - colour_b) <= BACKGROUND_CONTRAST[1]:
            break
    up = _upsampling(size, NOISE_GRID)
    texture = up @ rng.uniform(0.0, 1.0, (NOISE_GRID, NOISE_GRID)) @ up.T
    colour_noise = up @ rng.uniform(-1.0, 1.0, (3, NOISE_GRID, NOISE_GRID)) @ up.T
    image = colour_a[:, None, None] + (colour_b - colour_a)[:, None, None] * texture + COLOUR_NOISE * colour_noise
    scores = rng.integers(0, MAX_ZONE_SCORE + 1, size=len(zones))
    pixel = np.arange(size) + 0.5
    mask = np.zeros((size, size), dtype=bool)
    severity = np.zeros((size, size), dtype=np.float32)
    boxes = []
    for (top, bottom, left, right), score in zip(zones, scores.tolist()):
        severity[top:bottom, left:right] = score
        # A zone is cut into MAX_ZONE_SCORE vertical slots and each lesion gets its own slot,
        # at least 1 px inside it: lesions of a zone (and of neighbouring zones) are then at least
        # 2 px apart, never 8-neighbours, so each is one component with its own box.
        placed: list[tuple[float, float, float]] = []
        slot_width = (right - left) / MAX_ZONE_SCORE
        for slot in sorted(rng.choice(MAX_ZONE_SCORE, size=score, replace=False).tolist()):
            radius = rng.uniform(*LESION_RADIUS) * size
            slot_left = left + slot * slot_width
            cy = rng.uniform(top + radius + 1, bottom - radius - 1)
            cx = rng.uniform(slot_left + radius + 1, slot_left + slot_width - radius - 1)
            placed.append((cy, cx, radius))
        for cy, cx, radius in placed:
            for _ in range(MAX_DRAWS):
                colour = rng.uniform(0.0, 1.0, 3)
                if min(np.linalg.norm(colour - colour_a), np.linalg.norm(colour - colour_b)) >= LESION_CONTRAST:
                    break
            # only the lesion's bounding window is tested: a disc covers few of the image's pixels
            y0, y1 = max(0, int(cy - radius) - 1), min(size, int(cy + radius) + 2)
            x0, x1 = max(0, int(cx - radius) - 1), min(size, int(cx + radius) + 2)
            disc = (pixel[y0:y1, None] - cy) ** 2 + (pixel[None, x0:x1] - cx) ** 2 <= radius**2
            image[:, y0:y1, x0:x1][:, disc] = colour[:, None]
            mask[y0:y1, x0:x1] |= disc
            boxes.append((cx - radius, cy - radius, cx + radius, cy + radius))
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask, severity, int(scores.sum()), boxes


def generate_severity_scenes(split: str, n: int, *, seed: int, size: int = 64, start: int = 0) -> SampleSet:
    """Samples start..n-1 of `split` ("train" or "test") with severity maps, lesion masks and
    lesion boxes; labels are the total scores 0–18; ids like "test-000042"."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_CODES)}")
    if n < 0 or not 0 <= start <= n:
        raise ValueError(f"need 0 <= start <= n, got start {start} and n {n}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels (six zones of three lesions), got {size}")
    count = n - start
    zones = zone_bounds(size)
    images = np.empty((count, 3, size, size), dtype=np.float32)
    masks = np.empty((count, size, size), dtype=bool)
    severity = np.empty((count, size, size), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    boxes: list[tuple[float, ...]] = []
    for row, i in enumerate(range(start, n)):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], i, STREAM])
        images[row], masks[row], severity[row], labels[row], lesion_boxes = _scene(rng, size, zones)
        boxes.extend((row, *box) for box in lesion_boxes)
    ids = [f"{split}-{i:06d}" for i in range(start, n)]
    box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    return SampleSet(images, labels, ids, masks, box_array, severity)


def describe() -> dict:
    """What the task is, for the sample store's attrs."""
    return {
        "task": "regression",
        "target": "total severity: the sum of six zone scores 0-3 (BrixIA-like)",
        "score_range": [0, MAX_TOTAL],
        "zones": f"{ZONE_ROWS} rows x {ZONE_COLUMNS} columns",
        "severity": "each pixel carries its zone's score",
        "masks": "lesion pixels",
        "boxes": "one per lesion",
    }
