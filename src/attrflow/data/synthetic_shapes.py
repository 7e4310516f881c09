"""The embedded dataset: coloured shapes on textured backgrounds, generated from a seed.

The default workflow must run without network access, so it brings its own data. Each image
shows one filled shape (the class) with a random colour, position, scale, slight rotation and
aspect change, and a brightness gradient across it, on a background that is always textured:
smooth low-frequency noise, soft stripes or a soft checkerboard between two random colours, plus
low-frequency colour noise. The textures and colours keep attribution maps non-trivial (a model
cannot just threshold one colour), while the shapes stay large and contrasted enough for a small
CNN to learn them in a few epochs. The ground-truth object mask (the shape's pixels) lets
localisation metrics check where a map puts its mass.

Sample ``i`` of a split depends only on ``(seed, split, i, size, classes)``: its parameters come
from ``numpy.random.default_rng([seed, split_code, i])``. Asking for more samples therefore only
appends samples, so attribution shards computed for a smaller run stay valid. Labels cycle
through the classes (``label = i % classes``), which balances every prefix.

Rasterisation is vectorised over a chunk of samples: every shape is an implicit inequality or a
polygon test on the per-sample rotated and scaled pixel coordinates.
"""

from __future__ import annotations

import numpy as np

from attrflow.data.sample_store import SampleSet

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
    "crescent",
    "heart",
)
SPLIT_CODES = {"train": 0, "test": 1}
MIN_CLASSES = 2

# Geometry, as fractions of the image side: the shape's bounding diameter.
SCALE_RANGE = (0.4, 0.65)
# Rotation stays well below 22.5° so that a square never turns into a diamond (or a cross into an X).
MAX_ROTATION_RAD = np.deg2rad(15.0)
ASPECT_RANGE = (0.85, 1.15)
# Colour distances in RGB (unit cube): the two background colours are TEXTURE_CONTRAST apart, so
# every background shows its texture but with weaker edges than the object's, and an object
# colour is redrawn until it is at least OBJECT_CONTRAST away from every colour on the segment
# between the two background colours.
OBJECT_CONTRAST = 0.5
TEXTURE_CONTRAST = (0.2, 0.5)
MAX_COLOUR_DRAWS = 1000
SHADING_STRENGTH = 0.15
COLOUR_NOISE_AMPLITUDE = 0.12
NOISE_GRID = 6  # control points per side of the low-frequency background noise
COLOUR_NOISE_GRID = 4
BACKGROUND_KINDS = ("noise", "stripes", "checker")
CHUNK = 256  # samples rasterised at once: bounds the memory of the coordinate grids


def _regular_polygon(corners: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(corners) / corners
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Image coordinates: u to the right, v downwards, so a phase of -90° puts a corner at the top.
TRIANGLE = _regular_polygon(3) + np.array([0.0, 0.2])  # centre the triangle's bounding box
HEXAGON = _regular_polygon(6, phase=0.0)
STAR = _star(outer=1.1, inner=0.5)


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd crossing test of points (u, v) against a closed polygon, vectorised."""
    inside = np.zeros(u.shape, dtype=bool)
    for (ua, va), (ub, vb) in zip(vertices.tolist(), np.roll(vertices, -1, axis=0).tolist()):
        if va == vb:
            continue
        straddles = (va > v) != (vb > v)
        u_cross = ua + (v - va) * (ub - ua) / (vb - va)
        inside ^= straddles & (u < u_cross)
    return inside


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels inside `shape`, given coordinates normalised so the shape spans about [-1, 1]²."""
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return r2 <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.82
    if shape == "triangle":
        return _inside_polygon(u, v, TRIANGLE * 1.12)
    if shape == "star":
        return _inside_polygon(u, v, STAR)
    if shape == "cross":
        arm = 0.34
        return ((au <= arm) & (av <= 1.0)) | ((av <= arm) & (au <= 1.0))
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "diamond":
        return au + av <= 1.1
    if shape == "hexagon":
        return _inside_polygon(u, v, HEXAGON)
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + (v + 0.1) ** 2 > 0.8**2)
    if shape == "heart":
        x, y = u * 1.15, -(v * 1.15 + 0.1)  # the implicit curve spans about [-1.14, 1.14] × [-1, 1.24]
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _distance_to_segment(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(point - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(point - (a + t * ab)))


class SceneParameters:
    """Per-sample random parameters for a chunk, drawn one sample at a time from its own rng."""

    def __init__(self, count: int) -> None:
        self.centre = np.empty((count, 2))
        self.radius = np.empty(count)
        self.angle = np.empty(count)
        self.aspect = np.empty(count)
        self.object_colour = np.empty((count, 3))
        self.shading = np.empty((count, 2))
        self.colour_a = np.empty((count, 3))
        self.colour_b = np.empty((count, 3))
        self.background_kind = np.empty(count, dtype=np.int64)
        self.frequency = np.empty(count)
        self.texture_angle = np.empty(count)
        self.phase = np.empty((count, 2))
        self.noise = np.empty((count, NOISE_GRID, NOISE_GRID))
        self.colour_noise = np.empty((count, COLOUR_NOISE_GRID, COLOUR_NOISE_GRID, 3))

    def draw(self, k: int, rng: np.random.Generator, size: int) -> None:
        diameter = rng.uniform(*SCALE_RANGE) * size
        self.radius[k] = diameter / 2
        # Keep the whole bounding circle (with some slack for aspect changes) inside the image.
        margin = min(size / 2, self.radius[k] * ASPECT_RANGE[1] + 1.0)
        self.centre[k] = rng.uniform(margin, size - margin, size=2)
        self.angle[k] = rng.uniform(-MAX_ROTATION_RAD, MAX_ROTATION_RAD)
        self.aspect[k] = rng.uniform(*ASPECT_RANGE)
        self.shading[k] = rng.uniform(-1.0, 1.0, size=2)
        for _ in range(MAX_COLOUR_DRAWS):
            a, b = rng.uniform(0.0, 1.0, size=3), rng.uniform(0.0, 1.0, size=3)
            if TEXTURE_CONTRAST[0] <= np.linalg.norm(a - b) <= TEXTURE_CONTRAST[1]:
                break
        self.colour_a[k], self.colour_b[k] = a, b
        for _ in range(MAX_COLOUR_DRAWS):
            colour = rng.uniform(0.0, 1.0, size=3)
            if _distance_to_segment(colour, a, b) >= OBJECT_CONTRAST:
                break
        self.object_colour[k] = colour
        self.background_kind[k] = rng.integers(len(BACKGROUND_KINDS))
        self.frequency[k] = rng.uniform(1.5, 4.0)  # periods per image side
        self.texture_angle[k] = rng.uniform(0.0, np.pi)
        self.phase[k] = rng.uniform(0.0, 2 * np.pi, size=2)
        self.noise[k] = rng.uniform(0.0, 1.0, size=(NOISE_GRID, NOISE_GRID))
        self.colour_noise[k] = rng.uniform(-1.0, 1.0, size=(COLOUR_NOISE_GRID, COLOUR_NOISE_GRID, 3))


def _upsampling_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) linear-interpolation weights from `grid` control points to pixel centres."""
    position = (np.arange(size) + 0.5) / size * (grid - 1)
    low = np.clip(np.floor(position).astype(int), 0, grid - 2)
    frac = position - low
    weights = np.zeros((size, grid))
    weights[np.arange(size), low] = 1.0 - frac
    weights[np.arange(size), low + 1] = frac
    return weights


def _background(p: SceneParameters, size: int) -> np.ndarray:
    """(N, 3, H, W) textured backgrounds; each texture is computed only for the samples using it."""
    n = len(p.radius)
    pixel = ((np.arange(size) + 0.5) / size).astype(np.float32)
    y, x = pixel[None, :, None], pixel[None, None, :]
    t = np.empty((n, size, size), dtype=np.float32)
    for kind, name in enumerate(BACKGROUND_KINDS):
        rows = p.background_kind == kind
        if not rows.any():
            continue
        if name == "noise":
            up = _upsampling_matrix(size, NOISE_GRID)
            t[rows] = up @ p.noise[rows] @ up.T
            continue
        angle = p.texture_angle[rows].astype(np.float32)[:, None, None]
        wave = (2 * np.pi * p.frequency[rows]).astype(np.float32)[:, None, None]
        phase = p.phase[rows].astype(np.float32)
        along = np.sin(wave * (x * np.cos(angle) + y * np.sin(angle)) + phase[:, 0, None, None])
        if name == "stripes":
            t[rows] = 0.5 + 0.5 * along
        else:
            across = np.sin(wave * (y * np.cos(angle) - x * np.sin(angle)) + phase[:, 1, None, None])
            t[rows] = 0.5 + 0.5 * np.tanh(2.0 * along * across)
    colour_a = p.colour_a.astype(np.float32)[:, :, None, None]
    colour_b = p.colour_b.astype(np.float32)[:, :, None, None]
    up_c = _upsampling_matrix(size, COLOUR_NOISE_GRID)
    colour_noise = (up_c @ p.colour_noise.transpose(0, 3, 1, 2) @ up_c.T).astype(np.float32)
    return colour_a + (colour_b - colour_a) * t[:, None] + np.float32(COLOUR_NOISE_AMPLITUDE) * colour_noise


def _render_chunk(p: SceneParameters, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) float32 images in [0, 1] and (N, H, W) bool object masks."""
    pixel = np.arange(size) + 0.5
    dy = pixel[None, :, None] - p.centre[:, 1, None, None]
    dx = pixel[None, None, :] - p.centre[:, 0, None, None]
    cos_a, sin_a = np.cos(p.angle)[:, None, None], np.sin(p.angle)[:, None, None]
    radius = p.radius[:, None, None]
    aspect = p.aspect[:, None, None]
    u = ((dx * cos_a + dy * sin_a) / (radius * aspect)).astype(np.float32)
    v = ((-dx * sin_a + dy * cos_a) / (radius / aspect)).astype(np.float32)
    masks = np.zeros(u.shape, dtype=bool)
    for label in np.unique(labels):
        rows = labels == label
        masks[rows] = _shape_mask(SHAPES[label], u[rows], v[rows])
    shading = p.shading.astype(np.float32) * np.float32(SHADING_STRENGTH)
    shade = 1.0 + u * shading[:, 0, None, None] + v * shading[:, 1, None, None]
    objects = p.object_colour.astype(np.float32)[:, :, None, None] * shade[:, None]
    images = np.where(masks[:, None], objects, _background(p, size))
    return np.clip(images, 0.0, 1.0, out=images), masks


def class_names(classes: int) -> list[str]:
    """The shape names of the first `classes` classes, in label order."""
    _check_classes(classes)
    return list(SHAPES[:classes])


def _check_classes(classes: int) -> None:
    if not MIN_CLASSES <= classes <= len(SHAPES):
        raise ValueError(f"classes must be between {MIN_CLASSES} and {len(SHAPES)}, got {classes}")


def generate_shapes(
    split: str, n: int, *, seed: int, size: int = 64, classes: int = 8, start: int = 0
) -> SampleSet:
    """Samples start..n-1 of `split` ("train" or "test"), with object masks; ids like "test-000042".

    Sample i depends only on (seed, split, i), so any index range can be made on its own.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_CODES)}")
    _check_classes(classes)
    if n < 0 or not 0 <= start <= n:
        raise ValueError(f"need 0 <= start <= n, got start {start} and n {n}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    count = n - start
    images = np.empty((count, 3, size, size), dtype=np.float32)
    masks = np.empty((count, size, size), dtype=bool)
    labels = np.arange(start, n, dtype=np.int64) % classes
    for lo in range(0, count, CHUNK):
        hi = min(count, lo + CHUNK)
        params = SceneParameters(hi - lo)
        for k, i in enumerate(range(start + lo, start + hi)):
            params.draw(k, np.random.default_rng([seed, SPLIT_CODES[split], i]), size)
        images[lo:hi], masks[lo:hi] = _render_chunk(params, labels[lo:hi], size)
    ids = [f"{split}-{i:06d}" for i in range(start, n)]
    return SampleSet(images, labels, ids, masks)
