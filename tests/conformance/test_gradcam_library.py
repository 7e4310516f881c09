"""GradCAM, GradCAM++ and FullGrad against pytorch-grad-cam 1.5.7 on the same model, layer and target.

How the two differ, exactly, and what the comparison does about it:
* pytorch-grad-cam min-max normalises every map to [0, 1] (twice: at the layer's resolution and
  after resizing, each time (m − min) / (max − min + 1e-7)); ours are raw. The test min-max
  normalises ours. Bilinear resizing is affine-equivariant, so the order does not matter.
* It resizes with OpenCV (bilinear, half-pixel centres, float32); we use torch's bilinear with
  ``align_corners=False``, the same convention.
* GradCAM++: it adds 1e-6 to the α denominator 2g² + Σ A g³; we use the exact 1 / (2 + Σ A g).
  With the small CNN's initial classifier (std 0.01) g² is ~1e-8 and that 1e-6 swamps the
  formula; even at g ~ 0.03 it moves the normalised maps by 2e-3 (measured: with their epsilon
  put into our formula the difference drops to 4e-7). The classifier weights are therefore
  scaled ×10⁴ here, which puts g near 1 and the effect of their epsilon far below the tolerance.
* FullGrad: compared with ``normalise="per_channel"``, its per-channel normalisation. Both use
  the network's normalised input z as "the input" (we run their code on the bare network with z).
Everything runs in float32 (their code goes through NumPy float32); tolerance 2e-4 absolute on
[0, 1] maps.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import FullGrad, GradCAM, GradCAMPlusPlus  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from attrflow.methods import get_method  # noqa: E402
from attrflow.methods.cam import fullgrad  # noqa: E402
from attrflow.models import WrappedModel  # noqa: E402
from attrflow.models.small_cnn import SmallCNN  # noqa: E402

gradcam = get_method("gradcam").fn
gradcampp = get_method("gradcampp").fn

torch.set_num_threads(1)
ATOL = 2e-4
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = high - low  # an all-zero CAM (ReLU of a negative sum) stays zero, as in the library
    return ((flat - low) / torch.where(span > 0, span, 1.0)).view_as(maps)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(3)
    net = SmallCNN(num_classes=4, width=6)
    with torch.no_grad():
        net.classifier.weight.mul_(1e4)
        for module in net.modules():  # non-trivial BatchNorm statistics and conv biases
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.3, 0.3)
            elif isinstance(module, torch.nn.Conv2d):
                module.bias.uniform_(-0.2, 0.2)
    model = WrappedModel(net, num_classes=4, mean=MEAN, std=STD, cam_layer="features.3", name="cnn")
    model.eval().requires_grad_(False)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 2, 3])
    return model, x, target


def library_maps(cam_class, model: WrappedModel, x: torch.Tensor, target: torch.Tensor, layers):
    # Our tiny nets carry no trainable parameters; the library's backward needs some leaf.
    z = ((x - model.mean) / model.std).requires_grad_(True)
    with cam_class(model=model.net, target_layers=layers) as cam:
        maps = cam(input_tensor=z, targets=[ClassifierOutputTarget(int(t)) for t in target])
    return torch.from_numpy(maps)


@pytest.mark.parametrize("layer", ["features.3", "features.1", "features.0"])
@pytest.mark.parametrize("ours, theirs", [(gradcam, GradCAM), (gradcampp, GradCAMPlusPlus)])
def test_cams_match_pytorch_grad_cam(setup, ours, theirs, layer):
    model, x, target = setup
    expected = library_maps(theirs, model, x, target, [model.net.get_submodule(layer)])
    got = minmax(ours(model, x, target, layer=layer).maps)
    assert got.shape == expected.shape == (3, 32, 32)
    assert torch.allclose(got, expected, atol=ATOL), float((got - expected).abs().max())


def test_fullgrad_matches_pytorch_grad_cam(setup):
    model, x, target = setup
    expected = library_maps(FullGrad, model, x, target, [])
    got = minmax(fullgrad(model, x, target, normalise="per_channel").maps)
    assert torch.allclose(got, expected, atol=ATOL), float((got - expected).abs().max())
    # The authors' per-layer normalisation is a different map: the comparison can tell them apart.
    other = minmax(fullgrad(model, x, target, normalise="per_layer").maps)
    assert not torch.allclose(other, expected, atol=10 * ATOL)


def test_vit_gradcam_matches_pytorch_grad_cam():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=4, num_heads=2, num_classes=4
    )
    model = WrappedModel(net, num_classes=4, cam_layer="blocks.3.norm1", name="vit").eval()
    model.requires_grad_(False)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 3])

    def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:  # the library's ViT tutorial recipe
        return tokens[:, 1:, :].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    z = ((x - model.mean) / model.std).requires_grad_(True)
    layers = [net.blocks[3].norm1]
    with GradCAM(model=net, target_layers=layers, reshape_transform=tokens_to_grid) as cam:
        maps = cam(input_tensor=z, targets=[ClassifierOutputTarget(int(t)) for t in target])
    expected = torch.from_numpy(maps)
    got = minmax(gradcam(model, x, target).maps)
    assert torch.allclose(got, expected, atol=ATOL), float((got - expected).abs().max())
