"""UNI: unlearning-based baselines for path attribution (Choi et al., 2024, Algorithm 1).

Three stages per image x with class c:

1. **Unlearn.** One normalised gradient-ascent step on the sample's cross-entropy in parameter
   space, θ̂ = θ + η ∇_θ L / ‖∇_θ L‖, over every parameter of the model (buffers such as BatchNorm
   running statistics stay as they are).
2. **Match.** T steps of ℓ2 PGD on δ, δ ← δ − μ ∇_δ C, then δ is renormalised, with
   C = D_KL(F(x; θ̂) ‖ F(x + δ; θ)) between full softmax vectors; the baseline is x' = x + δ^T.
3. **Integrate.** A = (x − x')/B · Σ_{k=1..B} ∇_x F_c(x' + (k/B)(x − x'); θ), the right Riemann sum
   of IG from x' with the ORIGINAL weights, where F_c is the target's softmax PROBABILITY (UNI (Choi et al., 2024)
   explains probabilities; ``output="logit"`` explains the logit instead). Diagnostics hold the
   explained output's completeness residual and output delta.

The paper leaves several choices open; each is a parameter whose default is the reading argued in
the digest, and the parameters are stored with the maps:

* ``delta_norm``: Alg. 1 divides δ by its norm ("unit", ‖δ‖ = 1), but Sec. 4.2 says this normalisation
  "strictly enforces" the budget ε = 0.25, so the default is "sphere" (δ ← ε δ/‖δ‖, the digest's
  [INFERENCE]); "ball" projects onto ‖δ‖ ≤ ε, as textbook ℓ2 PGD does.
* ``pgd_gradient``: Alg. 1 steps along the raw gradient ("raw", default); "normalized" takes the
  step μ ∇C/‖∇C‖ of textbook ℓ2 PGD, which the words "ℓ2 PGD ... step size μ" may also mean.
* ``delta_init``: δ⁰ is "initialised", unspecified. Default "random": a Gaussian direction of
  norm 10⁻⁶·radius drawn from the generator (so δ is never exactly 0 and every normalisation is
  defined; small enough that the first gradient step sets the direction); "zero" starts at 0.
* ``unlearn_label``: L's label y. A method receives only ``target`` (the explained class, which
  the runner sets to the label or the prediction per config), so "target" (default) uses it and
  "predicted" uses argmax F(x; θ) whatever the target.
* ``kl_direction``: "unlearned_first" (default, Alg. 1) or "reversed", D_KL(F(x+δ; θ) ‖ F(x; θ̂)).
* ``grad_norm``: "global" (default; one norm over the whole parameter-gradient vector) or
  "per_tensor" (each parameter tensor's gradient normalised on its own).

δ lives in the wrapper's pixel space ([0, 1] images), and x' is not clipped to [0, 1]: clipping
would break the budget. (torchvision models take normalised inputs, where the paper's ε likely
lived; ε = 0.25 there is about 0.25·0.226 ≈ 0.057 in pixel space for ImageNet statistics.)
A sample whose loss gradient (or KL gradient, with zero init) vanishes keeps θ̂ = θ (or δ = 0,
baseline x, zero map); ``unlearning_gradient_norm`` and ``delta_norm`` show it.

Cost per image: 1 parameter gradient (fwd+bwd, per-sample weights) + 1 forward with θ̂ + T input
gradients + B path gradients + 1 forward at x' — (1 + T + B) gradient evaluations and 2 forwards,
28 passes at the defaults.

θ̂ depends on the sample, so step 1 runs per sample but batched across images: `torch.func`
(`vmap` over `grad` and `functional_call`) computes every sample's gradient and θ̂ and evaluates
F(x; θ̂) with its own weights. The model's parameters are never modified: θ̂ only ever exists as
tensors handed to `functional_call`, which swaps them in for one call and restores the originals
in a ``finally``. Chunks hold at most ``max_batch`` samples and at most
`PER_SAMPLE_PARAMETER_BUDGET` per-sample parameter elements. A model `vmap` cannot batch (e.g.
``.item()`` in its forward) is unlearned one sample at a time with plain autograd instead, with a
warning. Stages 2 and 3 use the original model, batched over samples (and path points) in chunks
of ``max_batch``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from attrflow.methods._batching import (
    accumulate_gradients,
    check_max_batch,
    evaluation_mode,
    validate_batch,
)
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge, Gt

# Per-sample gradients and θ̂ take (samples × parameters) elements each; 2**27 float32 elements
# (512 MiB) per copy bounds the unlearning chunk for large networks (≈ 11 ResNet-18s at once)
# while the small CNNs of the embedded default still unlearn a full max_batch chunk together.
PER_SAMPLE_PARAMETER_BUDGET = 2**27
# |δ⁰| relative to the projection radius for delta_init="random".
RANDOM_INIT_SCALE = 1e-6


@register_method("uni", completeness=True, differentiable=True)
def uni(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eta: Annotated[
        float,
        Ge(0),
        Doc("unlearning step size η in parameter space (UNI (Choi et al., 2024): 1)"),
    ] = 1.0,
    pgd_steps: Annotated[
        int,
        Ge(1),
        Doc(
            "PGD steps T matching the baseline to the unlearned output (UNI (Choi et al., "
            "2024): 10)"
        ),
    ] = 10,
    epsilon: Annotated[
        float,
        Gt(0),
        Doc(
            "ℓ2 budget ε of δ = x' − x in pixel space (UNI (Choi et al., 2024): 0.25); unused"
            " by delta_norm 'unit'"
        ),
    ] = 0.25,
    pgd_step_size: Annotated[
        float,
        Gt(0),
        Doc("PGD step size μ (UNI (Choi et al., 2024): 0.1)"),
    ] = 0.1,
    steps: Annotated[
        int,
        Ge(1),
        Doc("Riemann steps B of the right sum k = 1..B (UNI (Choi et al., 2024): 15)"),
    ] = 15,
    output: Annotated[
        Literal["prob", "logit"],
        Doc("explained output F_c: softmax probability (UNI (Choi et al., 2024)) or logit"),
    ] = "prob",
    delta_norm: Annotated[
        Literal["unit", "sphere", "ball"],
        Doc(
            "renormalisation of δ after each PGD step: δ/‖δ‖ (Alg. 1 as printed), ε·δ/‖δ‖ "
            "(budget enforced, digest's reading), or projection onto ‖δ‖ ≤ ε"
        ),
    ] = "sphere",
    pgd_gradient: Annotated[
        Literal["raw", "normalized"],
        Doc("PGD step −μ∇C (Alg. 1) or −μ∇C/‖∇C‖ (textbook ℓ2 PGD)"),
    ] = "raw",
    delta_init: Annotated[
        Literal["zero", "random"],
        Doc("δ⁰: zero, or a random direction of norm 1e-6·radius from the generator"),
    ] = "random",
    unlearn_label: Annotated[
        Literal["target", "predicted"],
        Doc("label y of the unlearned loss: the explained target, or argmax F(x; θ)"),
    ] = "target",
    kl_direction: Annotated[
        Literal["unlearned_first", "reversed"],
        Doc("D_KL(F(x; θ̂) ‖ F(x+δ; θ)) as in Alg. 1, or the reverse"),
    ] = "unlearned_first",
    grad_norm: Annotated[
        Literal["global", "per_tensor"],
        Doc("norm of the unlearning step: over all parameters, or per tensor"),
    ] = "global",
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """UNI maps of the target's probability (or logit) from the unlearned baseline x' to x.

    Diagnostics (n leading): ``baselines`` x' (n, C, H, W); ``path_alphas``, ``path_logits``,
    ``path_probs`` (n, B + 1) at α = 0, 1/B, …, 1; ``output_delta`` F_c(x) − F_c(x') and
    ``completeness_residual`` |Σ maps − output_delta| in the explained output (``output``);
    ``delta_norm`` ‖x' − x‖; ``unlearned_target_prob`` F_c(x; θ̂), ``original_target_prob``
    F_c(x; θ), ``baseline_target_prob`` F_c(x'; θ) (probabilities whatever ``output``);
    ``baseline_kl`` the matching objective C at x'; ``unlearning_gradient_norm`` ‖∇_θ L‖.
    """
    check_max_batch(max_batch)
    x, target = validate_batch(model, x, target)
    with _modes_restored(model):
        unlearned_logits, gradient_norms = unlearned_outputs(
            model, x, target, eta=eta, unlearn_label=unlearn_label, grad_norm=grad_norm,
            max_batch=max_batch,
        )
        unlearned_log_probs = torch.log_softmax(unlearned_logits, dim=1)
        radius = 1.0 if delta_norm == "unit" else float(epsilon)
        delta = _initial_delta(x, delta_init, radius, generator)
        for _ in range(pgd_steps):
            kl_gradient = _matching_gradients(
                model, x + delta, unlearned_log_probs, kl_direction, max_batch
            )
            if pgd_gradient == "normalized":
                kl_gradient = kl_gradient * _safe_inverse(_norms(kl_gradient))
            delta = _renormalised(delta - pgd_step_size * kl_gradient, delta_norm, radius)
        baseline = x + delta
        baseline_logits = _logits(model, baseline, max_batch)
        path = _right_riemann_path(model, x, baseline, target, steps, output, max_batch)

    picked = target.unsqueeze(1)
    baseline_log_probs = torch.log_softmax(baseline_logits, dim=1)
    path_logits = torch.cat([baseline_logits.gather(1, picked), path["logits"]], dim=1)
    path_probs = torch.cat([baseline_log_probs.gather(1, picked).exp(), path["probs"]], dim=1)
    explained = path_probs if output == "prob" else path_logits
    output_delta = explained[:, -1] - explained[:, 0]
    maps = path["maps"]
    alphas = torch.arange(steps + 1, dtype=x.dtype, device=x.device) / steps
    return Attribution(
        maps=maps,
        diagnostics={
            "baselines": baseline,
            "path_alphas": alphas.expand(x.shape[0], -1).contiguous(),
            "path_logits": path_logits,
            "path_probs": path_probs,
            "output_delta": output_delta,
            "completeness_residual": (maps.flatten(1).sum(dim=1) - output_delta).abs(),
            "delta_norm": _norms(delta).flatten(),
            "unlearned_target_prob": unlearned_log_probs.gather(1, picked).squeeze(1).exp(),
            "original_target_prob": path_probs[:, -1],
            "baseline_target_prob": path_probs[:, 0],
            "baseline_kl": _kl(unlearned_log_probs, baseline_log_probs, kl_direction),
            "unlearning_gradient_norm": gradient_norms,
        },
    )


@contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and give every submodule back its own training flag, even on errors
    (``model.train(flag)`` would flatten a model whose parts were in different modes)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# ---------------------------------------------------------------------------------------------
# Stage 1: per-sample unlearning.


def unlearned_outputs(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eta: float,
    unlearn_label: str,
    grad_norm: str,
    max_batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits F(x_i; θ̂_i) (n, K) with θ̂_i unlearned from sample i alone, and ‖∇_θ L_i‖ (n,).

    The model's own parameters are only read; each θ̂_i lives in tensors passed to
    `functional_call`.
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    size = max(1, sum(p.numel() for p in params.values()))
    chunk = max(1, min(max_batch, PER_SAMPLE_PARAMETER_BUDGET // size))

    def loss(weights: dict[str, torch.Tensor], one: torch.Tensor, label: torch.Tensor):
        logits = functional_call(model, (weights, buffers), (one,))
        if unlearn_label == "predicted":
            label = logits.argmax(dim=1)
        return F.cross_entropy(logits, label)

    def unlearned(gradients: dict[str, torch.Tensor], one: torch.Tensor):
        step, norm = _unlearning_direction(gradients, grad_norm)
        moved = {name: params[name] + eta * step[name] for name in params}
        return functional_call(model, (moved, buffers), (one,)), norm

    def one_sample_vmapped(one: torch.Tensor, label: torch.Tensor):
        one, label = one.unsqueeze(0), label.unsqueeze(0)
        logits, norm = unlearned(grad(loss)(params, one, label), one)
        return logits.squeeze(0), norm

    def one_sample_autograd(one: torch.Tensor, label: torch.Tensor):
        one, label = one.unsqueeze(0), label.unsqueeze(0)
        leaves = {name: p.clone().requires_grad_(True) for name, p in params.items()}
        with torch.enable_grad():
            grads = torch.autograd.grad(loss(leaves, one, label), list(leaves.values()),
                                        allow_unused=True)
        gradients = {
            name: torch.zeros_like(p) if g is None else g
            for (name, p), g in zip(params.items(), grads)
        }
        logits, norm = unlearned(gradients, one)
        return logits.squeeze(0), norm

    batched = vmap(one_sample_vmapped)
    logits_parts, norm_parts = [], []
    vmappable = True
    # Eval mode here too (not only in `uni`): BatchNorm in training mode would write its running
    # statistics into the buffers handed to functional_call, which are the model's own.
    with _modes_restored(model), torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            part_x, part_y = x[start : start + chunk], target[start : start + chunk]
            if vmappable:
                try:
                    logits, norms = _counted(
                        model, part_x.shape[0], lambda: batched(part_x, part_y)
                    )
                except RuntimeError as err:
                    if isinstance(err, torch.OutOfMemoryError):
                        raise
                    warnings.warn(
                        f"uni: torch.func.vmap cannot batch model "
                        f"{getattr(model, 'name', type(model).__name__)!r} ({err}); unlearning "
                        f"one sample at a time",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    vmappable = False
            if not vmappable:
                pairs = [one_sample_autograd(one, label) for one, label in zip(part_x, part_y)]
                logits = torch.stack([logit for logit, _ in pairs])
                norms = torch.stack([norm for _, norm in pairs])
            logits_parts.append(logits)
            norm_parts.append(norms)
    return torch.cat(logits_parts), torch.cat(norm_parts)


def _unlearning_direction(
    gradients: dict[str, torch.Tensor], grad_norm: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """∇L/‖∇L‖ (global) or ∇L_k/‖∇L_k‖ per tensor k; zero where the norm is zero. Also ‖∇L‖."""
    squares = {name: g.square().sum() for name, g in gradients.items()}
    total = torch.stack(list(squares.values())).sum().sqrt()
    if grad_norm == "global":
        scale = _safe_inverse(total)
        return {name: g * scale for name, g in gradients.items()}, total
    return {
        name: g * _safe_inverse(squares[name].sqrt()) for name, g in gradients.items()
    }, total


def _counted(model: nn.Module, samples: int, call: Callable):
    """Run a vmapped call and fix the wrapper's pass counters, which see one sample per call
    under `vmap` (each batched tensor looks like a single sample to the forward). A call that
    fails counts nothing: the fallback that follows redoes its work."""
    counters = ("forward_samples", "backward_samples")
    before = {name: getattr(model, name) for name in counters if hasattr(model, name)}
    try:
        result = call()
    except BaseException:
        for name, value in before.items():
            setattr(model, name, value)
        raise
    for name, value in before.items():
        setattr(model, name, value + (getattr(model, name) - value) * samples)
    return result


# ---------------------------------------------------------------------------------------------
# Stage 2: baseline matching.


def _initial_delta(
    x: torch.Tensor, delta_init: str, radius: float, generator: torch.Generator | None
) -> torch.Tensor:
    """δ⁰: zeros, or per sample a Gaussian direction of norm RANDOM_INIT_SCALE·radius.

    Drawn one sample at a time so that sample i's δ⁰ is the generator's i-th draw, whatever the
    batch size.
    """
    if delta_init == "zero":
        return torch.zeros_like(x)
    device = generator.device if generator is not None else x.device
    draws = torch.stack([
        torch.randn(x.shape[1:], generator=generator, device=device, dtype=x.dtype)
        for _ in range(x.shape[0])
    ]).to(x.device)
    return draws * (RANDOM_INIT_SCALE * radius * _safe_inverse(_norms(draws)))


def _kl(unlearned: torch.Tensor, matched: torch.Tensor, kl_direction: str) -> torch.Tensor:
    """Per-sample KL between softmax vectors given as log-probabilities (n, K) → (n,)."""
    if kl_direction == "unlearned_first":  # D_KL(F(x; θ̂) ‖ F(x + δ; θ))
        first, second = unlearned, matched
    else:
        first, second = matched, unlearned
    return (first.exp() * (first - second)).sum(dim=1)


def _matching_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    unlearned_log_probs: torch.Tensor,
    kl_direction: str,
    max_batch: int,
) -> torch.Tensor:
    """∇_δ C for every sample (= ∇ w.r.t. the input x + δ), in chunks of max_batch samples."""
    parts = []
    with evaluation_mode(model), torch.enable_grad():
        for start in range(0, inputs.shape[0], max_batch):
            part = inputs[start : start + max_batch].detach().requires_grad_(True)
            log_probs = torch.log_softmax(model(part), dim=1)
            cost = _kl(unlearned_log_probs[start : start + max_batch], log_probs, kl_direction)
            (gradient,) = torch.autograd.grad(cost.sum(), part)
            parts.append(gradient)
    return torch.cat(parts)


def _renormalised(delta: torch.Tensor, delta_norm: str, radius: float) -> torch.Tensor:
    """Alg. 1's renormalisation: onto the sphere of ``radius`` (unit: 1), or into the ball."""
    norms = _norms(delta)
    if delta_norm == "ball":
        return delta * torch.clamp(radius * _safe_inverse(norms), max=1.0)
    return delta * (radius * _safe_inverse(norms))


def _norms(values: torch.Tensor) -> torch.Tensor:
    """Per-sample ℓ2 norms, shaped (n, 1, …, 1) to broadcast against ``values``."""
    flat = values.flatten(1).norm(dim=1)
    return flat.view(-1, *([1] * (values.dim() - 1)))


def _safe_inverse(norms: torch.Tensor) -> torch.Tensor:
    """1/norm, and 0 where the norm is 0 (a zero vector stays zero instead of becoming NaN)."""
    positive = norms > 0
    return torch.where(positive, 1.0 / torch.where(positive, norms, 1.0), 0.0)


def _logits(model: nn.Module, inputs: torch.Tensor, max_batch: int) -> torch.Tensor:
    with evaluation_mode(model), torch.no_grad():
        return torch.cat([
            model(inputs[start : start + max_batch])
            for start in range(0, inputs.shape[0], max_batch)
        ])


# ---------------------------------------------------------------------------------------------
# Stage 3: right Riemann sum from x' to x with the original weights.


class _ProbabilityOutput(nn.Module):
    """Presents softmax probabilities as the outputs `accumulate_gradients` differentiates, and
    keeps the logits it saw (in call order) for the path diagnostics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen_logits: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        self.seen_logits.append(logits.detach())
        return torch.softmax(logits, dim=1)


def _right_riemann_path(
    model: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    output: str,
    max_batch: int,
) -> dict[str, torch.Tensor]:
    """Maps (x − x')/B Σ_{k=1..B} ∇F_c(x' + (k/B)(x − x')), and the target's logit and
    probability at α = k/B (n, B)."""
    difference = x - baseline
    alphas = torch.arange(1, steps + 1, dtype=x.dtype, device=x.device) / steps

    def point(sample_idx: torch.Tensor, point_idx: torch.Tensor) -> torch.Tensor:
        return baseline[sample_idx] + alphas[point_idx].view(-1, 1, 1, 1) * difference[sample_idx]

    def weigh(grads: torch.Tensor, sample_idx: torch.Tensor, point_idx: torch.Tensor):
        return grads / steps

    explained = _ProbabilityOutput(model).eval() if output == "prob" else model
    path = accumulate_gradients(
        explained, target, n_points=steps, points=point, weigh=weigh, max_batch=max_batch
    )
    if output == "logit":
        logits, probs = path.target_logits, path.target_probs
    else:
        seen = torch.cat(explained.seen_logits)
        flat_target = target.repeat_interleave(steps).unsqueeze(1)
        logits = seen.gather(1, flat_target).reshape(x.shape[0], steps)
        probs = path.target_logits  # the "logits" accumulate_gradients saw are probabilities
    return {"maps": difference * path.gradient_sums, "logits": logits, "probs": probs}
