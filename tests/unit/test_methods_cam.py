"""GradCAM, GradCAM++ and FullGrad: closed-form toy cases, layer resolution, ViTs, hooks, cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrflow.methods import MethodNotApplicable, call_method, get_method
from attrflow.methods.cam import _layer_activations_and_gradients, fullgrad
from attrflow.methods.gradient import x_gradient
from attrflow.models import WrappedModel
from attrflow.models.layers import resolve_layer
from attrflow.models.small_cnn import SmallCNN
from tiny_models import images, regular_cnn, targets, x_cnn

# One function registered per variant: the registered callables have the variant bound.
gradcam = get_method("gradcam").fn
gradcampp = get_method("gradcampp").fn

torch.set_num_threads(1)
F64 = torch.float64
K, SIDE, CLASSES = 4, 6, 3


class FeatureHead(nn.Module):
    """A constructed feature map A (= the input, through ``features``) → GAP → linear head.

    logit_c = Σ_k W_ck mean_ij(A_k,ij) + b_c, so ∂logit_c/∂A_k,ij = W_ck / (h·w) everywhere.
    ``features`` is an identity or a 1×1 convolution (then A = conv(z)).
    """

    def __init__(self, weight: torch.Tensor, features: nn.Module | None = None) -> None:
        super().__init__()
        self.features = features if features is not None else nn.Identity()
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=weight.dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(z).mean(dim=(2, 3)))


HEAD = torch.tensor(
    [[1.0, -2.0, 0.5, 3.0], [-1.0, 1.5, 2.0, -0.5], [0.2, 0.0, -1.0, 1.0]], dtype=F64
)


def wrap(net: nn.Module, **kwargs) -> WrappedModel:
    model = WrappedModel(net, num_classes=CLASSES, cam_layer="features", name="toy", **kwargs)
    return model.to(F64).eval().requires_grad_(False)


@pytest.fixture
def feature_head():
    features = torch.rand(3, K, SIDE, SIDE, generator=torch.Generator().manual_seed(2), dtype=F64)
    return wrap(FeatureHead(HEAD), mean=[0.0] * K, std=[1.0] * K), features


def test_gradcam_closed_form_on_a_linear_head(feature_head):
    model, features = feature_head
    for c in range(CLASSES):
        target = torch.full((3,), c)
        expected = torch.relu(torch.einsum("k,nkij->nij", HEAD[c], features)) / SIDE**2
        assert torch.allclose(gradcam(model, features, target).maps, expected, atol=1e-12)


def test_gradcampp_closed_form_on_a_linear_head(feature_head):
    # g = W_ck/(hw) at every position; Σ_ab A = S_k, so α = 1/(2 + S_k W_ck/(hw)) and
    # w_k = Σ_ij α ReLU(g) = ReLU(W_ck) / (2 + S_k W_ck/(hw)).
    model, features = feature_head
    area = SIDE**2
    sums = features.sum(dim=(2, 3))  # (n, K)
    for c in range(CLASSES):
        target = torch.full((3,), c)
        weights = torch.relu(HEAD[c]) / (2 + sums * HEAD[c] / area)
        expected = torch.relu(torch.einsum("nk,nkij->nij", weights, features))
        assert torch.allclose(gradcampp(model, features, target).maps, expected, atol=1e-12)


def test_gradcam_upsamples_bilinearly_with_half_pixel_centres():
    torch.manual_seed(0)
    model = wrap(FeatureHead(HEAD, nn.AvgPool2d(2)), mean=[0.0] * K, std=[1.0] * K)
    x = torch.rand(2, K, SIDE, SIDE, dtype=F64)
    target = torch.tensor([0, 1])
    pooled = F.avg_pool2d(x, 2)  # 3×3
    low = torch.relu(torch.einsum("nk,nkij->nij", HEAD[target], pooled)) / 9
    maps = gradcam(model, x, target).maps
    assert maps.shape == (2, SIDE, SIDE)
    # Half-pixel centres: output pixel 0 sits at source −0.25 → clamped to source pixel 0, and
    # output pixel 1 at source 0.25 → 0.75·p0 + 0.25·p1.
    assert torch.allclose(maps[:, 0, 0], low[:, 0, 0])
    assert torch.allclose(maps[:, 1, 0], 0.75 * low[:, 0, 0] + 0.25 * low[:, 1, 0])
    assert torch.allclose(maps.mean(dim=(1, 2)), low.mean(dim=(1, 2)), rtol=0.2)


@pytest.mark.parametrize("method", [gradcam, gradcampp])
def test_cams_are_class_sensitive_and_nonnegative(method, feature_head):
    model, features = feature_head
    maps = [method(model, features, torch.full((3,), c)).maps for c in range(CLASSES)]
    assert all(bool((m >= 0).all()) for m in maps)
    assert not torch.allclose(maps[0], maps[1])
    assert not torch.allclose(maps[1], maps[2])


def small_cnn() -> WrappedModel:
    torch.manual_seed(0)
    net = SmallCNN(num_classes=CLASSES, width=4)
    with torch.no_grad():
        net.classifier.weight.mul_(100)
    model = WrappedModel(net, num_classes=CLASSES, cam_layer="features.3", name="cnn")
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("method", [gradcam, gradcampp])
def test_stage_layers_read_their_own_resolution(method):
    model = small_cnn()
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([0, 2])
    sizes, maps = [], []
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        path, module = resolve_layer(model, stage)
        with torch.enable_grad():
            activations, _ = _layer_activations_and_gradients(model, x, target, module, path)
        sizes.append(tuple(activations.shape[-2:]))
        maps.append(method(model, x, target, layer=stage).maps)
        assert maps[-1].shape == (2, 32, 32)
    assert sizes == [(16, 16), (8, 8), (4, 4), (4, 4)]
    assert torch.equal(maps[3], method(model, x, target).maps)  # "default" is features.3
    assert torch.equal(maps[3], method(model, x, target, layer="features.3").maps)
    assert not torch.allclose(maps[0], maps[1])


@pytest.mark.parametrize("method", [gradcam, gradcampp])
def test_cams_change_with_the_target_on_the_small_cnn(method):
    model = small_cnn()
    x = torch.rand(2, 3, 32, 32)
    first = method(model, x, torch.tensor([0, 0])).maps
    second = method(model, x, torch.tensor([1, 1])).maps
    assert not torch.allclose(first, second)


def tiny_vit() -> WrappedModel:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=4, num_heads=2, num_classes=CLASSES
    )
    model = WrappedModel(net, num_classes=CLASSES, cam_layer="blocks.3.norm1", name="vit")
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("method", [gradcam, gradcampp])
@pytest.mark.parametrize("layer", ["default", "stage2", "blocks.1"])
def test_cams_run_on_a_vit_through_its_token_grid(method, layer):
    model = tiny_vit()
    x = torch.rand(2, 3, 32, 32)
    maps = method(model, x, torch.tensor([0, 2]), layer=layer).maps
    assert maps.shape == (2, 32, 32)
    assert bool(torch.isfinite(maps).all()) and bool((maps >= 0).all())
    assert float(maps.abs().sum()) > 0


def test_cams_run_on_a_timm_resnet():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=CLASSES)
    model = WrappedModel(net, num_classes=CLASSES, cam_layer="layer4", name="resnet").eval()
    x = torch.rand(1, 3, 64, 64)
    for layer in ("default", "stage1"):
        maps = gradcampp(model, x, torch.tensor([1]), layer=layer).maps
        assert maps.shape == (1, 64, 64) and bool(torch.isfinite(maps).all())
    assert fullgrad(model, x, torch.tensor([1])).diagnostics["full_gradient_residual"].item() < 1e-3


# ---------------------------------------------------------------------------------------------
# FullGrad


def normalised(term: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The authors' post-processing: |t| min-max over all channels and positions per sample."""
    flat = term.abs().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(term)


def test_fullgrad_on_a_linear_model_is_its_input_term():
    # F(x) = Σ w ⊙ z + b with z = (x − m)/s: the input term is (x − m) ⊙ w / s, and the bias is
    # a Linear (2-D) term, which counts in the decomposition but not in the map.
    torch.manual_seed(0)
    mean, std = [0.4, 0.5], [0.2, 0.3]
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, CLASSES))
    model = wrap(net, mean=mean, std=std)
    x = torch.rand(3, 2, 5, 5, dtype=F64)
    target = torch.tensor([0, 1, 2])
    result = fullgrad(model, x, target)
    w = net[1].weight.view(CLASSES, 2, 5, 5)[target]
    input_term = (x - model.mean) * w / model.std
    assert torch.allclose(result.maps, normalised(input_term).sum(dim=1), atol=1e-12)
    assert float(result.diagnostics["full_gradient_residual"].max()) < 1e-12


def test_fullgrad_bias_terms_on_a_conv_head():
    # A = conv1x1(z) + b_conv; ∂logit_c/∂A_k,ij = W_ck/(hw). Bias term k is the constant map
    # |b_k W_ck|/(hw); per-layer normalisation keeps the differences between channels, per-channel
    # normalisation turns every constant channel into 0.
    conv = nn.Conv2d(2, K, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-1, 1, 2 * K).view(K, 2, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
    model = wrap(FeatureHead(HEAD.clone(), conv), mean=[0.0, 0.0], std=[1.0, 1.0])
    x = torch.rand(2, 2, SIDE, SIDE, dtype=F64)
    target = torch.tensor([0, 2])
    area = SIDE**2
    input_grad = torch.einsum("nk,kc->nc", HEAD[target], conv.weight.view(K, 2).to(F64)) / area
    input_term = normalised(x * input_grad[:, :, None, None]).sum(dim=1)
    bias_values = (conv.bias.to(F64) * HEAD[target]).abs() / area  # (n, K)
    low, high = bias_values.min(1, keepdim=True).values, bias_values.max(1, keepdim=True).values
    bias_term = ((bias_values - low) / (high - low + 1e-6)).sum(dim=1)
    per_layer = fullgrad(model, x, target)
    assert torch.allclose(per_layer.maps, input_term + bias_term[:, None, None], atol=1e-12)
    per_channel = fullgrad(model, x, target, normalise="per_channel").maps
    channel_input = x * input_grad[:, :, None, None]
    flat = channel_input.abs().flatten(2)
    lo, hi = flat.min(2, keepdim=True).values, flat.max(2, keepdim=True).values
    expected = ((flat - lo) / (hi - lo + 1e-7)).view_as(x).sum(dim=1)
    assert torch.allclose(per_channel, expected, atol=1e-12)
    assert float(per_layer.diagnostics["full_gradient_residual"].max()) < 1e-12


def test_fullgrad_on_an_x_dnn_is_normalised_x_gradient():
    model, x, target = x_cnn(dtype=F64), images(dtype=F64), targets()
    result = fullgrad(model, x, target)
    expected = normalised(x_gradient(model, x, target).maps).sum(dim=1)
    assert torch.allclose(result.maps, expected, atol=1e-12)
    assert float(result.diagnostics["full_gradient_residual"].max()) < 1e-12


def inplace_net(fused: bool = False) -> WrappedModel:
    """Conv → BN → ReLU(inplace) → MaxPool → Conv → BN → ReLU(inplace) → GAP → Linear.

    ``fused``: the second BN and its ReLU are one timm ``BatchNormAct2d`` (in-place ReLU inside).
    """
    torch.manual_seed(1)
    if fused:
        from timm.layers import BatchNormAct2d

        second = [BatchNormAct2d(6, act_layer=nn.ReLU, inplace=True), nn.Identity()]
    else:
        second = [nn.BatchNorm2d(6), nn.ReLU(inplace=True)]
    layers = [nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
              nn.Conv2d(5, 6, 3, padding=1), *second,
              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    model = WrappedModel(net, num_classes=CLASSES, mean=(0.4,) * 3, std=(0.2,) * 3, cam_layer="6")
    return model.to(F64).eval().requires_grad_(False)


@pytest.mark.parametrize("kind", ["tiny", "inplace", "timm_fused"])
def test_fullgrad_decomposition_is_complete_on_relu_networks(kind):
    # Σ input term + Σ bias terms = logit exactly for piecewise-linear networks; a missed bias,
    # a wrong BatchNorm effective bias, a gradient taken after a fused activation or a recorded
    # tensor overwritten by an in-place ReLU would all leave a residual.
    if kind == "tiny":
        model, x = regular_cnn(dtype=F64), images(n=3, dtype=F64)
    else:
        model, x = inplace_net(fused=kind == "timm_fused"), torch.rand(3, 3, 8, 8, dtype=F64)
    result = fullgrad(model, x, torch.tensor([0, 1, 2]))
    assert float(result.diagnostics["full_gradient_residual"].max()) < 1e-10
    assert bool((result.maps >= 0).all())


def test_gradcam_reads_a_layer_followed_by_an_inplace_relu():
    model = inplace_net()
    x = torch.rand(2, 3, 8, 8, dtype=F64)
    target = torch.tensor([0, 1])
    maps = gradcam(model, x, target, layer="5").maps  # BN output, then ReLU(inplace=True)
    path, module = resolve_layer(model, "5")
    with torch.enable_grad():
        activations, gradients = _layer_activations_and_gradients(model, x, target, module, path)
    assert bool((activations < 0).any())  # the recorded BN output was not rectified in place
    expected = torch.relu((gradients.mean(dim=(2, 3))[:, :, None, None] * activations).sum(1))
    assert torch.allclose(maps, F.interpolate(expected[:, None], size=(8, 8), mode="bilinear")[:, 0])


# ---------------------------------------------------------------------------------------------
# Registry, batching, cost accounting, hooks and bad input


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "fullgrad"])
def test_registered_channel_free_and_batch_invariant(name):
    info = get_method(name)
    assert info.channel_free and not info.completeness
    model, x, target = regular_cnn(dtype=F64), images(n=5, dtype=F64), targets(n=5)
    model.cam_layer = "4"
    model.reset_counters()
    whole = call_method(info, model, x, target, {}, max_batch=256).maps
    assert (model.forward_samples, model.backward_samples) == (5, 5)
    chunked = call_method(info, model, x, target, {}, max_batch=2).maps
    assert (model.forward_samples, model.backward_samples) == (10, 10)
    assert whole.shape == (5, 10, 10) and whole.device == x.device
    assert torch.allclose(whole, chunked, atol=1e-12)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Explodes(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", [gradcam, gradcampp, fullgrad])
def test_hooks_are_removed_even_when_the_forward_raises(method):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), Explodes())
    model = WrappedModel(net, num_classes=CLASSES, cam_layer="0", name="explodes").eval()
    with pytest.raises(RuntimeError, match="boom"):
        method(model, torch.rand(1, 3, 8, 8), torch.tensor([0]))
    assert hook_count(model) == 0


def test_no_hook_leaks_over_a_thousand_calls():
    model, x, target = regular_cnn(), images(n=1), targets(n=1)
    model.cam_layer = "4"
    for i in range(1000):
        (gradcam, gradcampp, fullgrad)[i % 3](model, x, target)
    assert hook_count(model) == 0


def test_a_layer_that_runs_twice_is_refused_and_unhooked():
    relu = nn.ReLU()
    net = nn.Sequential(nn.Conv2d(3, 4, 1), relu, nn.Conv2d(4, 4, 1), relu, nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, CLASSES))
    model = WrappedModel(net, num_classes=CLASSES, cam_layer="1", name="shared").eval()
    with pytest.raises(ValueError, match="ran 2 times"):
        gradcam(model, torch.rand(1, 3, 4, 4), torch.tensor([0]))
    assert hook_count(model) == 0


def test_bad_layers_are_named():
    model, x, target = regular_cnn(), images(n=2), targets(n=2)
    with pytest.raises(ValueError, match="no_such_layer"):
        gradcam(model, x, target, layer="no_such_layer")
    with pytest.raises(MethodNotApplicable, match="'8'"):  # the Linear head: no spatial map
        gradcampp(model, x, target, layer="8")
    with pytest.raises(ValueError, match="fullgrad.normalise"):  # declared in the signature
        call_method(get_method("fullgrad"), model, x, target, {"normalise": "per_pixel"})
