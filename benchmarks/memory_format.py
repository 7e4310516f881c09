"""Forward and forward+backward time per image of trained models in both memory layouts.

    .venv/bin/python benchmarks/memory_format.py [--models results/models/shapes_cnn ...] [--batch 64] [--size 64] [--threads 1]

`WrappedModel` runs convolutional networks channels-last; this measures what that buys against
the ordinary NCHW layout, on the same loaded weights, in one process, the two layouts taking
turns (best of ``--rounds``): the forward pass under ``no_grad`` (what the map metrics cost) and
a forward + backward to the input (what a gradient method costs). It also reports how far the
two layouts' logits and input gradients differ (float rounding). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from attrflow.models.cards import load_model


def set_layout(model, channels_last: bool) -> None:
    model.channels_last = channels_last
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for module in model.net.modules():
        if isinstance(module, nn.Conv2d):
            module.to(memory_format=layout)


def forward(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def forward_backward(model, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
    return grad


def ms_per_image(fn, model, x: torch.Tensor, repeats: int) -> float:
    fn(model, x)
    started = time.perf_counter()
    for _ in range(repeats):
        fn(model, x)
    return (time.perf_counter() - started) / repeats / x.shape[0] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path,
                        default=[Path("results/models") / n for n in ("shapes_cnn", "shapes_xcnn", "shapes_cnn_max")])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (the embedded models': 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} thread(s), best of {args.rounds} rounds of {args.repeats} calls")
    print("| model | input | NCHW fwd ms/img | channels-last fwd ms/img | speed-up | NCHW fwd+bwd ms/img | "
          "channels-last fwd+bwd ms/img | speed-up | max logit difference | max input-gradient difference (relative) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model_dir in args.models:
        model = load_model(model_dir)
        x = torch.rand(args.batch, int(model.mean.shape[1]), args.size, args.size, generator=torch.Generator().manual_seed(0))
        best = {}
        for _ in range(args.rounds):
            for channels_last in (False, True):
                set_layout(model, channels_last)
                for name, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
                    t = ms_per_image(fn, model, x, args.repeats)
                    best[name, channels_last] = min(best.get((name, channels_last), float("inf")), t)
        set_layout(model, False)
        logits_nchw, grad_nchw = forward(model, x), forward_backward(model, x)
        set_layout(model, True)
        logits_cl, grad_cl = forward(model, x), forward_backward(model, x)
        grad_diff = float((grad_nchw - grad_cl).abs().max() / grad_nchw.abs().max().clamp_min(1e-30))
        print(f"| {model_dir.name} | {args.size}² | {best['fwd', False]:.3f} | {best['fwd', True]:.3f} | "
              f"{best['fwd', False] / best['fwd', True]:.2f} | {best['fwdbwd', False]:.3f} | {best['fwdbwd', True]:.3f} | "
              f"{best['fwdbwd', False] / best['fwdbwd', True]:.2f} | {float((logits_nchw - logits_cl).abs().max()):.1e} | "
              f"{grad_diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
