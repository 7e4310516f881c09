"""Cost of content fingerprints and image checks while planning (`attrflow.content`).

Writes a synthetic folder of small random files (default 50 000 × 4 KiB) and a set of real small
JPEGs under a scratch directory, dates them in 2020 (a dataset copied long ago, outside the racy
window), then times, each in a fresh `FileIndex` as a new parse of the workflow would open it:

* the first `digests` pass (every file read and hashed, the cache written in one transaction);
* a re-check pass (a stat per file and one cache read: nothing re-hashed);
* `folder_fingerprint` over the whole folder on the warm cache (what planning computes);
* `check_images` on the JPEGs: the first pass (each fully decoded), then the cached pass;
* `check_model_checkpoint` on a timm ResNet-18 safetensors checkpoint (header + meta build).

The files were just written, so the first pass reads them from the page cache: a cold disk adds
its read time (195 MiB here). Run it niced on a shared machine:

    nice -n 10 .venv/bin/python benchmarks/content_fingerprint.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attrflow.content import FileIndex, check_images, folder_fingerprint  # noqa: E402

OLD_NS = 1_600_000_000 * 10**9


def timed(label: str, fn, rows: list[tuple[str, float, float]]):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    rows.append((label, time.perf_counter() - wall, time.process_time() - cpu))
    print(f"{label}: {rows[-1][1]:.2f} s wall, {rows[-1][2]:.2f} s CPU", flush=True)
    return out


def make_files(root: Path, count: int, size: int) -> list[Path]:
    rng = os.urandom
    paths = []
    for i in range(count):
        path = root / f"class{i % 100:03d}" / f"{i:06d}.bin"
        if i < 100:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng(size))
        os.utime(path, ns=(OLD_NS, OLD_NS))
        paths.append(path)
    return sorted(paths)


def make_jpegs(root: Path, count: int, side: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        # smooth random colours plus noise: a photo-like JPEG of a few KiB
        base = generator.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        pixels = np.kron(base, np.ones((side // 4, side // 4, 1), dtype=np.uint8))
        pixels = np.clip(pixels + generator.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
        path = root / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        os.utime(path, ns=(OLD_NS, OLD_NS))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per synthetic file")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--scratch", type=Path, default=None, help="default: a new folder under /tmp")
    parser.add_argument("--keep", action="store_true", help="leave the scratch folder behind")
    args = parser.parse_args()

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="attrflow-content-bench-"))
    rows: list[tuple[str, float, float]] = []
    try:
        files = timed(
            f"write {args.files} files", lambda: make_files(scratch / "files", args.files, args.size), rows
        )
        total = args.files * args.size
        print(f"folder: {args.files} files × {args.size} B = {total / 2**20:.0f} MiB", flush=True)
        cache = scratch / "cache" / "content.sqlite"
        with FileIndex(cache) as index:
            timed("digests, first pass (read + hash all, write cache)", lambda: index.digests(files), rows)
            assert index.hashed == len(files)
        with FileIndex(cache) as index:
            timed("digests, re-check (stat only, fresh FileIndex)", lambda: index.digests(files), rows)
            assert index.hashed == 0
        with FileIndex(cache) as index:
            timed(
                "folder_fingerprint, warm cache",
                lambda: folder_fingerprint(files, scratch / "files", index=index),
                rows,
            )
        print(f"cache file: {cache.stat().st_size / 2**20:.1f} MiB", flush=True)

        jpegs = timed(
            f"write {args.images} JPEGs", lambda: make_jpegs(scratch / "jpegs", args.images, args.side), rows
        )
        jpeg_bytes = sum(p.stat().st_size for p in jpegs)
        print(f"JPEGs: {args.images} × {args.side}² = {jpeg_bytes / 2**20:.1f} MiB", flush=True)
        with FileIndex(cache) as index:
            bad = timed("check_images, first pass (hash + full decode)", lambda: check_images(jpegs, index=index), rows)
            assert bad == [] and index.decoded == len(jpegs)
        with FileIndex(cache) as index:
            timed("check_images, cached", lambda: check_images(jpegs, index=index), rows)
            assert index.decoded == 0

        import torch
        import timm
        from safetensors.torch import save_file

        torch.set_num_threads(1)
        from attrflow.models.checkpoint_check import check_model_checkpoint

        net = timm.create_model("resnet18", pretrained=False, num_classes=10)
        checkpoint = scratch / "r18.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, checkpoint)
        spec = {"kind": "timm", "name": "resnet18", "checkpoint": str(checkpoint)}
        verdict = timed(
            "check_model_checkpoint resnet18 (timm imported)", lambda: check_model_checkpoint("r18", spec), rows
        )
        assert verdict is None, verdict
        import subprocess

        fresh = (
            "from attrflow.models.checkpoint_check import check_model_checkpoint as c; "
            f"assert c('r18', {spec!r}) is None"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        timed(
            "check_model_checkpoint resnet18, fresh process (imports torch + timm)",
            lambda: subprocess.run([sys.executable, "-c", fresh], env=env, check=True),
            rows,
        )
        from attrflow.models.checkpoint_check import check_model_checkpoint_cached

        with FileIndex(cache) as index:
            assert check_model_checkpoint_cached("r18", spec, index=index) is None
        os.utime(checkpoint, ns=(OLD_NS, OLD_NS))  # outside the racy window: the digest is reused
        with FileIndex(cache) as index:
            assert check_model_checkpoint_cached("r18", spec, index=index) is None  # recorded now
        cached = (
            "import sys; from attrflow.content import FileIndex; "
            "from attrflow.models.checkpoint_check import check_model_checkpoint_cached as c; "
            f"assert c('r18', {spec!r}, index=FileIndex({str(cache)!r})) is None; "
            "assert 'torch' not in sys.modules"
        )
        timed(
            "check_model_checkpoint_cached resnet18, fresh process, verdict cached (no torch)",
            lambda: subprocess.run([sys.executable, "-c", cached], env=env, check=True),
            rows,
        )
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n| step | wall s | CPU s |\n|---|---|---|")
    for label, wall, cpu in rows:
        print(f"| {label} | {wall:.2f} | {cpu:.2f} |")
    per_file = [r for r in rows if r[0].startswith("digests")]
    first_us, recheck_us = (row[1] / args.files * 1e6 for row in per_file[:2])
    print(f"per file: first {first_us:.0f} µs, re-check {recheck_us:.1f} µs")
    first = next(r for r in rows if r[0].startswith("check_images, first"))
    print(f"per image (first check): {first[1] / args.images * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
