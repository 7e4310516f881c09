"""Zarr stores with atomic publish, a content manifest and provenance attributes.

Every store attrflow writes (samples, attribution shards, axiom inputs) goes through
`write_store`: the arrays are written under a temporary sibling path, a manifest with the size
and SHA-256 of every file is added, and the directory is moved into place with `os.replace` as
the last act. A store at its final path is therefore complete by construction, and
`verify_store` can tell a truncated, edited or half-copied store from a good one: cheaply
(sizes, used while the workflow plans) or deeply (hashes, used before a store is read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "attrflow-manifest.json"
FORMAT = "attrflow-store/1"
# Snakemake drops this file into directory outputs after the job; it is not part of the store.
IGNORED_FILES = {".snakemake_timestamp"}
TARGET_CHUNK_BYTES = 2 << 20


class StoreError(RuntimeError):
    """A store is missing, incomplete or corrupted. The message names the path."""


def _chunks_for(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk along the first (sample) axis only, about TARGET_CHUNK_BYTES per chunk."""
    if not shape:
        return ()
    per_sample = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    k = max(1, min(shape[0], TARGET_CHUNK_BYTES // per_sample))
    return (k, *shape[1:])


def _write_arrays(group: Any, arrays: Mapping[str, np.ndarray]) -> None:
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind in "OUT":
            data = np.asarray(value, dtype=str)
            arr = group.create_array(name, shape=data.shape, dtype=str, chunks=data.shape or None)
            if data.size:
                arr[...] = data
            continue
        # An empty array (e.g. no accepted axiom sample) still needs a valid chunk shape.
        chunks = _chunks_for(value.shape, value.dtype.itemsize) if value.size else tuple(max(1, d) for d in value.shape)
        arr = group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks)
        if value.size:
            arr[...] = value


def _manifest(root: Path) -> dict[str, dict[str, int | str]]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in IGNORED_FILES and path.name != MANIFEST:
            rel = path.relative_to(root).as_posix()
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_store(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """Write arrays (and optional sub-groups of arrays) with attrs, then publish atomically."""
    import zarr

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = {"attrflow_format": FORMAT, **_jsonable(dict(attrs))}
    root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", attributes=meta)
    _write_arrays(root, arrays)
    for group_name, group_arrays in (groups or {}).items():
        _write_arrays(root.create_group(group_name), group_arrays)
    manifest = {"format": FORMAT, "written_at": time.time(), "files": _manifest(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    publish_dir(tmp, final)
    return final


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an older one at `final` is replaced, not merged."""
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def verify_store(path: str | os.PathLike, deep: bool = True) -> list[str]:
    """Problems found in the store at `path` (empty when it is complete and intact)."""
    root = Path(path)
    if not root.is_dir():
        return [f"{root} does not exist"]
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        return [f"{root} has no {MANIFEST}: it was never completely written"]
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return [f"{manifest_path} is unreadable ({err})"]
    problems = []
    for rel, expected in files.items():
        f = root / rel
        if not f.is_file():
            problems.append(f"{root}: {rel} is missing")
        elif f.stat().st_size != expected["size"]:
            problems.append(f"{root}: {rel} has {f.stat().st_size} bytes, expected {expected['size']}")
        elif deep and _sha256(f) != expected["sha256"]:
            problems.append(f"{root}: {rel} content differs from its manifest hash")
    return problems


# Files that live beside a store's Zarr hierarchy: our manifest, and the timestamp Snakemake
# writes into every directory output. Zarr would list them as group members and warn that they
# are not part of the hierarchy; a reader through `open_store` does not see them.
NOT_ZARR = frozenset({MANIFEST, ".snakemake_timestamp"})


def _reading_store(path: Path) -> Any:
    import zarr

    class StoreWithoutSidecars(zarr.storage.LocalStore):
        async def list_dir(self, prefix: str):
            async for key in super().list_dir(prefix):
                if not (prefix == "" and key in NOT_ZARR):
                    yield key

    return StoreWithoutSidecars(path, read_only=True)


def open_store(path: str | os.PathLike, deep: bool = True) -> Any:
    """Open a verified store read-only as a zarr group; raise StoreError naming the problem."""
    import zarr

    problems = verify_store(path, deep=deep)
    if problems:
        raise StoreError(
            "refusing to read a damaged store: " + "; ".join(problems[:5])
            + ("" if len(problems) <= 5 else f" (and {len(problems) - 5} more)")
            + ". Delete it and re-run to recompute."
        )
    return zarr.open_group(_reading_store(Path(path)), mode="r")


def content_key(path: str | os.PathLike) -> str:
    """A fingerprint of a finished store's content: the hashes its manifest lists."""
    from attrflow.fingerprint import value_fingerprint

    manifest = json.loads((Path(path) / MANIFEST).read_text())
    return value_fingerprint(manifest["files"])


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    meta = json.loads((Path(path) / "zarr.json").read_text())
    return dict(meta.get("attributes", {}))


def _jsonable(value: Any) -> Any:
    """Attributes must be JSON: convert numpy scalars/arrays and paths, reject the rest loudly."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"store attribute value {value!r} of type {type(value).__name__} is not JSON")
