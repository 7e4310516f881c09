"""Zarr stores: atomic publish, manifest verification, damage detection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attrflow.store import MANIFEST, StoreError, content_key, open_store, read_attrs, verify_store, write_store


def _write(path):
    rng = np.random.default_rng(0)
    arrays = {"maps": rng.normal(size=(10, 8, 8)).astype(np.float32), "ids": np.array([f"s{i}" for i in range(10)])}
    return write_store(path, arrays, {"method": "m", "params": {"steps": np.int64(3)}}, groups={"diagnostics": {"r": np.arange(10.0)}}), arrays


def test_roundtrip_and_attrs(tmp_path):
    path, arrays = _write(tmp_path / "s.zarr")
    group = open_store(path)
    np.testing.assert_array_equal(group["maps"][:], arrays["maps"])
    assert group["ids"][:].tolist() == arrays["ids"].tolist()
    np.testing.assert_array_equal(group["diagnostics"]["r"][:], np.arange(10.0))
    attrs = read_attrs(path)
    assert attrs["params"] == {"steps": 3} and attrs["method"] == "m"
    assert verify_store(path) == []
    assert not list(tmp_path.glob("*.tmp-*")), "no temporary directory is left behind"


def test_republish_replaces_instead_of_merging(tmp_path):
    path, _ = _write(tmp_path / "s.zarr")
    write_store(path, {"other": np.zeros(3)}, {})
    group = open_store(path)
    assert "maps" not in group and "other" in group


def test_truncated_chunk_is_detected(tmp_path):
    path, _ = _write(tmp_path / "s.zarr")
    chunk = next(p for p in (path / "maps").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-5])
    assert verify_store(path, deep=False)
    with pytest.raises(StoreError, match="s.zarr"):
        open_store(path)
    assert path.exists(), "detection never moves or deletes anything"


def test_same_size_edit_is_caught_by_deep_check(tmp_path):
    path, _ = _write(tmp_path / "s.zarr")
    meta = path / "zarr.json"
    text = meta.read_text().replace('"m"', '"x"')
    meta.write_text(text)
    assert verify_store(path, deep=False) == []
    assert any("differs" in p for p in verify_store(path, deep=True))


def test_half_written_store_has_no_manifest(tmp_path):
    path, _ = _write(tmp_path / "s.zarr")
    (path / MANIFEST).unlink()
    assert "never completely written" in verify_store(path)[0]


def test_content_key_follows_content_not_time(tmp_path):
    first, _ = _write(tmp_path / "a.zarr")
    second, _ = _write(tmp_path / "b.zarr")
    assert content_key(first) == content_key(second)
    write_store(second, {"maps": np.ones(3)}, {})
    assert content_key(first) != content_key(second)


def test_non_json_attribute_is_refused(tmp_path):
    with pytest.raises(TypeError, match="not JSON"):
        write_store(tmp_path / "s.zarr", {"a": np.zeros(2)}, {"bad": object()})
    assert not (tmp_path / "s.zarr").exists()


def test_manifest_lists_every_file(tmp_path):
    path, _ = _write(tmp_path / "s.zarr")
    manifest = json.loads((path / MANIFEST).read_text())
    listed = set(manifest["files"])
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert listed == on_disk


def test_reading_lists_no_sidecar_files_and_warns_nothing(tmp_path):
    import warnings

    path, _ = _write(tmp_path / "s.zarr")
    (path / ".snakemake_timestamp").write_text("")  # Snakemake adds this to directory outputs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = sorted(dict(open_store(path).members()))
    assert members == ["diagnostics", "ids", "maps"]
