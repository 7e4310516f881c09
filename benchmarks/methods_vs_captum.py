"""Time per image of attrflow's gradient methods against Captum and the bare compute bound.

    .venv/bin/python benchmarks/methods_vs_captum.py [--images 8] [--steps 32] [--repeats 3] [--device cpu]

For each model (the embedded width-16 CNN at 64², timm resnet18 at 224², random weights: speed
does not depend on them) it times, in the same process and on the same inputs:

* bare: `steps` batched forward+backward passes of the model on (images × steps) inputs chunked
  to `max_batch` — the compute any IG implementation must do;
* attrflow `integrated_gradients` (right rule, black baseline) at `steps`;
* Captum `IntegratedGradients` (riemann_right) at the same steps and internal batch size;
* attrflow `gradient` against Captum `Saliency` and one bare pass.

It prints the median of `repeats` runs and the ratios ours/bare and ours/Captum.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attrflow.methods import call_method, get_method  # noqa: E402
from attrflow.models import WrappedModel  # noqa: E402


def embedded_cnn() -> tuple[WrappedModel, int]:
    from attrflow.models.small_cnn import SmallCNN

    return WrappedModel(SmallCNN(8, width=16), num_classes=8).eval().requires_grad_(False), 64


def resnet18() -> tuple[WrappedModel, int]:
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    return WrappedModel(net, num_classes=1000, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).eval().requires_grad_(False), 224


def timed(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_passes(model, x, target, passes: int, max_batch: int) -> None:
    """`passes` forward+backward evaluations per image, batched like an IG path would be."""
    points = x.repeat_interleave(passes, dim=0)
    targets = target.repeat_interleave(passes)
    for chunk, t in zip(points.split(max_batch), targets.split(max_batch)):
        chunk = chunk.clone().requires_grad_(True)
        out = model(chunk).gather(1, t[:, None]).sum()
        torch.autograd.grad(out, chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="embedded_cnn,resnet18")
    args = parser.parse_args()
    from captum.attr import IntegratedGradients, Saliency

    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, {torch.get_num_threads()} threads, {args.images} images, {args.steps} steps, "
          f"max_batch {args.max_batch}, median of {args.repeats}\n")
    print("| model | method | ours ms/img | Captum ms/img | bare ms/img | ours / bare | ours / Captum |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, size = {"embedded_cnn": embedded_cnn, "resnet18": resnet18}[name]()
        model = model.to(device)
        x = torch.rand(args.images, 3, size, size, device=device)
        with torch.no_grad():
            target = model(x).argmax(1)
        ig = get_method("integrated_gradients")
        grad = get_method("gradient")
        captum_ig = IntegratedGradients(model)
        captum_sal = Saliency(model)
        params = {"steps": args.steps, "rule": "right", "baseline": "black"}

        rows = {
            "integrated_gradients": (
                lambda: call_method(ig, model, x, target, params, max_batch=args.max_batch),
                lambda: captum_ig.attribute(x, target=target, n_steps=args.steps, method="riemann_right",
                                            internal_batch_size=args.max_batch),
                lambda: bare_passes(model, x, target, args.steps, args.max_batch),
            ),
            "gradient": (
                lambda: call_method(grad, model, x, target, {}, max_batch=args.max_batch),
                lambda: captum_sal.attribute(x, target=target, abs=False),
                lambda: bare_passes(model, x, target, 1, args.max_batch),
            ),
        }
        for method, (ours, theirs, bare) in rows.items():
            ours(), theirs(), bare()  # warm-up
            t_ours, t_captum, t_bare = (timed(f, args.repeats, device) for f in (ours, theirs, bare))
            per = 1000 / args.images
            print(f"| {name} | {method} | {t_ours * per:.2f} | {t_captum * per:.2f} | {t_bare * per:.2f} | "
                  f"{t_ours / t_bare:.2f} | {t_ours / t_captum:.2f} |", flush=True)


if __name__ == "__main__":
    main()
