"""IG baselines, Blur IG, Guided IG and the SmoothGrad wrapper: hand cases, references, axioms.

Blur IG and Guided IG are checked against independent per-image transcriptions of the published
algorithms (PAIR-code/saliency's ``BlurIG.GetMask`` with scipy's blur, and ``guided_ig_impl``),
written here in plain numpy/scipy loops, one image and one gradient at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.catalog import catalog
from attrflow.methods import call_method, get_method
from attrflow.methods._baselines import gaussian_blur, make_baseline
from attrflow.methods.blur_ig import blur_ig, blur_sigmas
from attrflow.methods.guided_ig import guided_ig
from attrflow.methods.integrated_gradients import integrated_gradients, straight_line_attribution
from attrflow.methods.random_attribution import random_attribution
from attrflow.methods.smoothgrad import smoothgrad
from attrflow.models import WrappedModel
from tiny_models import CHANNELS, SIZE, images, regular_cnn, targets, x_cnn

torch.set_num_threads(2)
F64 = torch.float64


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits_of(model: WrappedModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target.unsqueeze(1)).squeeze(1)


def linear_model(classes: int = 4, seed: int = 0) -> tuple[WrappedModel, nn.Linear]:
    """F_c(x) = w_c · x + b_c on raw pixels: every path method equals IG exactly or in the limit."""
    torch.manual_seed(seed)
    layer = nn.Linear(CHANNELS * SIZE * SIZE, classes).double()
    model = WrappedModel(nn.Sequential(nn.Flatten(), layer), num_classes=classes, name="linear")
    return model.double().eval(), layer


def target_weights(layer: nn.Linear, target: torch.Tensor) -> torch.Tensor:
    return layer.weight.detach()[target].view(-1, CHANNELS, SIZE, SIZE)


def input_gradient_fn(model: WrappedModel, target_class: int):
    """∇_x F_c for ONE image given as a (C, H, W) numpy array — the reference loops' oracle."""

    def grad(image: np.ndarray) -> np.ndarray:
        point = torch.tensor(image).unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(model(point)[0, target_class], point)
        return g[0].numpy()

    return grad


# ---------------------------------------------------------------------------------------------
# Gaussian blur and IG baselines


@pytest.mark.parametrize("padding", ["constant", "reflect"])
@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.3, 1.0, 2.5, 50.0])
def test_gaussian_blur_is_scipys_gaussian_filter(padding, sigma):
    """Same taps (⌊4σ + 0.5⌋ wide), same padding, also for kernels wider than the image."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand((2, 3, 7, 11), generator=seeded(), dtype=F64)
    ours = gaussian_blur(x, sigma, padding).numpy()
    theirs = np.stack(
        [ndimage.gaussian_filter(im, sigma=[0, sigma, sigma], mode=padding) for im in x.numpy()]
    )
    assert np.abs(ours - theirs).max() < 1e-14


def test_reflect_blur_keeps_a_flat_image_and_constant_blur_darkens_its_border():
    flat = torch.full((1, 3, 9, 9), 0.6, dtype=F64)
    assert torch.allclose(gaussian_blur(flat, 4.0, "reflect"), flat, atol=1e-14)
    darkened = gaussian_blur(flat, 4.0, "constant")
    assert darkened[0, 0, 0, 0] < darkened[0, 0, 4, 4] < 0.6


def test_baselines_have_the_inputs_shape_and_lie_in_pixel_range():
    model, x = regular_cnn(dtype=F64), images(dtype=F64)
    expected = {
        "black": torch.zeros_like(x),
        "white": torch.ones_like(x),
        "mean": x.mean(dim=(2, 3), keepdim=True).expand_as(x),
        "blur": gaussian_blur(x, 10.0, "reflect"),
    }
    for name in ["black", "white", "uniform", "gaussian", "blur", "mean"]:
        baseline = make_baseline(model, x, name, generator=seeded())
        assert baseline.shape == x.shape and baseline.dtype == x.dtype, name
        assert baseline.min() >= 0 and baseline.max() <= 1, name
        if name in expected:
            assert torch.allclose(baseline, expected[name], atol=1e-14), name


def test_uniform_baseline_ignores_the_input_and_gaussian_noise_is_centred_on_it():
    model = regular_cnn(dtype=F64)
    x = torch.full((64, 3, 10, 10), 0.5, dtype=F64)
    uniform = make_baseline(model, x, "uniform", generator=seeded(1))
    assert torch.equal(uniform, make_baseline(model, 0.2 * x, "uniform", generator=seeded(1)))
    assert abs(float(uniform.mean()) - 0.5) < 0.01 and abs(float(uniform.var()) - 1 / 12) < 0.005
    noisy = make_baseline(model, x, "gaussian", noise_sigma=0.1, generator=seeded(1))
    noise = noisy - x  # σ = 0.1 at 0.5: clipping is a 5σ event
    assert abs(float(noise.mean())) < 0.003 and abs(float(noise.std()) - 0.1) < 0.003
    clipped = make_baseline(model, x, "gaussian", noise_sigma=2.0, generator=seeded(1))
    assert clipped.min() == 0 and clipped.max() == 1


def test_noise_baselines_follow_the_generator_and_not_the_chunking():
    model, x, target = regular_cnn(), images(n=3), targets(n=3)
    for name in ("uniform", "gaussian"):
        runs = [
            integrated_gradients(
                model, x, target, baseline=name, steps=2, generator=seeded(4), max_batch=mb
            )
            for mb in (1, 1000)
        ]
        for run in runs[1:]:
            assert torch.equal(run.diagnostics["baselines"], runs[0].diagnostics["baselines"])
            assert torch.allclose(run.maps, runs[0].maps, rtol=1e-6, atol=1e-7)
        other = integrated_gradients(model, x, target, baseline=name, steps=2, generator=seeded(5))
        assert not torch.equal(other.diagnostics["baselines"], runs[0].diagnostics["baselines"])


@pytest.mark.parametrize("baseline", ["uniform", "gaussian", "blur"])
def test_ig_from_new_baselines_is_exact_on_a_linear_model(baseline):
    model, layer = linear_model()
    x, target = images(dtype=F64), targets() % 4
    result = integrated_gradients(
        model, x, target, baseline=baseline, steps=2, blur_sigma=1.5, generator=seeded()
    )
    reference = result.diagnostics["baselines"]
    assert torch.allclose(result.maps, target_weights(layer, target) * (x - reference), atol=1e-14)
    assert (result.diagnostics["completeness_residual"] < 1e-12).all()


def _save(path, array: np.ndarray) -> str:
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        from safetensors.numpy import save_file

        save_file({"baseline": array}, str(path))
    return str(path)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
@pytest.mark.parametrize("leading_one", [False, True])
def test_baseline_file_is_read_and_shared_by_every_sample(tmp_path, suffix, leading_one):
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    grey = np.full((CHANNELS, SIZE, SIZE), 0.25, dtype=np.float32)
    path = _save(tmp_path / f"grey{suffix}", grey[None] if leading_one else grey)
    result = integrated_gradients(
        model, x, target, baseline="file", baseline_file=path, steps=4, rule="gausslegendre"
    )
    assert torch.equal(result.diagnostics["baselines"], torch.full_like(x, 0.25))
    black = _save(tmp_path / f"black{suffix}", np.zeros_like(grey))
    from_file = integrated_gradients(
        model, x, target, baseline="file", baseline_file=black, steps=2
    )
    assert torch.equal(from_file.maps, integrated_gradients(model, x, target, steps=2).maps)


def test_bad_baseline_files_name_the_parameter_and_the_file(tmp_path):
    model, x, target = regular_cnn(), images(), targets()
    cases = {
        "wrong_shape.npy": np.zeros((CHANNELS, SIZE, SIZE + 1), np.float32),
        "two_images.npy": np.zeros((2, CHANNELS, SIZE, SIZE), np.float32),
        "normalised.npy": np.full((CHANNELS, SIZE, SIZE), -1.5, np.float32),
        "not_finite.npy": np.full((CHANNELS, SIZE, SIZE), np.nan, np.float32),
    }
    for name, array in cases.items():
        path = _save(tmp_path / name, array)
        with pytest.raises(ValueError, match=rf"parameter baseline_file: .*{name}"):
            integrated_gradients(model, x, target, baseline="file", baseline_file=path)
    (tmp_path / "image.png").write_bytes(b"not an array")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    np.save(tmp_path / "pickled.npy", np.array([{"code": 1}], dtype=object), allow_pickle=True)
    for name in ("image.png", "missing.npy", "broken.safetensors", "pickled.npy"):
        path = tmp_path / name
        with pytest.raises(ValueError, match=rf"parameter baseline_file: .*{path.name}"):
            integrated_gradients(model, x, target, baseline="file", baseline_file=str(path))
    with pytest.raises(ValueError, match="parameter baseline_file is not set"):
        integrated_gradients(model, x, target, baseline="file")
    ok = _save(tmp_path / "ok.npy", np.zeros((CHANNELS, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="parameter baseline_file is set"):
        integrated_gradients(model, x, target, baseline="black", baseline_file=ok)
    with pytest.raises(ValueError, match="parameter noise_sigma"):
        integrated_gradients(model, x, target, baseline="gaussian", noise_sigma=-0.1)


# ---------------------------------------------------------------------------------------------
# Blur IG


def pair_blur_ig(image, grad, max_sigma, steps, grad_step, sigmas):
    """PAIR's BlurIG.GetMask for one (C, H, W) image, scipy blur, per-step Δσ."""
    ndimage = pytest.importorskip("scipy.ndimage")

    def blur(sigma):
        if sigma == 0:
            return image
        return ndimage.gaussian_filter(image, sigma=[0, sigma, sigma], mode="constant")

    total = np.zeros_like(image)
    for i in range(steps):
        here = blur(sigmas[i])
        derivative = (blur(sigmas[i] + grad_step) - here) / grad_step
        total += (sigmas[i + 1] - sigmas[i]) * derivative * grad(here)
    return -total


def test_blur_sigmas_follow_pair():
    assert np.allclose(blur_sigmas(50.0, 100, "linear"), [i * 50.0 / 100 for i in range(101)])
    # PAIR sqrt=True with max_sigma m is √(i·m/B): ours with max_sigma √m
    pair_sqrt = [math.sqrt(i * 50.0 / 100) for i in range(101)]
    assert np.allclose(blur_sigmas(math.sqrt(50.0), 100, "sqrt"), pair_sqrt, atol=1e-12)


@pytest.mark.parametrize("spacing", ["linear", "sqrt"])
def test_blur_ig_equals_the_published_algorithm_image_by_image(spacing):
    model, x, target = regular_cnn(dtype=F64), images(n=2, dtype=F64), targets(n=2)
    params = dict(max_sigma=6.0, steps=12, grad_step=0.01, spacing=spacing)
    ours = blur_ig(model, x, target, max_batch=7, **params).maps
    sigmas = blur_sigmas(6.0, 12, spacing)
    for k in range(x.shape[0]):
        theirs = pair_blur_ig(
            x[k].numpy(), input_gradient_fn(model, int(target[k])), 6.0, 12, 0.01, sigmas
        )
        assert np.abs(ours[k].numpy() - theirs).max() < 1e-14 * max(1.0, np.abs(theirs).max())


def test_blur_ig_on_a_linear_model_telescopes_to_ig_from_the_blurred_image():
    """For linear F, Σ_i Δσ·(blur(σ_i + h) − blur(σ_i))/h telescopes exactly when h = Δσ:
    Blur IG is then IG from blur(x, σ_max), w ⊙ (x − blur(x, σ_max))."""
    model, layer = linear_model()
    x, target = images(dtype=F64), targets() % 4
    result = blur_ig(model, x, target, max_sigma=3.0, steps=30, grad_step=0.1)
    expected = target_weights(layer, target) * (x - gaussian_blur(x, 3.0, "constant"))
    assert torch.allclose(result.maps, expected, atol=1e-13)
    assert torch.allclose(result.diagnostics["baselines"], gaussian_blur(x, 3.0, "constant"))
    assert (result.diagnostics["completeness_residual"] < 1e-12).all()
    ig = straight_line_attribution(
        model, x, target, result.diagnostics["baselines"], steps=1, rule="right"
    )
    assert torch.allclose(result.maps, ig.maps, atol=1e-13)


def test_blur_ig_completeness_improves_as_the_sigma_grid_refines():
    model, x, target = linear_model()[0], images(dtype=F64), targets() % 4
    residuals = []
    for steps in (10, 100, 1000):
        d = blur_ig(model, x, target, max_sigma=3.0, steps=steps, grad_step=1e-4).diagnostics
        residuals.append(float((d["completeness_residual"] / d["output_delta"].abs()).max()))
    assert residuals[0] > residuals[1] > residuals[2], residuals
    assert residuals[2] < 0.002


def test_blur_ig_path_diagnostics_run_from_most_blurred_to_the_input():
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    d = blur_ig(model, x, target, max_sigma=8.0, steps=8).diagnostics
    alphas = d["path_alphas"]
    assert alphas.shape == (4, 9) and d["path_logits"].shape == (4, 9)
    assert torch.allclose(alphas[0], torch.linspace(0, 1, 9, dtype=F64))
    most_blurred = gaussian_blur(x, 8.0, "constant")
    assert torch.allclose(d["baselines"], most_blurred)
    assert torch.allclose(d["path_logits"][:, 0], logits_of(model, most_blurred, target))
    assert torch.allclose(d["path_logits"][:, -1], logits_of(model, x, target))
    # α = 0.25 is σ = 6
    assert torch.allclose(
        d["path_logits"][:, 2], logits_of(model, gaussian_blur(x, 6.0, "constant"), target)
    )
    assert torch.allclose(d["output_delta"], d["path_logits"][:, -1] - d["path_logits"][:, 0])


def test_blur_ig_bad_parameters_are_named():
    model, x, target = regular_cnn(), images(), targets()
    for params, name in [
        ({"max_sigma": 0.0}, "max_sigma"),
        ({"steps": 0}, "steps"),
        ({"grad_step": -1.0}, "grad_step"),
        ({"spacing": "log"}, "spacing"),
    ]:
        with pytest.raises(ValueError, match=rf"'blur_ig\.{name}'"):
            call_method(get_method("blur_ig"), model, x, target, params)


# ---------------------------------------------------------------------------------------------
# Guided IG


def published_guided_ig(x_input, x_baseline, grad, steps, fraction, max_dist):
    """PAIR's guided_ig_impl for one image, written out in numpy."""
    x_input, x_baseline = np.asarray(x_input, np.float64), np.asarray(x_baseline, np.float64)
    span = x_input - x_baseline
    x, attr = x_baseline.copy(), np.zeros_like(x_input)
    l1_total = np.abs(span).sum()
    if l1_total == 0:
        return attr
    for step in range(steps):
        g_actual = grad(x)
        g = g_actual.copy()
        alpha = (step + 1.0) / steps
        alpha_min, alpha_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_min, x_max = x_baseline + span * alpha_min, x_baseline + span * alpha_max
        goal = l1_total * (1 - (step + 1) / steps)
        gamma = np.inf
        while gamma > 1.0:
            old = x.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                own = np.where(span != 0, (x - x_baseline) / span, np.nan)
            own[np.isnan(own)] = alpha_max
            x[own < alpha_min] = x_min[own < alpha_min]
            now = np.abs(x - x_input).sum()
            if math.isclose(goal, now, rel_tol=1e-9, abs_tol=1e-9):
                attr += (x - old) * g_actual
                break
            g[x == x_max] = np.inf
            threshold = np.quantile(np.abs(g), fraction, method="lower")
            chosen = (np.abs(g) <= threshold) & (g != np.inf)
            room = (np.abs(x - x_max) * chosen).sum()
            gamma = (now - goal) / room if room > 0 else np.inf
            if gamma > 1.0:
                x[chosen] = x_max[chosen]
            else:
                x[chosen] = (x + (x_max - x) * gamma)[chosen]
            attr += (x - old) * g_actual
    return attr


@pytest.mark.parametrize(
    "fraction,max_dist,baseline", [(0.25, 0.02, "black"), (0.5, 1.0, "black"), (0.1, 0.1, "white")]
)
def test_guided_ig_equals_the_published_algorithm_image_by_image(fraction, max_dist, baseline):
    model, x, target = regular_cnn(dtype=F64), images(n=3, dtype=F64), targets(n=3)
    steps = 10
    ours = guided_ig(
        model,
        x,
        target,
        steps=steps,
        fraction=fraction,
        max_dist=max_dist,
        baseline=baseline,
        max_batch=3,
    )
    start = make_baseline(model, x, baseline)
    for k in range(x.shape[0]):
        theirs = published_guided_ig(
            x[k].numpy(),
            start[k].numpy(),
            input_gradient_fn(model, int(target[k])),
            steps,
            fraction,
            max_dist,
        )
        assert np.abs(ours.maps[k].numpy() - theirs).max() < 1e-14 * max(1.0, np.abs(theirs).max())


@pytest.mark.parametrize("fraction,max_dist", [(0.25, 0.02), (0.5, 1.0), (1.0, 0.3)])
def test_guided_ig_is_ig_on_a_linear_model(fraction, max_dist):
    model, layer = linear_model()
    x, target = images(dtype=F64), targets() % 4
    result = guided_ig(model, x, target, steps=7, fraction=fraction, max_dist=max_dist)
    assert torch.allclose(result.maps, target_weights(layer, target) * x, atol=1e-13)
    assert (result.diagnostics["completeness_residual"] < 1e-12).all()


def test_guided_ig_without_deviation_is_left_riemann_ig():
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    guided = guided_ig(model, x, target, steps=16, max_dist=0.0)
    straight = integrated_gradients(model, x, target, steps=16, rule="left")
    assert torch.allclose(guided.maps, straight.maps, atol=1e-14)
    assert torch.allclose(
        guided.diagnostics["path_logits"], straight.diagnostics["path_logits"], atol=1e-12
    )


def test_guided_ig_diagnostics_and_a_sample_equal_to_its_baseline():
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    x[1] = 0.0  # equal to the black baseline: no path, no attribution
    result = guided_ig(model, x, target, steps=10)
    d = result.diagnostics
    assert (result.maps[1] == 0).all() and (result.maps[0] != 0).any()
    assert d["path_alphas"].shape == (4, 11) and d["path_logits"].shape == (4, 11)
    assert torch.allclose(d["path_alphas"][0], torch.linspace(0, 1, 11, dtype=F64))
    assert torch.allclose(d["path_logits"][:, 0], logits_of(model, torch.zeros_like(x), target))
    assert torch.allclose(d["path_logits"][:, -1], logits_of(model, x, target))
    recomputed = (result.maps.flatten(1).sum(1) - d["output_delta"]).abs()
    assert torch.allclose(d["completeness_residual"], recomputed)


def test_guided_ig_bad_parameters_are_named():
    model, x, target = regular_cnn(), images(), targets()
    for params, name in [
        ({"fraction": 0.0}, "fraction"),
        ({"max_dist": 1.5}, "max_dist"),
        ({"steps": 0}, "steps"),
        ({"baseline": "grey"}, "baseline"),
    ]:
        with pytest.raises(ValueError, match=rf"'guided_ig\.{name}'"):
            call_method(get_method("guided_ig"), model, x, target, params)


# ---------------------------------------------------------------------------------------------
# Shared: batching, determinism, origin baseline, state left as found

PATH_CASES = [
    ("blur_ig", {"max_sigma": 5.0, "steps": 6}),
    ("guided_ig", {"steps": 5}),
    ("guided_ig", {"steps": 4, "baseline": "uniform", "max_dist": 0.5}),
    ("smoothgrad", {"n": 3}),
    ("smoothgrad", {"n": 2, "of": "integrated_gradients", "of_params": {"steps": 3}}),
]


@pytest.mark.parametrize("name,params", PATH_CASES)
def test_maps_do_not_depend_on_max_batch_and_repeat_with_the_seed(name, params):
    # In float64: float32 convolutions round differently with the batch size (oneDNN blocks the
    # batch), and Guided IG's choice of which features move is discontinuous in the gradient, so
    # such rounding alone moves its float32 maps (25 % relative L2 on this model); this test is
    # about the batching logic, which must give the same path whatever the chunking.
    model, x, target, info = regular_cnn(dtype=F64), images(n=5, dtype=F64), targets(n=5), get_method(name)
    runs = []
    for max_batch in (1, 7, 1000):
        model.reset_counters()
        result = call_method(
            info, model, x, target, params, generator=seeded(3), max_batch=max_batch
        )
        runs.append((result, model.forward_samples, model.backward_samples))
    first, forwards, backwards = runs[0]
    for result, f, b in runs[1:]:
        assert (f, b) == (forwards, backwards)
        assert torch.allclose(result.maps, first.maps, rtol=1e-5, atol=1e-7)
        for key, value in first.diagnostics.items():
            assert torch.allclose(result.diagnostics[key], value, rtol=1e-5, atol=1e-7), key
    again = call_method(info, model, x, target, params, generator=seeded(3), max_batch=7)
    assert torch.equal(again.maps, runs[1][0].maps)


def test_path_methods_leave_the_model_as_found_and_accept_the_origin_baseline():
    model, x, target = x_cnn(dtype=F64), images(dtype=F64), targets()
    model.train()
    result = guided_ig(model, x, target, steps=4, baseline="origin")
    assert torch.allclose(result.diagnostics["baselines"], model.homogeneity_origin.expand_as(x))
    blur_ig(model, x, target, max_sigma=2.0, steps=3)
    smoothgrad(model, x, target, n=2)
    assert model.training
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# SmoothGrad


@pytest.mark.parametrize(
    "of,of_params",
    [
        ("gradient", {}),
        ("input_x_gradient", {}),
        ("integrated_gradients", {"steps": 3, "rule": "gausslegendre"}),
        ("random_attribution", {"distribution": "normal"}),
    ],
)
def test_one_noiseless_draw_is_the_inner_method_exactly(of, of_params):
    model, x, target = regular_cnn(), images(), targets()
    ours = smoothgrad(
        model, x, target, of=of, n=1, sigma=0.0, of_params=of_params, generator=seeded(2)
    )
    inner = call_method(get_method(of), model, x, target, of_params, generator=seeded(2))
    assert torch.equal(ours.maps, inner.maps)


def test_smoothgrad_variants_obey_their_algebra():
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    maps = {
        variant: smoothgrad(model, x, target, n=6, variant=variant, generator=seeded(1)).maps
        for variant in ("smoothgrad", "squared", "vargrad")
    }
    assert (maps["vargrad"] >= 0).all() and (maps["squared"] >= 0).all()
    assert torch.allclose(maps["squared"], maps["smoothgrad"] ** 2 + maps["vargrad"], atol=1e-15)


def noise_scale(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    return (flat.amax(1) - flat.amin(1)).view(-1, 1, 1, 1)


def test_smoothgrad_noise_is_sigma_times_each_samples_range():
    """Input×Gradient of a linear model is w ⊙ x: over noisy copies its mean is w ⊙ x (the noise
    is centred) and its variance w² · (σ·range)², per sample with its own range."""
    model, layer = linear_model()
    x = images(n=3, dtype=F64) * torch.tensor([1.0, 0.5, 0.1], dtype=F64).view(-1, 1, 1, 1)
    target = torch.tensor([0, 1, 2])
    w = target_weights(layer, target)
    draws = 1000
    params = dict(of="input_x_gradient", n=draws, sigma=0.2, generator=seeded(0), max_batch=4096)
    mean = smoothgrad(model, x, target, **params).maps
    variance = smoothgrad(model, x, target, variant="vargrad", **params)
    stdev = 0.2 * noise_scale(x)
    assert torch.allclose(variance.diagnostics["noise_stdev"], stdev.flatten())
    assert ((mean - w * x).abs() <= 5 * w.abs() * stdev / math.sqrt(draws)).float().mean() > 0.999
    ratio = variance.maps / (w**2 * stdev**2)  # each element: relative std √(2/draws) ≈ 4.5 %
    assert abs(float(ratio.mean()) - 1) < 0.01 and float((ratio - 1).abs().max()) < 0.25


def test_smoothgrad_reads_its_config_and_names_bad_parameters():
    model, x, target = regular_cnn(), images(), targets()
    info = get_method("smoothgrad")
    params = {"of": "integrated_gradients", "n": 2, "of_params": {"steps": 3}}
    via_config = call_method(info, model, x, target, params, generator=seeded(1))
    direct = smoothgrad(
        model,
        x,
        target,
        of="integrated_gradients",
        n=2,
        of_params={"steps": 3},
        generator=seeded(1),
    )
    assert torch.equal(via_config.maps, direct.maps)
    for params, pattern in [
        ({"of": "saliency"}, r"parameter of: unknown"),  # checked when called: it names a method
        ({"of_params": {"steps": 3}}, r"'smoothgrad\.of_params'.*'steps' was unexpected"),
        ({"of": "integrated_gradients", "of_params": {"steps": 0}}, r"'smoothgrad\.of_params\.steps'"),
        ({"n": 0}, r"'smoothgrad\.n'"),
        ({"sigma": -0.1}, r"'smoothgrad\.sigma'"),
        ({"variant": "median"}, r"'smoothgrad\.variant'"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            call_method(info, model, x, target, params, generator=seeded(1))
    channel_free = smoothgrad(model, x, target, of="random_attribution", n=3, generator=seeded())
    assert channel_free.maps.shape == (4, SIZE, SIZE)
    assert not torch.equal(channel_free.maps, random_attribution(model, x, target).maps)


# ---------------------------------------------------------------------------------------------
# Registration


def test_registrations_match_the_catalog_and_keep_ig_defaults():
    entries = catalog("methods")
    expected = {
        "integrated_gradients": True,
        "blur_ig": True,
        "guided_ig": True,
        "smoothgrad": False,
    }
    for name, completeness in expected.items():
        info = get_method(name)
        assert info.completeness == completeness and not info.channel_free, name
        assert entries[name].params == info.params, name
    ig = get_method("integrated_gradients").params
    assert (ig["baseline"]["default"], ig["steps"]["default"], ig["rule"]["default"]) == (
        "black",
        32,
        "right",
    )
    pair = get_method("guided_ig").params
    assert [pair[k]["default"] for k in ("steps", "fraction", "max_dist", "baseline")] == [
        200,
        0.25,
        0.02,
        "black",
    ]
    blur = get_method("blur_ig").params
    assert [blur[k]["default"] for k in ("max_sigma", "steps", "grad_step", "spacing")] == [
        50.0,
        100,
        0.01,
        "linear",
    ]
