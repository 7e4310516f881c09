"""UNI (seed 000, Algorithm 1): hand-computed unlearning and PGD steps on a softmax-linear model,
the baseline budget, IG cross-checks of the Riemann part, weights and modes restored (also when an
exception interrupts the call), per-sample unlearning, determinism, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from attrflow.catalog import catalog
from attrflow.methods import call_method, get_method
from attrflow.methods.integrated_gradients import integrated_gradients
from attrflow.methods.uni import _renormalised, uni, unlearned_outputs
from attrflow.models import WrappedModel
from tiny_models import images, regular_cnn, targets

torch.set_num_threads(2)
F64 = torch.float64
EPSILON = 0.25
FAST = {"pgd_steps": 3, "steps": 3}  # where the paper's T and B are not the point


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


# ---------------------------------------------------------------------------------------------
# A softmax-linear model, logits s = W·vec(x) + b, where every stage has a closed form.

PIXELS, LINEAR_CLASSES = (1, 3, 3), 4


@pytest.fixture
def linear():
    torch.manual_seed(3)
    layer = nn.Linear(9, LINEAR_CLASSES).to(F64)
    net = nn.Sequential(nn.Flatten(), layer)
    model = WrappedModel(net, num_classes=LINEAR_CLASSES, mean=[0.0], std=[1.0], name="linear")
    model = model.to(F64).eval().requires_grad_(False)
    x = torch.rand((5, *PIXELS), generator=seeded(4), dtype=F64)
    target = torch.tensor([0, 1, 2, 3, 1])
    return model, layer, x, target


def hand_unlearned_logits(layer, x, label, eta, grad_norm):
    """θ̂ = θ + η∇L/‖∇L‖ for cross-entropy: ∇_W = (p − e_y) xᵀ, ∇_b = p − e_y, so the logits
    move by η(p − e_y)·√(‖x‖² + 1)/‖p − e_y‖ (global norm) or η(p − e_y)(‖x‖ + 1)/‖p − e_y‖
    (each tensor normalised on its own)."""
    z = x.flatten(1)
    logits = z @ layer.weight.T + layer.bias
    residual = torch.softmax(logits, dim=1) - nn.functional.one_hot(label, LINEAR_CLASSES).to(F64)
    z_norm = z.norm(dim=1, keepdim=True)
    scale = (z_norm**2 + 1).sqrt() if grad_norm == "global" else z_norm + 1
    return logits + eta * residual * scale / residual.norm(dim=1, keepdim=True)


def hand_kl_gradient(layer, inputs, unlearned_logits, kl_direction):
    """∇_x of D_KL between softmax(s) at x and the unlearned p̂: Wᵀ(q − p̂) for KL(p̂‖q);
    Wᵀ[q ⊙ (log q − log p̂ − KL(q‖p̂))] for KL(q‖p̂)."""
    log_q = torch.log_softmax(inputs.flatten(1) @ layer.weight.T + layer.bias, dim=1)
    log_p = torch.log_softmax(unlearned_logits, dim=1)
    q = log_q.exp()
    if kl_direction == "unlearned_first":
        by_logit = q - log_p.exp()
    else:
        kl = (q * (log_q - log_p)).sum(dim=1, keepdim=True)
        by_logit = q * (log_q - log_p - kl)
    return (by_logit @ layer.weight).view_as(inputs)


def to_sphere(values, radius):
    return radius * values / values.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


@pytest.mark.parametrize("grad_norm", ["global", "per_tensor"])
def test_unlearning_step_matches_closed_form_and_lowers_the_target_probability(linear, grad_norm):
    model, layer, x, target = linear
    result = uni(model, x, target, eta=0.7, pgd_steps=1, steps=2, grad_norm=grad_norm)
    expected = torch.softmax(hand_unlearned_logits(layer, x, target, 0.7, grad_norm), dim=1)
    unlearned = result.diagnostics["unlearned_target_prob"]
    assert torch.allclose(unlearned, expected.gather(1, target.unsqueeze(1)).squeeze(1), rtol=1e-10)
    # Ascent on the target's cross-entropy lowers its logit and raises every other one, so on a
    # linear model the target probability must drop for every sample and every η > 0.
    original = probabilities(model, x).gather(1, target.unsqueeze(1)).squeeze(1)
    assert torch.allclose(result.diagnostics["original_target_prob"], original, rtol=1e-12)
    assert bool((unlearned < original).all())


def test_predicted_label_unlearns_the_argmax_not_the_target(linear):
    model, layer, x, _ = linear
    predicted = probabilities(model, x).argmax(dim=1)
    other = (predicted + 1) % LINEAR_CLASSES
    result = uni(model, x, other, pgd_steps=1, steps=1, unlearn_label="predicted")
    expected = torch.softmax(hand_unlearned_logits(layer, x, predicted, 1.0, "global"), dim=1)
    assert torch.allclose(
        result.diagnostics["unlearned_target_prob"],
        expected.gather(1, other.unsqueeze(1)).squeeze(1),
        rtol=1e-10,
    )


@pytest.mark.parametrize("kl_direction", ["unlearned_first", "reversed"])
@pytest.mark.parametrize("pgd_gradient", ["raw", "normalized"])
def test_two_pgd_steps_match_hand_computation(linear, kl_direction, pgd_gradient):
    """Zero init, sphere: δ¹ = ε·(−μg₀)/‖μg₀‖, δ² = ε·(δ¹ − μs(g₁))/‖…‖ with s(g) = g or g/‖g‖."""
    model, layer, x, target = linear
    mu = 0.3
    result = uni(
        model, x, target, pgd_steps=2, pgd_step_size=mu, epsilon=EPSILON, steps=1,
        delta_init="zero", kl_direction=kl_direction, pgd_gradient=pgd_gradient,
    )
    unlearned = hand_unlearned_logits(layer, x, target, 1.0, "global")

    def step(delta):
        g = hand_kl_gradient(layer, x + delta, unlearned, kl_direction)
        if pgd_gradient == "normalized":
            g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return to_sphere(delta - mu * g, EPSILON)

    expected = x + step(step(torch.zeros_like(x)))
    assert torch.allclose(result.diagnostics["baselines"], expected, rtol=1e-10, atol=1e-12)


def test_ball_projection_keeps_a_short_step_and_shortens_a_long_one(linear):
    model, layer, x, target = linear
    unlearned = hand_unlearned_logits(layer, x, target, 1.0, "global")
    gradient = hand_kl_gradient(layer, x, unlearned, "unlearned_first")
    lengths = gradient.flatten(1).norm(dim=1)
    # μ between the smallest and largest ‖∇C‖⁻¹·ε: some samples stay inside, some are clipped.
    mu = float(EPSILON / lengths.median())
    result = uni(model, x, target, pgd_steps=1, pgd_step_size=mu, steps=1, delta_init="zero",
                 delta_norm="ball")
    raw = -mu * gradient
    inside = (mu * lengths <= EPSILON).view(-1, 1, 1, 1)
    expected = x + torch.where(inside, raw, to_sphere(raw, EPSILON))
    assert 0 < int(inside.sum()) < x.shape[0]
    assert torch.allclose(result.diagnostics["baselines"], expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The tiny CNN (conv, BatchNorm in eval, ReLU, pooling) and a tiny MLP.


def tiny_mlp(seed: int = 0) -> WrappedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(300, 16), nn.Tanh(), nn.Linear(16, 5))
    model = WrappedModel(net, num_classes=5, mean=[0.5] * 3, std=[0.25] * 3, name="tiny_mlp")
    return model.to(F64).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def cnn_batch():
    return regular_cnn(dtype=F64), images(4, dtype=F64), targets(4)


@pytest.mark.parametrize(
    ("delta_norm", "radius"), [("unit", 1.0), ("sphere", EPSILON), ("ball", EPSILON)]
)
def test_baseline_respects_the_budget(cnn_batch, delta_norm, radius):
    model, x, target = cnn_batch
    result = uni(model, x, target, delta_norm=delta_norm, pgd_steps=3, steps=1, generator=seeded())
    distance = (result.diagnostics["baselines"] - x).flatten(1).norm(dim=1)
    assert torch.allclose(result.diagnostics["delta_norm"], distance, rtol=1e-12)
    if delta_norm == "ball":
        assert bool((distance <= radius * (1 + 1e-12)).all())
        assert bool((distance > 0).all())
    else:
        assert torch.allclose(distance, torch.full_like(distance, radius), rtol=1e-12)


@pytest.mark.parametrize("make", ["cnn", "mlp"])
def test_unlearning_lowers_confidence_and_baseline_follows(cnn_batch, make):
    if make == "cnn":
        model, x, target = cnn_batch
    else:
        model, x, target = tiny_mlp(), images(4, dtype=F64), targets(4)
    d = uni(model, x, target, generator=seeded()).diagnostics
    assert bool((d["unlearned_target_prob"] < d["original_target_prob"]).all())
    # PGD moves F(x'; θ) towards F(x; θ̂): the baseline is less confident than the input, and
    # the KL to the unlearned output is smaller at x' than at x.
    assert bool((d["baseline_target_prob"] < d["original_target_prob"]).all())
    at_input = uni(model, x, target, pgd_steps=1, pgd_step_size=1e-12, epsilon=1e-12, steps=1,
                   generator=seeded()).diagnostics["baseline_kl"]
    assert bool((d["baseline_kl"] < at_input).all())


def test_path_outputs_and_completeness_diagnostics_are_consistent(cnn_batch):
    model, x, target = cnn_batch
    result = uni(model, x, target, pgd_steps=2, steps=4, generator=seeded())
    d = result.diagnostics
    baseline = d["baselines"]
    alphas = torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=F64)
    assert torch.equal(d["path_alphas"], alphas.expand(4, -1))
    for k, alpha in enumerate(alphas):
        with torch.no_grad():
            logits = model(baseline + alpha * (x - baseline))
        chosen = target.unsqueeze(1)
        expected_logits = logits.gather(1, chosen).squeeze(1)
        assert torch.allclose(d["path_logits"][:, k], expected_logits, rtol=1e-10)
        assert torch.allclose(
            d["path_probs"][:, k], torch.softmax(logits, 1).gather(1, chosen).squeeze(1), rtol=1e-10
        )
    gap = d["path_probs"][:, -1] - d["path_probs"][:, 0]
    assert torch.allclose(d["output_delta"], gap, rtol=1e-12)
    assert torch.allclose(d["baseline_target_prob"], d["path_probs"][:, 0])
    total = result.maps.flatten(1).sum(dim=1)
    assert torch.allclose(d["completeness_residual"], (total - gap).abs(), rtol=1e-9, atol=1e-15)
    # The right Riemann sum converges: the residual shrinks with more steps.
    finer = uni(model, x, target, pgd_steps=2, steps=32, generator=seeded()).diagnostics
    assert float(finer["completeness_residual"].sum()) < float(d["completeness_residual"].sum())


class Shifted(nn.Module):
    """F'(z) = F(z + x') (or its softmax): IG of F' from a black baseline at x − x' equals IG of
    F from x' at x, so our IG with its black baseline checks UNI's path from x'."""

    def __init__(self, model: nn.Module, offset: torch.Tensor, probability: bool) -> None:
        super().__init__()
        self.model, self.offset, self.probability = model, offset, probability
        self.num_classes = model.num_classes

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.model(z + self.offset)
        return torch.softmax(logits, dim=1) if self.probability else logits


@pytest.mark.parametrize("output", ["logit", "prob"])
def test_riemann_part_equals_integrated_gradients_from_the_same_baseline(cnn_batch, output):
    model, x, target = cnn_batch
    result = uni(model, x, target, pgd_steps=2, steps=5, output=output, generator=seeded())
    baselines = result.diagnostics["baselines"]
    for i in range(x.shape[0]):
        shifted = Shifted(model, baselines[i : i + 1], probability=output == "prob")
        ig = integrated_gradients(
            shifted, x[i : i + 1] - baselines[i : i + 1], target[i : i + 1],
            baseline="black", steps=5, rule="right",
        )
        assert torch.allclose(result.maps[i : i + 1], ig.maps, rtol=1e-9, atol=1e-15)
        explained = result.diagnostics["path_probs" if output == "prob" else "path_logits"]
        assert torch.allclose(ig.diagnostics["path_logits"], explained[i : i + 1], rtol=1e-10)


def test_pass_counts_match_the_documented_cost(cnn_batch):
    """Per image: 1 + T + B gradient evaluations, plus the θ̂ forward and the forward at x'."""
    model, x, target = cnn_batch
    model.reset_counters()
    uni(model, x, target, pgd_steps=3, steps=4, generator=seeded())
    assert model.backward_samples == 4 * (1 + 3 + 4)
    assert model.forward_samples == 4 * (1 + 1 + 3 + 1 + 4)


# ---------------------------------------------------------------------------------------------
# Per-sample unlearning, determinism.


def test_each_sample_unlearns_alone_so_batch_composition_does_not_matter(cnn_batch):
    model, x, target = cnn_batch
    together = uni(model, x, target, **FAST, delta_init="zero")
    chunked = uni(model, x, target, **FAST, delta_init="zero", max_batch=3)
    for i in range(x.shape[0]):
        alone = uni(model, x[i : i + 1], target[i : i + 1], **FAST, delta_init="zero")
        assert torch.allclose(alone.maps, together.maps[i : i + 1], rtol=1e-9, atol=1e-15)
        for key in ("unlearned_target_prob", "baselines"):
            assert torch.allclose(
                alone.diagnostics[key], together.diagnostics[key][i : i + 1], rtol=1e-9, atol=1e-15
            )
    assert torch.allclose(chunked.maps, together.maps, rtol=1e-9, atol=1e-15)
    # A sample's random δ⁰ is the generator's draw for its position, whatever the batch size.
    first_alone = uni(model, x[:1], target[:1], **FAST, generator=seeded(5))
    first_in_batch = uni(model, x, target, **FAST, generator=seeded(5))
    assert torch.allclose(first_alone.maps, first_in_batch.maps[:1], rtol=1e-9, atol=1e-15)


def test_deterministic_given_the_generator_and_options_matter(cnn_batch):
    model, x, target = cnn_batch
    first = uni(model, x, target, **FAST, generator=seeded(1))
    again = uni(model, x, target, **FAST, generator=seeded(1))
    assert torch.equal(first.maps, again.maps)
    for key, value in first.diagnostics.items():
        assert torch.equal(value, again.diagnostics[key]), key
    other_seed = uni(model, x, target, **FAST, generator=seeded(2))
    assert not torch.equal(first.maps, other_seed.maps)
    for option in (
        {"kl_direction": "reversed"}, {"grad_norm": "per_tensor"}, {"pgd_gradient": "normalized"}
    ):
        changed = uni(model, x, target, **FAST, generator=seeded(1), **option)
        assert not torch.allclose(changed.maps, first.maps, rtol=1e-3), option


def test_no_unlearning_keeps_the_baseline_at_the_input(cnn_batch):
    """η = 0 keeps θ̂ = θ, so C and its gradient vanish at δ = 0 up to round-off: inside the
    ball δ stays at round-off size, the baseline is x and the map is zero to round-off."""
    model, x, target = cnn_batch
    result = uni(model, x, target, eta=0.0, delta_init="zero", delta_norm="ball", steps=2)
    assert float(result.diagnostics["delta_norm"].max()) < 1e-12
    assert float(result.maps.abs().max()) < 1e-12
    assert bool((result.diagnostics["unlearning_gradient_norm"] > 0).all())


@pytest.mark.parametrize("delta_norm", ["unit", "sphere", "ball"])
def test_a_zero_perturbation_stays_zero_instead_of_nan(delta_norm):
    zero = torch.zeros((2, 3, 4, 4), dtype=F64)
    assert torch.equal(_renormalised(zero, delta_norm, EPSILON), zero)


# ---------------------------------------------------------------------------------------------
# The original weights and modes survive every call.


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {k: (id(p), p.requires_grad) for k, p in model.named_parameters()},
        {name: m.training for name, m in model.named_modules()},
    )


def assert_untouched(model: nn.Module, before) -> None:
    state, params, modes = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]) and value.dtype == after[key].dtype, key
    assert {k: (id(p), p.requires_grad) for k, p in model.named_parameters()} == params
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_weights_buffers_and_modes_are_restored():
    model = regular_cnn(dtype=F64)
    model.train()  # a training-mode BatchNorm would update its running statistics if used
    model.net[8].eval()  # mixed modes must come back as they were
    before = snapshot(model)
    uni(model, images(3, dtype=F64), targets(3), generator=seeded())
    assert_untouched(model, before)
    unlearned_outputs(model, images(3, dtype=F64), targets(3), eta=1.0, unlearn_label="target",
                      grad_norm="global", max_batch=2)
    assert_untouched(model, before)


class Boom(Exception):
    pass


class Tripwire(nn.Module):
    """Raises on its ``fail_at``-th call: the 2nd is the forward with θ̂ swapped in, later ones
    are PGD or path passes."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise Boom(f"call {self.calls}")
        return z


@pytest.mark.parametrize("fail_at", [2, 5])
def test_weights_are_restored_when_a_call_raises_midway(fail_at):
    model = regular_cnn(dtype=F64)
    model.net.insert(0, Tripwire(fail_at))
    model.train()
    before = snapshot(model)
    x, target = images(3, dtype=F64), targets(3)
    with pytest.raises(Boom):
        uni(model, x, target, **FAST, generator=seeded())
    assert_untouched(model, before)
    # Nothing leaked into later calls: the model explains exactly as an untouched copy does.
    model.net[0].fail_at = -1
    clean = regular_cnn(dtype=F64)
    reused = uni(model, x, target, **FAST, generator=seeded())
    assert torch.equal(reused.maps, uni(clean, x, target, **FAST, generator=seeded()).maps)


class ItemGate(nn.Module):
    """Reads a tensor into Python (``.item()``), which `vmap` refuses to batch."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if float(z.detach().abs().max()) > 1e9:
            raise ValueError("input too large")
        return z


def test_models_vmap_cannot_batch_are_unlearned_one_sample_at_a_time(cnn_batch):
    model, x, target = cnn_batch
    gated = regular_cnn(dtype=F64)
    gated.net.insert(0, ItemGate())
    before = snapshot(gated)
    with pytest.warns(RuntimeWarning, match="one sample at a time"):
        result = uni(gated, x, target, **FAST, generator=seeded())
    assert_untouched(gated, before)
    reference = uni(model, x, target, **FAST, generator=seeded())
    assert torch.allclose(result.maps, reference.maps, rtol=1e-9, atol=1e-15)
    for key in ("unlearned_target_prob", "unlearning_gradient_norm"):
        assert torch.allclose(result.diagnostics[key], reference.diagnostics[key], rtol=1e-10)
    model.reset_counters()
    gated.reset_counters()
    with pytest.warns(RuntimeWarning):
        uni(gated, x, target, pgd_steps=1, steps=1, generator=seeded())
    uni(model, x, target, pgd_steps=1, steps=1, generator=seeded())
    assert (gated.forward_samples, gated.backward_samples) == (
        model.forward_samples, model.backward_samples
    )


# ---------------------------------------------------------------------------------------------
# Registration and bad input.


def test_registered_with_the_papers_defaults():
    info = get_method("uni")
    assert info.completeness and not info.channel_free
    defaults = {key: schema["default"] for key, schema in info.params.items()}
    assert defaults == {
        "eta": 1.0, "pgd_steps": 10, "epsilon": 0.25, "pgd_step_size": 0.1, "steps": 15,
        "output": "prob", "delta_norm": "sphere", "pgd_gradient": "raw", "delta_init": "random",
        "unlearn_label": "target", "kl_direction": "unlearned_first", "grad_norm": "global",
    }
    assert "uni" in catalog("methods")
    model, x, target = regular_cnn(dtype=F64), images(2, dtype=F64), targets(2)
    via_config = call_method(info, model, x, target, {"steps": 3}, generator=seeded(), max_batch=4)
    direct = uni(model, x, target, steps=3, generator=seeded(), max_batch=4)
    assert torch.equal(via_config.maps, direct.maps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta_norm": "sphear"}, r"'uni\.delta_norm'"),
        ({"kl_direction": "forward"}, r"'uni\.kl_direction'"),
        ({"output": "softmax"}, r"'uni\.output'"),
        ({"epsilon": 0.0}, r"'uni\.epsilon'"),
        ({"eta": -1.0}, r"'uni\.eta'"),
        ({"eta": float("nan")}, r"'uni\.eta'"),
        ({"pgd_step_size": float("inf")}, r"'uni\.pgd_step_size'"),
        ({"pgd_steps": 0}, r"'uni\.pgd_steps'"),
        ({"steps": 2.0}, r"'uni\.steps'"),
        ({"max_batch": 0}, "parameter max_batch"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    # config parameters are checked against the signature's declarations (the config's message,
    # naming uni.<key>); max_batch is the runner's, checked by the method
    model = regular_cnn(dtype=F64)
    runtime = {key: kwargs[key] for key in ("max_batch",) if key in kwargs}
    params = {key: value for key, value in kwargs.items() if key not in runtime}
    with pytest.raises(ValueError, match=message):
        call_method(get_method("uni"), model, images(2, dtype=F64), targets(2), params, **runtime)


def test_bad_inputs_name_the_sample():
    model = regular_cnn(dtype=F64)
    x = images(3, dtype=F64)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="sample 1: parameter x"):
        uni(model, x, targets(3))
    with pytest.raises(ValueError, match="sample 2: parameter target"):
        uni(model, images(3, dtype=F64), torch.tensor([0, 1, 99]))


def test_a_channels_last_cnn_is_unlearned_batched_by_vmap():
    # WrappedModel runs convolutions channels-last; vmap cannot batch that layout, so the
    # wrapper must leave inputs under torch.func transforms as they are (no per-sample fallback).
    model, x, target = regular_cnn(), images(3), targets(3)
    assert model.channels_last
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = uni(model, x, target, **FAST, generator=seeded())
    assert torch.isfinite(result.maps).all()
