"""What the benchmarks in this folder share: the two models, inputs, and interleaved timing.

Timings on a shared machine drift with the load of other processes. Every benchmark therefore
times all the contenders of one comparison in the same process, interleaved (one run of each,
in a rotating order, per round), and reports medians over rounds and their ratios: a load spike
then slows every contender of its round, not one. Where the load changes faster than a round,
``--clock cpu`` measures the process's CPU time (time.process_time) instead of wall time: with
``--threads 1`` that is the compute each contender did, whatever else the machine runs (it
leaves out time spent waiting, which a CPU-bound run has little of; on a GPU use wall).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attrflow.models import WrappedModel  # noqa: E402

# What `benchmarks/workflow_timing.py` leaves behind: the trained embedded CNN and its dataset.
TRAINED_CNN = ROOT / "benchmarks/out/run/results/models/shapes_cnn"
SHAPES_STORE = ROOT / "benchmarks/out/run/results/data/shapes/samples.zarr"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def embedded_cnn(trained: bool = True) -> tuple[WrappedModel, int, str]:
    """The width-16 CNN of the embedded default at 64²: trained weights when the workflow
    benchmark has left them in benchmarks/out, else random ones. Returns (model, side, origin)."""
    if trained and (TRAINED_CNN / "model.safetensors").exists():
        from attrflow.models.cards import load_model

        return load_model(TRAINED_CNN).eval().requires_grad_(False), 64, "trained shapes_cnn"
    from attrflow.models.small_cnn import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(8, width=16)
    return WrappedModel(net, num_classes=8).eval().requires_grad_(False), 64, "random weights"


def resnet18() -> tuple[WrappedModel, int, str]:
    """timm resnet18 at 224², random weights (no downloads here; speed does not depend on them)."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    model = WrappedModel(net, num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return model.eval().requires_grad_(False), 224, "random weights"


MODELS = {"embedded_cnn": embedded_cnn, "resnet18": resnet18}


def images_for(origin: str, n: int, side: int, split: str = "eval", seed: int = 0) -> torch.Tensor:
    """n images: the shapes dataset's own when the model was trained on it, else U[0, 1) noise."""
    if origin.startswith("trained") and SHAPES_STORE.exists():
        from attrflow.data.sample_store import read_samples

        samples = read_samples(SHAPES_STORE, split, 0, n)
        if samples.images.shape[0] == n:
            return torch.from_numpy(samples.images)
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    *,
    warm_up: bool = True,
    clock: str = "wall",
) -> dict[str, float]:
    """Median seconds (wall or process CPU, per ``clock``) of each contender over ``rounds``
    rounds, after one warm-up call each (``warm_up=False`` when the caller has already run each
    once).

    Each round runs every contender once, starting one further along the list than the round
    before, so that no contender always runs right after the same neighbour.
    """
    names = list(contenders)
    for name in names if warm_up else ():
        contenders[name]()
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            start = now()
            contenders[name]()
            synchronize(device)
            times[name].append(now() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def counted(model: WrappedModel, call: Callable[[], object]) -> tuple[int, int]:
    """(forward samples, backward samples) the wrapper counts during one ``call``."""
    model.reset_counters()
    call()
    return model.forward_samples, model.backward_samples


def bare_forward_backward(model: WrappedModel, x: torch.Tensor, target: torch.Tensor) -> None:
    """One batched forward + input-gradient backward of the target logits of x: the unit of
    cost of every gradient method."""
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        chosen = model(inputs).gather(1, target[:, None]).sum()
        torch.autograd.grad(chosen, inputs)


@torch.no_grad()
def bare_forward(model: WrappedModel, x: torch.Tensor) -> None:
    model(x)


def batch_of(x: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` inputs cycled from x (a full batch of the size the methods run)."""
    return x[torch.arange(size, device=x.device) % x.shape[0]].contiguous()


def add_common_arguments(parser) -> None:
    """--device and --threads, the same in every benchmark."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); 1 is steadier on a loaded machine",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (steadier on a shared CPU, with --threads 1)",
    )


def setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def description(device: torch.device, clock: str | None = None) -> str:
    timed = f", {clock} clock" if clock else ""
    return f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads{timed}"
