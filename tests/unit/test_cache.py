"""The results cache: results filed under a key of what they depend on, reused when the key
comes back, never trusted when damaged, and shared with the outputs as hard links."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from attrflow.cache import ResultCache, used_keys
from attrflow.clean import main as clean_main
from attrflow.store import MANIFEST, open_store, verify_store, write_store


def test_keys_are_canonical():
    assert ResultCache.key("x", a={"b": 1, "c": 2}, d=[1]) == ResultCache.key("x", d=[1], a={"c": 2, "b": 1})
    assert ResultCache.key("x", a=1) != ResultCache.key("x", a=2)


def test_a_kept_store_comes_back_as_links(tmp_path):
    cache = ResultCache(tmp_path / "results" / ".cache")
    out = write_store(tmp_path / "results" / "a.zarr", {"maps": np.arange(6.0)}, {"result_key": "k1"})
    cache.keep_dir("attributions", "k1", out)
    other = tmp_path / "results" / "b.zarr"
    assert cache.fetch_dir("attributions", "k1", other)
    np.testing.assert_array_equal(open_store(other)["maps"][:], np.arange(6.0))
    chunk = next(p for p in other.rglob("*") if p.is_file())
    assert chunk.stat().st_nlink >= 2, "placed as hard links, no extra space"
    assert not cache.fetch_dir("attributions", "k2", tmp_path / "results" / "c.zarr")


def test_an_output_deleted_by_a_failed_rerun_is_still_in_the_cache(tmp_path):
    import shutil

    cache = ResultCache.beside(tmp_path / "results" / "attributions" / "s.zarr")
    out = write_store(tmp_path / "results" / "attributions" / "s.zarr", {"maps": np.ones(3)}, {})
    cache.keep_dir("attributions", "good", out)
    shutil.rmtree(out)  # what Snakemake does before a job that then fails
    assert cache.fetch_dir("attributions", "good", out) and verify_store(out) == []


def test_a_damaged_entry_is_discarded_not_used(tmp_path):
    cache = ResultCache(tmp_path / ".cache")
    out = write_store(tmp_path / "a.zarr", {"maps": np.arange(100.0)}, {})
    cache.keep_dir("attributions", "k", out)
    entry = next((tmp_path / ".cache").rglob("k.zarr"))
    (entry / MANIFEST).unlink()  # a half-copied entry (the disk filled, say)
    assert not cache.fetch_dir("attributions", "k", tmp_path / "b.zarr")
    assert not entry.exists()


def test_tables_roundtrip_and_no_cache_outside_results(tmp_path):
    cache = ResultCache(tmp_path / ".cache")
    table = pa.table({"x": [1.0, 2.0]})
    cache.write_table("scores", "abc", table)
    assert cache.read_table("scores", "abc").equals(table)
    assert cache.read_table("scores", "zzz") is None
    assert ResultCache.beside(tmp_path / "elsewhere" / "f.parquet").root is None


def test_clean_removes_only_unused_entries(tmp_path, capsys):
    results = tmp_path / "results"
    cache = ResultCache(results / ".cache")
    used = write_store(results / "attributions" / "d" / "m" / "me" / "shard-0.zarr", {"maps": np.ones(2)}, {"result_key": "used"})
    cache.keep_dir("attributions", "used", used)
    cache.keep_dir("attributions", "old", used)
    assert used_keys(results) == {"used"}
    clean_main(["--results", str(results), "--cache"])
    names = {p.name for p in cache.entries()}
    assert names == {"used.zarr"}
    assert "removing" in capsys.readouterr().out
