"""On a CUDA device, methods and metrics give the CPU's numbers (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from attrflow.methods import call_method, get_method
from attrflow.metrics import MetricInputs, call_metric, get_metric

from tiny_models import images, regular_cnn, targets, x_cnn

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("fn, params", [("gradient", {}), ("integrated_gradients", {"steps": 16, "rule": "gausslegendre"})])
def test_methods_agree_across_devices(fn, params):
    info = get_method(fn)
    cpu = call_method(info, regular_cnn(), images(), targets(), params).maps
    cuda_model = regular_cnn().cuda()
    gpu = call_method(info, cuda_model, images().cuda(), targets().cuda(), params).maps
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_x_gradient_completeness_on_gpu():
    model = x_cnn().cuda()
    x, t = images().cuda(), targets().cuda()
    result = call_method(get_method("x_gradient"), model, x, t, {})
    logits = model(x).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(result.maps.sum(dim=(1, 2, 3)), logits, rtol=1e-4, atol=1e-5)


def test_deletion_agrees_across_devices():
    info = get_method("gradient")
    metric = get_metric("deletion")
    outs = []
    for device in ("cpu", "cuda"):
        model = regular_cnn().to(device)
        x, t = images().to(device), targets().to(device)
        maps = call_method(info, model, x, t, {}).maps.sum(1)
        inputs = MetricInputs(model=model, images=x, maps=maps, targets=t, labels=t, ids=[str(i) for i in range(len(t))])
        outs.append(call_metric(metric, inputs, {"steps": 8}).values)
    torch.testing.assert_close(torch.tensor(outs[1]), torch.tensor(outs[0]), rtol=1e-4, atol=1e-5)
