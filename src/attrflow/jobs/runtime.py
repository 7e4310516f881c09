"""What every job needs before and around its work: logging, start-up timing, device, seeds."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

LOG = logging.getLogger("attrflow")


# When the job's script started, where that was another process (`forkserver` sets it in the
# child that runs the job): start-up is then counted from the script's own start.
STARTED_AT: float | None = None


def process_start() -> float:
    """When this process started (epoch seconds), the interpreter's own start-up included.

    On Linux it is read as the process's start in clock ticks since boot against the seconds
    since boot (both to 10 ms). psutil's `create_time()` adds the boot time, which the kernel
    gives in whole seconds, so its ages are off by a constant of up to a second per boot (0.40 s
    on the machine of benchmarks/RESULTS.md): the fallback elsewhere.
    """
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            since_boot = float(uptime.read().split()[0])
        return time.time() - (since_boot - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil ships with snakemake; tolerate its absence outside the workflow
        return float("nan")


def process_age() -> float:
    """Seconds since the job's script started (the interpreter's own start-up included)."""
    return time.time() - (STARTED_AT if STARTED_AT is not None else process_start())


def run_job(target: str, arguments: dict[str, Any], *, log: str | None, threads: int | None = None) -> None:
    """A workflow script's one call: ``target`` ("module:function") called with ``arguments``,
    inside the job's log (see `job_log`; ``threads`` caps torch's threads, None for a job that
    never imports torch).

    A torch job of a local run goes to the fork server, which runs it in a child of a process
    that has imported torch already (`attrflow.jobs.forkserver`): the same result without
    paying the imports (≈ 1.3 s before the job's code is ready) in every job. Otherwise, or when no server takes it, the job runs here.
    """
    if threads is not None:
        from attrflow.jobs.forkserver import submit

        code = submit(log, target, int(threads), arguments, started=process_start())
        if code is not None:
            if code:
                raise SystemExit(code)
            return
    run_here(log, target, threads, arguments)


def run_here(log: str | None, target: str, threads: int | None, arguments: dict[str, Any]) -> None:
    """Run ``target`` in this process, inside `job_log`; start-up is logged once it is imported."""
    import importlib

    module, _, name = target.partition(":")
    with job_log(log, threads=threads):
        function = getattr(importlib.import_module(module), name)
        mark_ready()
        function(**arguments)


@contextlib.contextmanager
def job_log(log_path: str | os.PathLike | None, threads: int | None = None) -> Iterator[TextIO]:
    """Send the job's output to its log file, time its start-up, and log failures in full.

    `threads` caps torch's
    intra-op threads (jobs that never touch torch pass None and do not import it).
    """
    stream: TextIO
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "w", buffering=1)
    else:
        stream = sys.stderr
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        force=True,
    )
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = stream
    try:
        if threads is not None:
            import torch

            torch.set_num_threads(max(1, int(threads)))
        yield stream
        LOG.info("finished after %.3f s in total", process_age())
    except BaseException:
        stream.write(traceback.format_exc())
        raise
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        if stream is not old_err:
            stream.close()


_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("attrflow_quiet_progress", default=False)


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No progress bars inside (the Python API: a notebook call is not a job with a log)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def progress(total: int, desc: str):
    """A progress bar over samples for the job log: images done, images per second and ETA.

    Written to the log (stderr is redirected there), at most every two seconds, so
    `tail -f logs/attribute/…/shard-0.log` shows how far a long job is. Silent inside
    `quiet_progress`."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", mininterval=2.0, file=sys.stderr, dynamic_ncols=False, ascii=True,
        disable=_QUIET.get(),
    )  # fmt: skip


def mark_ready() -> None:
    """Log the job's start-up cost: process start to job code imported and ready.

    That is the interpreter, Snakemake's script preamble and our imports (torch alone is ~3 s
    on the CI machine); benchmarks/ sums these lines across jobs to report the start-up share.
    """
    LOG.info(
        "startup %.3f s (process start to job code ready%s)",
        process_age(),
        "; run by a child of the fork server" if STARTED_AT is not None else "",
    )


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config 'device' is {name!r} but no CUDA device is available")
    return device


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the configured seed and the job's identity (stable across runs)."""
    text = "\0".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator_for(device: Any, seed: int) -> Any:
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("attrflow", "torch", "numpy", "zarr", "timm", "captum", "snakemake"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    import torch

    out["cuda"] = torch.version.cuda or "none"
    return out


def device_description(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def peak_memory_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:
        return -1


def model_card_fingerprint(model_dir: str | os.PathLike) -> str:
    """The fingerprint (SHA-256 of the weights) a prepared model's ``card.json`` records."""
    import json

    card = json.loads((Path(model_dir) / "card.json").read_text())
    return str(card.get("fingerprint", ""))
