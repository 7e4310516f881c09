"""Modified-backpropagation methods: Guided Backprop, Deconvolution, DeepLIFT (rescale), DeepSHAP.

Every method runs on the `WrappedModel` itself. The wrapper normalises inside its forward, and
normalisation is affine, so every map here is in PIXEL space and every reference x' is a
pixel-space image: ``baseline: black`` is the black image, not the normalised zero (the dataset
mean) that the notebook of Khakzar, 2023 mixed up with pixel-space DeepLiftShap baselines.
Each explains the target LOGIT and returns signed (n, C, H, W)
maps.

* **Guided Backprop** (Springenberg et al. 2015; Captum's GuidedBackprop): the gradient, with
  every ReLU passing back only positive gradient where its input was positive.
* **Deconvolution** (Zeiler & Fergus 2014; Captum's Deconvolution): every ReLU passes back the
  positive part of its output gradient, whatever its forward input was.
* **DeepLIFT, rescale rule** (Shrikumar et al. 2017): every unit passes back Δout/Δin times its
  output multiplier (its gradient where |Δin| < 1e-10), max pooling uses Captum's cross-maximum
  rule, and the map is (x − x') ⊙ multiplier; Σ maps = F(x) − F(x') up to float error. The rules
  are Captum's, but implemented here: Captum 0.9 keeps one tensor hook per module on the tensor
  between two adjacent hooked modules and reads the upper module's output gradient *before* the
  lower module's rule has rewritten it, so on ReLU → MaxPool (the small CNN, every ResNet stem)
  its maps lose completeness (tests/conformance/test_captum_backprop.py shows it). Here each
  unit's forward hook returns its output with a straight-through backward equal to the rule
  (out + L(inp − inp)), so rules compose, reused modules work, and nothing is kept per module.
* **DeepSHAP** (Lundberg & Lee 2017; Captum's DeepLiftShap): DeepLIFT from each of
  ``background`` reference images, averaged. Σ maps = F(x) − mean_b F(x'_b).

Both rule sets act on *modules*, so each call first runs one probing forward pass of one image
(counted in the model's cost) that watches every nonlinear torch function and the module calling
it. It refuses with `MethodNotApplicable`, naming the module, a nonlinearity applied functionally
(``F.relu`` in a forward) or one the rules do not cover (GELU, SiLU, LayerNorm, softmax…), and,
for Deconvolution, whose Captum hook reads a gradient stored per module, a ReLU module called
twice per forward (torchvision's ResNet reuses ``relu``). In-place ReLUs (timm) are fine.

DeepLIFT and DeepSHAP are registered ``differentiable=True``: inside `differentiable_maps` their
maps carry a graph to x through the rules' multipliers (`_deeplift_pairs_differentiable`), for
attribution attacks. Guided Backprop and Deconvolution (Captum's hooks) are not.

Cost per image: GBP and Deconvolution one forward and one backward; DeepLIFT runs input and
reference side by side, two of each; DeepSHAP 2·background of each; plus the one-image probe
per call. Pairs are chunked so that no pass holds more than ``max_batch`` model inputs (so the
DeepLIFT family needs max_batch >= 2).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from attrflow.methods._baselines import Baseline, make_baseline
from attrflow.methods._batching import (
    sums_per_sample,
    check_max_batch,
    evaluation_mode,
    maps_differentiable,
    validate_batch,
)
from attrflow.methods.base import (
    DEFAULT_MAX_BATCH,
    Attribution,
    MethodNotApplicable,
    register_method,
)
from attrflow.methods.expected_gradients import check_references
from attrflow.params import Doc, Ge

# Torch functions (by name, without a trailing "_") that are nonlinear in their input. Batch norm
# is absent on purpose: in eval mode it is affine, and every method here evaluates in eval mode.
ACTIVATIONS = frozenset(
    {
        "relu", "relu6", "hardtanh", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
        "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus", "prelu", "rrelu", "glu",
        "logsigmoid", "softsign", "threshold", "softmax", "log_softmax",
    }
)  # fmt: skip
MAX_POOLS = frozenset(
    f"{kind}max_pool{d}d{suffix}"
    for kind in ("", "adaptive_")
    for d in (1, 2, 3)
    for suffix in ("", "_with_indices")
)
NORMALISATIONS = frozenset({"layer_norm", "group_norm", "instance_norm", "rms_norm", "normalize"})


class _NonlinearityWatch(TorchFunctionMode):
    """Records (calling module path, function name) for every watched function called in a forward."""

    def __init__(self, watched: frozenset[str], stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.watched = watched
        self.stack = stack
        self.calls: list[tuple[str, nn.Module | None, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "").strip("_")
        if name in self.watched:
            path, module = self.stack[-1] if self.stack else ("", None)
            self.calls.append((path, module, name))
        return func(*args, **(kwargs or {}))


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[tuple[list[tuple[str, nn.Module]], dict[str, int]]]:
    """Hooks that keep the stack of modules currently running and count each module's calls."""
    stack: list[tuple[str, nn.Module]] = []
    calls: dict[str, int] = {}
    handles = []

    def enter(path: str, module: nn.Module):
        def hook(_module, _inputs):
            stack.append((path, module))
            calls[path] = calls.get(path, 0) + 1

        return hook

    def leave(_module, _inputs, _output):
        stack.pop()

    try:
        for path, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(path, module)))
            handles.append(module.register_forward_hook(leave))
        yield stack, calls
    finally:
        for handle in handles:
            handle.remove()


def check_hookable(
    model: nn.Module,
    probe: torch.Tensor,
    *,
    method: str,
    rule_modules: tuple[type[nn.Module], ...],
    watched: frozenset[str],
    single_use: bool,
) -> None:
    """Refuse a model whose nonlinearities Captum's module hooks would miss or mishandle.

    Runs ``probe`` (one image) through ``model``: every call of a ``watched`` function must come
    from inside a module of a ``rule_modules`` type (which the method's rule rewrites), and, with
    ``single_use``, each such module may run only once per forward.
    """
    with evaluation_mode(model), torch.no_grad(), _module_stack(model) as (stack, calls):
        watch = _NonlinearityWatch(watched, stack)
        with watch:
            model(probe)
    who = f"{method} on model {getattr(model, 'name', '')!r}"
    for path, module, function in watch.calls:
        if not isinstance(module, rule_modules):
            kind = type(module).__name__ if module is not None else "the model"
            raise MethodNotApplicable(
                f"{who}: module {path or '(root)'!r} ({kind}) applies {function} outside a "
                f"{'/'.join(t.__name__ for t in rule_modules)} module, which {method}'s rule "
                f"(a module hook) would not rewrite; use a module per nonlinearity"
            )
    if single_use:
        for path, module in model.named_modules():
            if isinstance(module, rule_modules) and calls.get(path, 0) > 1:
                raise MethodNotApplicable(
                    f"{who}: module {path!r} ({type(module).__name__}) runs {calls[path]} times "
                    f"per forward; {method}'s rule keeps state per module, so each use needs its "
                    f"own module"
                )


@contextmanager
def _captum_quietly() -> Iterator[None]:
    """Captum warns on every call that it sets hooks; it removes them itself, even on error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Setting (forward, )?backward hooks")
        yield


def _modified_relu_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    max_batch: int,
) -> Attribution:
    # Captum is imported here, not with the module: `captum.attr` imports matplotlib (~0.5 s per
    # job), which DeepLift, DeepSHAP and the other methods of this module do not need.
    from captum.attr import Deconvolution, GuidedBackprop

    explainer = GuidedBackprop if method == "guided_backprop" else Deconvolution
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    check_hookable(
        model,
        x[:1],
        method=method,
        rule_modules=(nn.ReLU,),
        watched=ACTIVATIONS,
        single_use=explainer is Deconvolution,  # its rule reads the module's stored output grad
    )
    attribute = explainer(model).attribute
    chunks = []
    with evaluation_mode(model), torch.enable_grad(), _captum_quietly():
        for start in range(0, x.shape[0], max_batch):
            inputs = x[start : start + max_batch].clone().requires_grad_(True)
            chunks.append(attribute(inputs, target=target[start : start + max_batch]).detach())
    return Attribution(maps=torch.cat(chunks))


@register_method("guided_backprop")
def guided_backprop(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """Guided Backprop of the target logit (Captum's GuidedBackprop); needs ReLU modules."""
    return _modified_relu_gradients(model, x, target, "guided_backprop", max_batch)


@register_method("deconvolution")
def deconvolution(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """Deconvolution of the target logit (Captum's Deconvolution); needs single-use ReLU modules."""
    return _modified_relu_gradients(model, x, target, "deconvolution", max_batch)


PairBuilder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(sample_idx (k,), point_idx (k,)) -> references (k, C, H, W) for those pairs."""

RESCALE_EPS = 1e-10  # Captum's: below this |Δin| a unit passes back its gradient instead


def _safe_ratio(
    numerator: torch.Tensor, denominator: torch.Tensor, fallback: torch.Tensor
) -> torch.Tensor:
    usable = denominator.abs() >= RESCALE_EPS
    return torch.where(usable, numerator / torch.where(usable, denominator, 1.0), fallback)


def _halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = t.shape[0] // 2
    return t[:k], t[k:]


def _with_multiplier(
    out: torch.Tensor, inp: torch.Tensor, linear: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``out``'s values whose backward is ``linear``'s transpose: out + L(inp − inp) = out exactly,
    and ∂/∂inp = Lᵀ. The module's own backward is cut (``out`` is detached)."""
    return out.detach() + linear(inp - inp.detach())


def _rescale_elementwise(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    """Rescale rule: multiplier Δout/Δin per unit, the same for the input and reference halves."""
    inp = args[0]
    with torch.no_grad():
        multiplier = _elementwise_multiplier(module, inp, out)
    return _with_multiplier(out, inp, lambda v: multiplier * v)


def _elementwise_multiplier(
    module: nn.Module, inp: torch.Tensor, out: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Δout/Δin of each unit (its derivative where |Δin| < RESCALE_EPS), for both halves;
    ``create_graph`` keeps that derivative differentiable (`differentiable_maps`)."""
    (x_in, r_in), (x_out, r_out) = _halves(inp), _halves(out)
    delta_in = x_in - r_in
    gradient = None
    if bool((delta_in.abs() < RESCALE_EPS).any()):
        with torch.enable_grad():  # the unit's own derivative, hooks bypassed
            z = x_in if create_graph else x_in.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(
                module.forward(z).sum(), z, create_graph=create_graph
            )
    multiplier = _safe_ratio(x_out - r_out, delta_in, gradient if gradient is not None else 0.0)
    return torch.cat([multiplier, multiplier])


def _rescale_max_pool(module: nn.MaxPool2d, args: tuple, out: torch.Tensor) -> torch.Tensor:
    """Captum's cross-maximum rule: per window, with o, o' the pooled input and reference and
    p, q their argmax positions, Δout = o − o' is split as (max(o, o') − o') at p and
    (o − max(o, o')) at q, each divided by that position's Δin. The shares sum to o − o', so
    completeness survives pooling; a 0/0 share is 0 (its Δout is 0 too)."""
    inp = args[0]
    with torch.no_grad():
        linear = _max_pool_rule(module, inp, out)
    return _with_multiplier(out, inp, linear)


def _max_pool_rule(
    module: nn.MaxPool2d, inp: torch.Tensor, out: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear map of the cross-maximum rule for these input and output halves."""
    _, indices = F.max_pool2d(
        inp, module.kernel_size, module.stride, module.padding, module.dilation,
        module.ceil_mode, return_indices=True,
    )  # fmt: skip
    flat = inp.flatten(2)
    (x_in, r_in), (x_out, r_out) = _halves(flat), _halves(out.flatten(2))
    at_x, at_r = (i.flatten(2) for i in _halves(indices))
    larger = torch.maximum(x_out, r_out)
    share_x = _safe_ratio(
        larger - r_out, x_in.gather(2, at_x) - r_in.gather(2, at_x), torch.ones_like(larger)
    )
    share_r = _safe_ratio(
        x_out - larger, x_in.gather(2, at_r) - r_in.gather(2, at_r), torch.zeros_like(larger)
    )
    share_x, share_r = torch.cat([share_x, share_x]), torch.cat([share_r, share_r])
    at_x, at_r = torch.cat([at_x, at_x]), torch.cat([at_r, at_r])

    def linear(v: torch.Tensor) -> torch.Tensor:
        v = v.flatten(2)
        return (share_x * v.gather(2, at_x) + share_r * v.gather(2, at_r)).view_as(out)

    return linear


ELEMENTWISE_RULES = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus)
DEEPLIFT_MODULES = (*ELEMENTWISE_RULES, nn.MaxPool2d)


def _rescale_hook(module: nn.Module, inputs, output):
    """The rescale rule of one DeepLIFT unit (max-pool or elementwise)."""
    rule = _rescale_max_pool if isinstance(module, nn.MaxPool2d) else _rescale_elementwise
    return rule(module, inputs, output)


@contextmanager
def _rescale_rules(model: nn.Module) -> Iterator[None]:
    """Give every DeepLIFT unit of ``model`` its rescale rule for one call (inputs and references
    must run side by side, inputs first). In-place modules run out of place meanwhile: the rule
    needs each unit's input after its output exists."""
    with _unit_hooks(model, _rescale_hook):
        yield


@contextmanager
def _unit_hooks(model: nn.Module, hook: Callable) -> Iterator[None]:
    """``hook`` as the forward hook of every DeepLIFT unit of ``model`` for one call, in-place
    modules out of place meanwhile."""
    handles, inplace = [], []
    try:
        for module in model.modules():
            if getattr(module, "inplace", False) is True:
                module.inplace = False
                inplace.append(module)
            if isinstance(module, DEEPLIFT_MODULES):
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in inplace:
            module.inplace = True


def _deeplift_pairs_differentiable(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    n_points: int,
    reference: PairBuilder,
    max_batch: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_deeplift_pairs` inside `differentiable_maps`: the same maps with a graph to x.

    The rules' multipliers (Δout/Δin, the max-pool shares) are functions of every unit's input
    and output at x and x'. In the hooked pass those values are cut from x (``out.detach()``),
    so each chunk runs twice: a plain forward that records every unit's input and output with
    their true graph to x, then the rule pass from a fresh leaf whose rules take their
    multipliers from that record; the rule pass's input gradient (``create_graph=True``) is then
    differentiable in x through the multipliers. Every chunk's graph is kept until the caller
    back-propagates (no recomputation: DeepLIFT has one point per reference).
    """
    n = x.shape[0]
    total, pairs = n * n_points, max_batch // 2
    maps, logits_parts = [], []

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        records.append((module, args[0], out))

    def replay(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        recorded, inp, recorded_out = next(replayed)
        if recorded is not module:
            raise RuntimeError("deeplift: the units ran in another order in the rule pass")
        if isinstance(module, nn.MaxPool2d):
            linear = _max_pool_rule(module, inp, recorded_out)
        else:
            multiplier = _elementwise_multiplier(module, inp, recorded_out, create_graph=True)
            linear = multiplier.__mul__
        return _with_multiplier(out, args[0], linear)

    with evaluation_mode(model), torch.enable_grad():
        for start in range(0, total, pairs):
            flat = torch.arange(start, min(start + pairs, total), device=x.device)
            sample_idx, point_idx = flat // n_points, flat % n_points
            inputs, references = x[sample_idx], reference(sample_idx, point_idx)
            batch = torch.cat([inputs, references])
            records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
            with _unit_hooks(model, record):
                model(batch)
            replayed = iter(records)
            leaf = batch.detach().requires_grad_(True)
            with _unit_hooks(model, replay):
                logits = model(leaf).gather(1, target[sample_idx].repeat(2).unsqueeze(1))[:, 0]
            (grads,) = torch.autograd.grad(logits[: len(flat)].sum(), leaf, create_graph=True)
            maps.append((inputs - references) * grads[: len(flat)])
            logits_parts.append(logits.detach().view(2, -1))
    per_point = torch.cat(maps)
    sums = per_point.reshape(n, n_points, *per_point.shape[1:]).sum(dim=1)
    at_input, at_reference = torch.cat(logits_parts, dim=1).view(2, n, n_points)
    return sums, at_input[:, 0], at_reference


def _deeplift_pairs(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    n_points: int,
    reference: PairBuilder,
    max_batch: int,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepLIFT of every sample from ``n_points`` references each, summed per sample.

    Returns (Σ_p DeepLIFT(x_s, r_sp) (n, C, H, W), F(x_s) (n,), F(r_sp) (n, P)), target logits
    read off the attribution passes themselves. Pairs run sample-major in chunks of
    ⌊max_batch / 2⌋, each chunk one forward and one backward over inputs and references side by
    side (the rules compare the two halves).
    """
    check_max_batch(max_batch)
    if max_batch < 2:
        raise ValueError(
            f"{method}: parameter max_batch must be >= 2 (each input runs beside its reference); "
            f"got {max_batch}"
        )
    check_hookable(
        model,
        x[:1],
        method=method,
        rule_modules=DEEPLIFT_MODULES,
        watched=ACTIVATIONS | MAX_POOLS | NORMALISATIONS,
        single_use=False,
    )
    if maps_differentiable() and x.requires_grad:
        return _deeplift_pairs_differentiable(model, x, target, n_points, reference, max_batch)
    n = x.shape[0]
    total, pairs = n * n_points, max_batch // 2
    sums = torch.zeros_like(x)
    logits_flat = torch.empty((2, total), dtype=x.dtype, device=x.device)
    with evaluation_mode(model), torch.enable_grad(), _rescale_rules(model):
        for start in range(0, total, pairs):
            flat = torch.arange(start, min(start + pairs, total), device=x.device)
            sample_idx, point_idx = flat // n_points, flat % n_points
            inputs, references = x[sample_idx], reference(sample_idx, point_idx)
            batch = torch.cat([inputs, references]).requires_grad_(True)
            logits = model(batch).gather(1, target[sample_idx].repeat(2).unsqueeze(1))[:, 0]
            (grads,) = torch.autograd.grad(logits[: len(flat)].sum(), batch)
            with torch.no_grad():
                maps = (inputs - references) * grads[: len(flat)]
                logits_flat[:, start : start + len(flat)] = logits.detach().view(2, -1)
                per_sample = sums_per_sample(maps, start, n_points)
                first = start // n_points
                sums[first : first + per_sample.shape[0]] += per_sample
    at_input, at_reference = logits_flat.view(2, n, n_points)
    return sums, at_input[:, 0], at_reference


def _mean_background(references: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) mean of each sample's background, one column of draws at a time (never
    n·B images in memory)."""
    total = torch.zeros(
        (index.shape[0], *references.shape[1:]), dtype=references.dtype, device=references.device
    )
    for column in index.T:
        total += references[column]
    return total / index.shape[1]


def _completeness(maps: torch.Tensor, output_delta: torch.Tensor) -> torch.Tensor:
    return (maps.flatten(1).sum(dim=1) - output_delta).abs()


@register_method("deeplift", completeness=True, differentiable=True)
def deeplift(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    baseline: Annotated[
        Baseline,
        Doc(
            "pixel-space reference x' (as integrated_gradients): black (0), white (1), "
            "uniform noise U[0,1), clip(x + N(0, noise_sigma²)), x blurred with blur_sigma, "
            "each image's mean colour, the X-DNN's homogeneity origin, or the image in "
            "baseline_file"
        ),
    ] = "black",
    noise_sigma: Annotated[
        float,
        Ge(0),
        Doc("std of the Gaussian noise for baseline 'gaussian' (pixel units)"),
    ] = 0.15,
    blur_sigma: Annotated[
        float,
        Ge(0),
        Doc("Gaussian blur σ in pixels for baseline 'blur'"),
    ] = 10.0,
    baseline_file: Annotated[
        str | None,
        Doc("for baseline 'file': a .npy or .safetensors (C, H, W) pixel-space image"),
    ] = None,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """DeepLIFT (rescale rule) of the target logit from ``baseline``.

    Diagnostics: ``baselines`` (n, C, H, W), ``output_delta`` F(x) − F(x') and
    ``completeness_residual`` |Σ maps − output_delta|, both from the attribution pass itself.
    """
    x, target = validate_batch(model, x, target)
    reference = make_baseline(
        model,
        x,
        baseline,
        noise_sigma=noise_sigma,
        blur_sigma=blur_sigma,
        baseline_file=baseline_file,
        generator=generator,
        method="deeplift",
    )
    maps, at_input, at_reference = _deeplift_pairs(
        model,
        x,
        target,
        n_points=1,
        reference=lambda sample_idx, point_idx: reference[sample_idx],
        max_batch=max_batch,
        method="deeplift",
    )
    output_delta = at_input - at_reference[:, 0]
    return Attribution(
        maps=maps,
        diagnostics={
            "baselines": reference,
            "output_delta": output_delta,
            "completeness_residual": _completeness(maps, output_delta),
        },
    )


@register_method("deepshap", references="train_pool", differentiable=True, completeness=True)
def deepshap(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    background: Annotated[
        int,
        Ge(1),
        Doc(
            "reference images per input drawn from the train pool (the notebook of Khakzar, "
            "2023 used 10); the whole pool when it holds no more"
        ),
    ] = 10,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    references: torch.Tensor | None = None,
    reference_weights: torch.Tensor | None = None,
) -> Attribution:
    """DeepSHAP: DeepLIFT averaged over ``background`` references (Captum's DeepLiftShap).

    Each input gets its own background, drawn from the pool without replacement with
    ``generator`` (all draws before any model call, so maps do not depend on ``max_batch``);
    when the pool holds at most ``background`` images every input uses all of them. The pool's
    ``reference_weights`` must be uniform (DeepLiftShap averages its background uniformly).

    Diagnostics: ``reference_indices`` (n, B), ``baselines`` the mean background image (not a
    point whose F the maps sum to), ``output_delta`` F(x) − mean_b F(x'_b) and
    ``completeness_residual`` |Σ maps − output_delta| and ``baseline_output`` mean_b F(x'_b).
    Completeness holds against the mean of F over the background, not F of the mean image, so
    the completeness metric reads ``baseline_output`` rather than evaluating F(baselines).
    """
    x, target = validate_batch(model, x, target)
    references, weights = check_references(x, references, reference_weights, "deepshap")
    pool = references.shape[0]
    if weights is not None and not torch.allclose(weights, torch.full_like(weights, 1.0 / pool)):
        raise ValueError(
            "deepshap: parameter reference_weights must be uniform (DeepSHAP averages its "
            "background uniformly); use a train_pool reference set"
        )
    n = x.shape[0]
    if background >= pool:
        index = torch.arange(pool, device=x.device).expand(n, pool).contiguous()
    else:
        draws = torch.rand((n, pool), generator=generator, device=x.device)
        index = draws.argsort(dim=1)[:, :background]
    sums, at_input, at_references = _deeplift_pairs(
        model,
        x,
        target,
        n_points=index.shape[1],
        reference=lambda sample_idx, point_idx: references[index[sample_idx, point_idx]],
        max_batch=max_batch,
        method="deepshap",
    )
    maps = sums / index.shape[1]
    output_delta = at_input - at_references.mean(dim=1)
    return Attribution(
        maps=maps,
        diagnostics={
            "reference_indices": index,
            "baselines": _mean_background(references, index),
            "output_delta": output_delta,
            "baseline_output": at_references.mean(dim=1),
            "completeness_residual": _completeness(maps, output_delta),
        },
    )
