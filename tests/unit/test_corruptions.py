"""ImageNet-C corruptions: hand-checked pixel statistics, conformance with the reference
libraries' filters and colour conversions, determinism, and the `corrupted` dataset kind."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attrflow.data.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    SEVERITY_TABLES,
    corrupt,
    corruption_parameters,
    disk_kernel,
)


def _grey(value: float, n: int = 8, size: int = 64) -> np.ndarray:
    return np.full((n, 3, size, size), value, dtype=np.float32)


def _ids(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def _random_images(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size)).astype(np.float32)


def _hsv(images: np.ndarray) -> np.ndarray:
    """HSV of (N, 3, H, W) RGB, by the textbook formulas (hue in [0, 1))."""
    r, g, b = images[:, 0].astype(np.float64), images[:, 1].astype(np.float64), images[:, 2].astype(np.float64)
    value = np.maximum(np.maximum(r, g), b)
    spread = value - np.minimum(np.minimum(r, g), b)
    saturation = np.where(value > 0, spread / np.where(value > 0, value, 1), 0)
    safe = np.where(spread > 0, spread, 1)
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = np.where(spread > 0, (hue / 6) % 1.0, 0)
    return np.stack([hue, saturation, value], axis=1)


# ----------------------------------------------------------------------------- pixel statistics
@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_shifts_a_grey_image_by_the_table_value(severity):
    shift = SEVERITY_TABLES["brightness"][severity - 1]
    out = corrupt(_grey(0.3), "brightness", severity, ids=_ids(8), seed=0)
    assert out.mean() == pytest.approx(0.3 + shift, abs=1e-6)
    assert np.ptp(out) < 1e-6  # grey stays grey


def test_brightness_turns_black_grey_and_clips_value_at_one():
    black = corrupt(_grey(0.0, n=1, size=8), "brightness", 5, ids=["a"], seed=0)
    assert np.allclose(black, 0.5)
    bright = corrupt(_grey(0.9, n=1, size=8), "brightness", 3, ids=["a"], seed=0)
    assert np.allclose(bright, 1.0)


def test_brightness_adds_to_value_and_keeps_hue_and_saturation():
    images = _random_images()
    out = corrupt(images, "brightness", 2, ids=_ids(4), seed=0)
    before, after = _hsv(images), _hsv(out)
    assert np.allclose(after[:, 2], np.clip(before[:, 2] + 0.2, 0, 1), atol=1e-6)
    assert np.allclose(after[:, 1], before[:, 1], atol=1e-5)
    hue_gap = np.abs(after[:, 0] - before[:, 0])
    assert np.minimum(hue_gap, 1 - hue_gap).max() < 1e-5


def _expected_clipped_gaussian_variance(mean: float, std: float) -> float:
    """Var of clip(mean + std·Z, 0, 1) for mean = 0.5: symmetric clipping at ±0.5."""
    half = 0.5
    t = half / std
    cdf = 0.5 * (1 + math.erf(t / math.sqrt(2)))
    pdf = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    inside = (2 * cdf - 1) - 2 * t * pdf  # E[Z² ; |Z| < t]
    return std**2 * inside + half**2 * 2 * (1 - cdf)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_raises_the_variance_by_c_squared_clip_aware(severity):
    std = SEVERITY_TABLES["gaussian_noise"][severity - 1]
    out = corrupt(_grey(0.5, n=16), "gaussian_noise", severity, ids=_ids(16), seed=0)
    expected = _expected_clipped_gaussian_variance(0.5, std)
    assert out.var() == pytest.approx(expected, rel=0.02)
    assert out.mean() == pytest.approx(0.5, abs=0.002)
    if severity == 1:  # 6σ from either bound: clipping is negligible, variance is c²
        assert out.var() == pytest.approx(std**2, rel=0.02)


def _expected_clipped_poisson_moments(x: float, rate: float) -> tuple[float, float]:
    """Mean and variance of min(K/λ, 1), K ~ Poisson(λx), summed over the pmf."""
    mu = rate * x
    pmf = [math.exp(-mu)]
    for k in range(1, 400):
        pmf.append(pmf[-1] * mu / k)
    values = [min(k / rate, 1.0) for k in range(400)]
    mean = sum(p * v for p, v in zip(pmf, values))
    second = sum(p * v * v for p, v in zip(pmf, values))
    return mean, second - mean**2


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_variance_is_x_over_lambda_clip_aware(severity):
    rate = SEVERITY_TABLES["shot_noise"][severity - 1]
    out = corrupt(_grey(0.5, n=16), "shot_noise", severity, ids=_ids(16), seed=0)
    mean, variance = _expected_clipped_poisson_moments(0.5, rate)
    assert out.var() == pytest.approx(variance, rel=0.02)
    assert out.mean() == pytest.approx(mean, abs=0.003)
    if severity == 1:  # λ = 60: clipping at 1 is negligible, so Var = x/λ
        assert out.var() == pytest.approx(0.5 / rate, rel=0.02)


def _high_frequency_energy(images: np.ndarray) -> float:
    spectrum = np.abs(np.fft.fft2(images - images.mean(axis=(2, 3), keepdims=True))) ** 2
    freq = np.fft.fftfreq(images.shape[-1])
    radius = np.hypot(freq[:, None], freq[None, :])
    return float(spectrum[..., radius > 0.25].sum())


@pytest.mark.parametrize("corruption", ["gaussian_blur", "defocus_blur"])
@pytest.mark.parametrize("size", [32, 64])
def test_blur_lowers_high_frequency_energy_monotonically_in_severity(corruption, size):
    images = _random_images(n=1, size=size)
    energies = [_high_frequency_energy(images)]
    for severity in SEVERITIES:
        energies.append(_high_frequency_energy(corrupt(images, corruption, severity, ids=["a"], seed=0)))
    assert all(a > b for a, b in zip(energies, energies[1:])), energies
    assert energies[1] < 0.8 * energies[0]  # the floor keeps severity 1 a real blur at 64 px


@pytest.mark.parametrize("corruption", ["gaussian_blur", "defocus_blur"])
def test_blur_keeps_a_constant_image_and_its_mean(corruption):
    flat = corrupt(_grey(0.7, n=1, size=32), corruption, 5, ids=["a"], seed=0)
    assert np.allclose(flat, 0.7, atol=1e-6)
    images = _random_images(n=2, size=64)
    out = corrupt(images, corruption, 3, ids=_ids(2), seed=0)
    assert out.mean() == pytest.approx(images.mean(), abs=0.01)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_saturation_changes_saturation_only(severity):
    scale, shift = SEVERITY_TABLES["saturate"][severity - 1]
    images = _random_images(n=2, size=16)
    out = corrupt(images, "saturation", severity, ids=_ids(2), seed=0)
    before, after = _hsv(images), _hsv(out)
    assert np.allclose(after[:, 1], np.clip(before[:, 1] * scale + shift, 0, 1), atol=1e-5)
    assert np.allclose(after[:, 2], before[:, 2], atol=1e-6)
    moved = after[:, 1] > 1e-3  # hue is undefined where the result is grey
    hue_gap = np.abs(after[:, 0] - before[:, 0])[moved]
    assert np.minimum(hue_gap, 1 - hue_gap).max() < 1e-4


def test_saturate_tints_grey_pixels_red_like_the_reference_conversion():
    out = corrupt(_grey(0.5, n=1, size=4), "saturate", 5, ids=["a"], seed=0)  # S' = 0.2 at hue 0
    assert np.allclose(out[0, 0], 0.5) and np.allclose(out[0, 1:], 0.5 * (1 - 0.2))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_outputs_are_float32_images_in_the_unit_range(corruption, severity):
    images = _random_images(n=2, size=24)
    out = corrupt(images, corruption, severity, ids=_ids(2), seed=0)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, images)


# ----------------------------------------------------------------------------- constants
def test_blur_constants_are_the_table_at_224_and_scaled_with_a_floor_below():
    at_224 = [corruption_parameters("gaussian_blur", s, 224, 224)["sigma"] for s in SEVERITIES]
    assert at_224 == pytest.approx([1, 2, 3, 4, 6])
    radii = [corruption_parameters("defocus_blur", s, 224, 224)["radius"] for s in SEVERITIES]
    assert radii == pytest.approx([3, 4, 6, 8, 10])
    at_448 = [corruption_parameters("gaussian_blur", s, 448, 512)["sigma"] for s in SEVERITIES]
    assert at_448 == pytest.approx([2, 4, 6, 8, 12])
    # 64 px: 64/224 = 0.286 would give σ₁ = 0.29 and r₁ = 0.86; the floors lift the whole row
    at_64 = [corruption_parameters("gaussian_blur", s, 64, 64)["sigma"] for s in SEVERITIES]
    assert at_64 == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.4])
    radii_64 = [corruption_parameters("defocus_blur", s, 64, 64)["radius"] for s in SEVERITIES]
    assert radii_64 == pytest.approx([1, 4 / 3, 2, 8 / 3, 10 / 3])
    assert corruption_parameters("defocus_blur", 2, 64, 64)["alias_sigma"] == 0.5


def test_disk_kernel_is_a_normalised_symmetric_disk():
    kernel = disk_kernel(3.0, 0.1).numpy()
    assert kernel.sum() == pytest.approx(1.0)
    assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1])
    centre = kernel.shape[0] // 2
    assert kernel[centre, centre + 3] > 0.02 and kernel[centre, centre + 4] < 1e-12  # r = 3, alias σ 0.1


# ----------------------------------------------------------------------------- conformance
def _skimage_hsv_edit(images: np.ndarray, channel: int, edit) -> np.ndarray:
    color = pytest.importorskip("skimage.color")
    out = []
    for image in images.astype(np.float64):
        hsv = color.rgb2hsv(image.transpose(1, 2, 0))
        hsv[..., channel] = edit(hsv[..., channel])
        out.append(np.clip(color.hsv2rgb(hsv), 0, 1).transpose(2, 0, 1))
    return np.stack(out)


def _images_with_grey_and_black() -> np.ndarray:
    images = _random_images(n=2, size=32)
    images[0, :, :4, :4] = 0.5
    images[0, :, 4:8, :4] = 0.0
    return images


@pytest.mark.parametrize("severity", SEVERITIES)
def test_digital_corruptions_match_skimage_hsv(severity):
    images = _images_with_grey_and_black()
    shift = SEVERITY_TABLES["brightness"][severity - 1]
    expected = _skimage_hsv_edit(images, 2, lambda v: np.clip(v + shift, 0, 1))
    assert np.abs(corrupt(images, "brightness", severity, ids=_ids(2), seed=0) - expected).max() < 1e-6
    scale, add = SEVERITY_TABLES["saturate"][severity - 1]
    expected = _skimage_hsv_edit(images, 1, lambda s: np.clip(s * scale + add, 0, 1))
    assert np.abs(corrupt(images, "saturate", severity, ids=_ids(2), seed=0) - expected).max() < 1e-6


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_blur_matches_scipy_nearest_mode_at_224(severity):
    ndimage = pytest.importorskip("scipy.ndimage")
    images = _random_images(n=1, size=224)
    sigma = SEVERITY_TABLES["gaussian_blur"][severity - 1]
    expected = ndimage.gaussian_filter(images[0].astype(np.float64), sigma=(0, sigma, sigma), mode="nearest", truncate=4.0)
    out = corrupt(images, "gaussian_blur", severity, ids=["a"], seed=0)
    assert np.abs(out[0] - np.clip(expected, 0, 1)).max() < 1e-6


def _cv2_defocus(image: np.ndarray, radius: float, alias_sigma: float) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    span = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(span, span)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    window = (3, 3) if radius <= 8 else (5, 5)
    kernel = cv2.GaussianBlur(disk, ksize=window, sigmaX=alias_sigma)
    return np.clip(np.stack([cv2.filter2D(channel, -1, kernel) for channel in image]), 0, 1)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_blur_matches_opencv_at_224(severity):
    images = _random_images(n=1, size=224)
    radius, alias_sigma = SEVERITY_TABLES["defocus_blur"][severity - 1]
    expected = _cv2_defocus(images[0], int(radius), alias_sigma)
    out = corrupt(images, "defocus_blur", severity, ids=["a"], seed=0)
    assert np.abs(out[0] - expected).max() < 1e-6


# ----------------------------------------------------------------------------- randomness, bad input
@pytest.mark.parametrize("corruption", ["gaussian_noise", "shot_noise"])
def test_noise_is_deterministic_keyed_by_sample_id_and_prefix_stable(corruption):
    images = _random_images(n=5, size=16)
    ids = _ids(5)
    full = corrupt(images, corruption, 3, ids=ids, seed=7)
    assert np.array_equal(full, corrupt(images, corruption, 3, ids=ids, seed=7))
    assert np.array_equal(full[:2], corrupt(images[:2], corruption, 3, ids=ids[:2], seed=7))
    order = [4, 2, 0, 1, 3]
    assert np.array_equal(full[order], corrupt(images[order], corruption, 3, ids=[ids[i] for i in order], seed=7))
    assert not np.array_equal(full, corrupt(images, corruption, 3, ids=ids, seed=8))
    assert not np.array_equal(full, corrupt(images, corruption, 3, ids=ids, seed=7, stream="train"))
    # two identical images with different ids get different noise
    twins = np.repeat(images[:1], 2, axis=0)
    noisy = corrupt(twins, corruption, 3, ids=["a", "b"], seed=7)
    assert not np.array_equal(noisy[0], noisy[1])


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3"])
def test_severity_outside_one_to_five_is_refused(severity):
    with pytest.raises(ValueError, match="severity"):
        corrupt(_grey(0.5, n=1, size=8), "brightness", severity, ids=["a"], seed=0)


def test_unknown_corruption_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(_grey(0.5, n=1, size=8), "fog", 1, ids=["a"], seed=0)
    with pytest.raises(ValueError, match="ids"):
        corrupt(_grey(0.5, n=2, size=8), "brightness", 1, ids=["a"], seed=0)
    with pytest.raises(ValueError, match="RGB"):
        corrupt(np.full((1, 1, 8, 8), 0.5, np.float32), "saturate", 1, ids=["a"], seed=0)


def test_saturation_is_an_alias_of_saturate():
    images = _random_images(n=1, size=8)
    assert np.array_equal(
        corrupt(images, "saturation", 4, ids=["a"], seed=0), corrupt(images, "saturate", 4, ids=["a"], seed=0)
    )


# ----------------------------------------------------------------------------- the dataset kind
def _base_spec() -> dict:
    return {"kind": "synthetic_shapes", "n_train": 6, "n_test": 5, "size": 32, "classes": 3, "seed": 0}


@pytest.mark.parametrize("train_option", ["clean", "corrupted", "none"])
def test_corrupted_dataset_keeps_ids_labels_masks_and_corrupts_the_evaluation_split(train_option):
    from attrflow.data.adapters import count_eval_samples, prepare_dataset

    clean_eval, clean_train, _ = prepare_dataset("shapes", _base_spec(), 0)
    spec = {"kind": "corrupted", "of": _base_spec(), "corruption": "shot_noise", "severity": 2, "seed": 3}
    evaluation, train, attrs = prepare_dataset("shapes_shot2", {**spec, "train": train_option}, 3)
    assert count_eval_samples(spec) == 5 == len(evaluation)
    pairs = [(clean_eval, evaluation, "eval")]
    if train_option == "none":
        assert train is None
    elif train_option == "clean":  # as in ImageNet-C: references stay the model's clean data
        assert np.array_equal(train.images, clean_train.images) and train.ids == clean_train.ids
    else:
        pairs.append((clean_train, train, "train"))
    for clean, corrupted, stream in pairs:
        assert corrupted.ids == clean.ids
        assert np.array_equal(corrupted.labels, clean.labels)
        assert np.array_equal(corrupted.masks, clean.masks)
        expected = corrupt(clean.images, "shot_noise", 2, ids=clean.ids, seed=3, stream=stream)
        assert np.array_equal(corrupted.images, expected)
    assert attrs["dataset"] == "shapes_shot2" and attrs["kind"] == "corrupted"
    assert attrs["preprocessing"]["corruption"] == {
        "name": "shot_noise",
        "severity": 2,
        "parameters": {"rate": 25.0},
        "seed": 3,
        "train_split": train_option,
        "definition": "Hendrycks & Dietterich 2019 (ImageNet-C), see attrflow.data.corruptions",
    }
    assert attrs["num_classes"] == 3


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"corruption": "fog"}, "corruption"),
        ({"severity": 6}, "severity"),
        ({"severity": 0}, "severity"),
        ({"of": "shapes"}, "'of'"),
        ({"of": {"kind": "corrupted", "of": _base_spec(), "corruption": "brightness", "severity": 1}}, "'of'"),
        ({"colour": 1}, "colour"),
        ({"train": "noisy"}, "'train'"),
    ],
)
def test_corrupted_spec_errors_name_the_option(change, words):
    from attrflow.data.adapters import DatasetSpecError, prepare_dataset

    spec = {"kind": "corrupted", "of": _base_spec(), "corruption": "brightness", "severity": 1, **change}
    with pytest.raises(DatasetSpecError, match=words) as err:
        prepare_dataset("bad", spec, 0)
    assert "datasets.bad" in str(err.value)
