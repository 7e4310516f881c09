"""A workflow's results directory, opened from Python (`attrflow.open_results`).

* scores: the hive-partitioned Parquet files ``scores/dataset=…/model=…/method=…/shard-k.parquet``
  (one row per sample and metric, `attrflow.report.schema.SCORES`), read by DuckDB without loading
  them: ``results.sql("select … from scores")`` or ``results.scores(metric="deletion")`` (pandas);
* reports: ``reports/*.parquet`` (summary, comparisons, ranks, metric quality, …) by name;
* maps: ``attributions/{dataset}/{model}/{method}/shard-k.zarr``, opened lazily (`Maps`): the
  arrays are read when indexed, and each shard's provenance (method, parameters, code, model and
  dataset fingerprints, seed, device, versions, cost) is its store's attributes.

Nothing here writes: opening results never changes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

SHARD = re.compile(r"shard-(\d+)\.zarr$")


class Results:
    """The outputs of a workflow run under ``root`` (usually ``results/``)."""

    def __init__(self, root: str | Path = "results") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"results directory {str(self.root)!r} does not exist (run the workflow first)")

    def __repr__(self) -> str:
        return f"Results({str(self.root)!r})"

    # ------------------------------------------------------------------ scores
    @cached_property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with a ``scores`` view over every score file."""
        import duckdb

        connection = duckdb.connect()
        files = self.root / "scores"
        if not any(files.rglob("*.parquet")):
            raise FileNotFoundError(f"{files} holds no score files (run the workflow's score jobs first)")
        pattern = str(files / "**" / "*.parquet").replace("'", "''")
        connection.execute(
            f"create view scores as select * from read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)"
        )
        return connection

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """A DuckDB relation for ``query``, which may read the ``scores`` view."""
        return self.connection.sql(query)

    def scores(self, **equals: str) -> pd.DataFrame:
        """Score rows as a pandas DataFrame, optionally only those whose columns equal the given
        values (``scores(dataset="shapes", metric="deletion")``), filtered inside DuckDB."""
        known = set(self.connection.sql("select * from scores limit 0").columns)
        unknown = sorted(set(equals) - known)
        if unknown:
            raise ValueError(f"scores have no column(s) {unknown}; columns: {sorted(known)}")
        where = " and ".join(f'"{column}" = ?' for column in equals)
        query = "select * from scores" + (f" where {where}" if where else "")
        return self.connection.execute(query, list(equals.values())).df()

    def report(self, name: str) -> pd.DataFrame:
        """A report table (``summary``, ``comparisons``, ``ranks``, ``metric_quality``, …)."""
        import pandas as pd

        path = self.root / "reports" / f"{name}.parquet"
        if not path.is_file():
            have = sorted(p.stem for p in (self.root / "reports").glob("*.parquet"))
            raise FileNotFoundError(f"{path} does not exist; reports here: {', '.join(have) or '(none)'}")
        return pd.read_parquet(path)

    # ------------------------------------------------------------------ maps
    def evaluations(self) -> list[tuple[str, str, str]]:
        """The (dataset, model, method) triples that have maps."""
        root = self.root / "attributions"
        return sorted(
            (d.name, m.name, me.name)
            for d in _dirs(root)
            for m in _dirs(d)
            for me in _dirs(m)
            if any(SHARD.search(p.name) for p in me.iterdir())
        )

    def maps(self, dataset: str, model: str, method: str) -> Maps:
        """The maps of one (dataset, model, method), lazily."""
        folder = self.root / "attributions" / dataset / model / method
        shards = sorted(
            (int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else []) if (m := SHARD.search(p.name))
        )
        if not shards:
            have = ", ".join("/".join(t) for t in self.evaluations()) or "(none)"
            raise FileNotFoundError(f"no maps under {folder}; maps here: {have}")
        return Maps(tuple(path for _, path in shards))


def _dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


@dataclass(frozen=True)
class Maps:
    """One (dataset, model, method)'s attribution shards. Opening checks each store is complete
    (sizes against its manifest); arrays are read only when indexed."""

    paths: tuple[Path, ...]

    @cached_property
    def _groups(self) -> list[Any]:
        from attrflow.store import open_store

        return [open_store(path, deep=False) for path in self.paths]

    @property
    def provenance(self) -> list[dict[str, Any]]:
        """Each shard's attributes: method, fn, params, code/model/dataset fingerprints, seed, device,
        library versions, wall time, forward/backward passes, peak memory, applicability."""
        return [dict(group.attrs) for group in self._groups]

    @cached_property
    def ids(self) -> list[str]:
        return [i for group in self._groups for i in group["ids"][:].tolist()]

    def __len__(self) -> int:
        return len(self.ids)

    def shard(self, k: int) -> Any:
        """The zarr group of the k-th shard (``maps``, ``targets``, ``ids``, ``diagnostics``…), unread."""
        return self._groups[k]

    def __getitem__(self, sample_id: str) -> np.ndarray:
        """The map of one sample, by its id (reads one chunk)."""
        offset = 0
        for group in self._groups:
            ids = group["ids"][:].tolist()
            if sample_id in ids:
                if "maps" not in group:
                    raise ValueError(f"the method was not applicable here: {group.attrs.get('reason')}")
                return np.asarray(group["maps"][ids.index(sample_id)])
            offset += len(ids)
        raise KeyError(f"no map for sample {sample_id!r} among {offset} samples")

    def to_numpy(self) -> np.ndarray:
        """Every map, in sample order (reads them all)."""
        missing = [str(p) for p, g in zip(self.paths, self._groups, strict=True) if "maps" not in g]
        if missing:
            raise ValueError(f"the method was not applicable in {', '.join(missing)}")
        return np.concatenate([group["maps"][:] for group in self._groups])
