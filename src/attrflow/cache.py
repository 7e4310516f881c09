"""A content-addressed cache of finished results under ``results/.cache``.

Snakemake keeps one output per path: when a config changes a shard's parameters, the shard is
recomputed in place, and Snakemake deletes the old output before the job starts. Jobs therefore
also file each finished result here under a key of everything it depends on (parameters, code
fingerprints, and the fingerprints of the inputs actually read), and look the key up before
computing. So:

* a config that comes back (another sample range, a parameter tried and reverted) reuses its
  results instead of recomputing them;
* a job that fails never costs the last good result: it is still here under its key;
* a score job re-run because one metric was added computes only that metric (each metric's rows
  are an entry of their own).

Entries are published atomically (written under a temporary name, then renamed) and placed at
their output path as hard links (a copy where links are impossible), so they cost no extra space.
Results are never modified after they are written, which is what makes sharing files safe.
`attrflow.clean` removes entries that no current output uses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from attrflow.fingerprint import canonical, value_fingerprint

CACHE_DIR = Path("results") / ".cache"


class ResultCache:
    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None

    @classmethod
    def beside(cls, out_path: str | os.PathLike) -> ResultCache:
        """The cache of the `results/` folder an output lies in (none outside a results folder)."""
        path = Path(out_path).resolve()
        for parent in path.parents:
            if parent.name == "results":
                return cls(parent / ".cache")
        return cls(None)

    @staticmethod
    def key(kind: str, **parts: Any) -> str:
        return value_fingerprint(canonical({"kind": kind, **parts}))

    def _entry(self, family: str, key: str, suffix: str = "") -> Path:
        assert self.root is not None
        return self.root / family / key[:2] / f"{key}{suffix}"

    # ----------------------------------------------------------------- directories (Zarr stores)
    def fetch_dir(self, family: str, key: str, dest: str | os.PathLike) -> bool:
        """Place the cached directory for ``key`` at ``dest``; False when there is none (or it is
        damaged: then it is discarded and the caller recomputes)."""
        from attrflow.store import verify_store

        if self.root is None:
            return False
        entry = self._entry(family, key, ".zarr")
        if not entry.is_dir():
            return False
        if verify_store(entry, deep=False):
            shutil.rmtree(entry, ignore_errors=True)
            return False
        dest = Path(dest)
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _link_tree(entry, tmp)
        from attrflow.store import publish_dir

        publish_dir(tmp, dest)
        return True

    def keep_dir(self, family: str, key: str, src: str | os.PathLike) -> None:
        """File the finished directory ``src`` under ``key`` (linked, not copied)."""
        if self.root is None:
            return
        entry = self._entry(family, key, ".zarr")
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _link_tree(Path(src), tmp)
        try:
            os.replace(tmp, entry)
        except OSError:  # filed meanwhile by a concurrent job with the same key
            shutil.rmtree(tmp, ignore_errors=True)

    # ----------------------------------------------------------------- tables (score rows)
    def read_table(self, family: str, key: str):
        import pyarrow.parquet as pq

        if self.root is None:
            return None
        entry = self._entry(family, key, ".parquet")
        if not entry.is_file():
            return None
        try:
            return pq.read_table(entry)
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
            entry.unlink(missing_ok=True)
            return None

    def write_table(self, family: str, key: str, table) -> None:
        from attrflow.report.schema import write_table

        if self.root is None:
            return
        write_table(table, self._entry(family, key, ".parquet"))

    # ----------------------------------------------------------------- housekeeping
    def entries(self) -> list[Path]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*/*/*") if ".tmp-" not in p.name)


def _link_tree(src: Path, dest: Path) -> None:
    """Copy a directory tree as hard links (a real copy across file systems)."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link)


def used_keys(results: str | os.PathLike) -> set[str]:
    """Keys the outputs under ``results`` were computed under (attribution stores' attrs and
    the score files' keys)."""
    keys: set[str] = set()
    for attrs_file in Path(results).glob("attributions/*/*/*/shard-*.zarr/zarr.json"):
        try:
            key = json.loads(attrs_file.read_text()).get("attributes", {}).get("result_key")
        except (OSError, json.JSONDecodeError):
            continue
        if key:
            keys.add(key)
    return keys
