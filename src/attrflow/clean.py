"""Explicit clean-up of a results folder: ``python -m attrflow.clean [--damaged] [--cache] [--unplanned CONFIG] [-n]``.

Planning never deletes anything (a dry run of another config must not cost this config's
results), so removing things is this command's job, and it says what it removes:

* ``--damaged``: finished stores whose files no longer match their manifest;
* ``--cache``: entries of ``results/.cache`` that no current output was computed under (results
  of configs tried earlier; they make a config that comes back free, at the price of disk).
  Score entries are kept while their attribution is.
* ``--unplanned CONFIG``: per-shard score files under ``results/scores`` that CONFIG does not
  plan (a method dropped from ``run``, fewer samples, shards grouped otherwise), so that reading
  the partitioned set directly (DuckDB, ``pyarrow.dataset``) sees that config's rows only. Their
  rows stay in the cache: a config that plans them again gets them back without computing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from attrflow.cache import ResultCache, used_keys
from attrflow.store import verify_store


def damaged_stores(results: Path) -> list[Path]:
    found = []
    for manifest_dir in sorted(p for p in results.rglob("*.zarr") if p.is_dir() and ".cache" not in p.parts):
        if ".tmp-" in manifest_dir.name:
            continue
        if verify_store(manifest_dir, deep=False):
            found.append(manifest_dir)
    return found


def unused_cache_entries(results: Path) -> list[Path]:
    cache = ResultCache(results / ".cache")
    keep = used_keys(results)
    kept_scores = _score_keys(results)
    unused = []
    for entry in cache.entries():
        key = entry.name.split(".")[0]
        if key not in keep and key not in kept_scores:
            unused.append(entry)
    return unused


def _score_keys(results: Path) -> set[str]:
    import json

    import pyarrow.parquet as pq

    keys: set[str] = set()
    for path in results.glob("scores/**/*.parquet"):
        meta = pq.read_schema(path).metadata or {}
        keys.update(json.loads(meta.get(b"attrflow.keys", b"{}")).values())
    return keys


def unplanned_score_files(results: Path, config_path: Path, workdir: Path) -> list[Path]:
    import yaml

    from attrflow.config import validate_config
    from attrflow.plan import Plan

    plan = Plan(validate_config(yaml.safe_load(config_path.read_text()), workdir=workdir), workdir=str(workdir))
    planned = {Path(path) for path in plan.score_files(str(results))}
    return sorted(path for path in results.glob("scores/dataset=*/model=*/method=*/*.parquet") if path not in planned)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attrflow.clean", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", help="the results folder (default: results)")
    parser.add_argument("--damaged", action="store_true", help="remove damaged stores")
    parser.add_argument("--cache", action="store_true", help="remove cache entries no current output uses")
    parser.add_argument("--unplanned", type=Path, metavar="CONFIG", help="remove score files CONFIG does not plan")
    parser.add_argument("-n", "--dry-run", action="store_true", help="only list what would be removed")
    args = parser.parse_args(argv)
    results = Path(args.results)
    if not (args.damaged or args.cache or args.unplanned):
        parser.error("say what to remove: --damaged, --cache and/or --unplanned CONFIG")
    targets = (damaged_stores(results) if args.damaged else []) + (
        unused_cache_entries(results) if args.cache else []
    )
    if args.unplanned:
        targets += unplanned_score_files(results, args.unplanned, Path.cwd())
    for path in targets:
        print(("would remove " if args.dry_run else "removing ") + str(path))
        if not args.dry_run:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    print(f"{len(targets)} path(s) {'to remove' if args.dry_run else 'removed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
