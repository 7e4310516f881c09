"""Content digests, image checks and file-set fingerprints used while planning (attrflow.content)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attrflow.content import (
    RACY_WINDOW_NS,
    BadFile,
    FileIndex,
    check_images,
    folder_fingerprint,
    format_bad_files,
    range_fingerprint,
)

OLD_NS = 1_600_000_000 * 10**9  # September 2020: far outside the racy window


def write(path: Path, data: bytes, mtime_ns: int | None = OLD_NS) -> Path:
    """Write `data`; by default date the file in 2020, as a dataset that was copied long ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def jpeg_bytes(seed: int, size: int = 32) -> bytes:
    import io

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Digests


def test_digest_is_the_sha256_of_the_content(tmp_path):
    path = write(tmp_path / "a.bin", b"hello")
    with FileIndex(tmp_path / "cache" / "content.sqlite") as index:
        assert index.cached
        assert index.digest(path) == sha(b"hello")


def test_unchanged_files_are_hashed_once_across_index_instances(tmp_path):
    paths = [write(tmp_path / f"d/{i}.bin", bytes([i]) * 100) for i in range(5)]
    cache = tmp_path / "content.sqlite"
    with FileIndex(cache) as first:
        assert first.digests(paths) == [sha(bytes([i]) * 100) for i in range(5)]
        assert first.hashed == 5
        first.digests(paths)
        assert first.hashed == 5
    with FileIndex(cache) as second:  # a later parse of the workflow, another process alike
        assert second.digests(paths) == [sha(bytes([i]) * 100) for i in range(5)]
        assert second.hashed == 0


def test_same_size_overwrite_is_detected_by_its_new_mtime(tmp_path):
    path = write(tmp_path / "img.jpg", b"AAAA", mtime_ns=OLD_NS)
    cache = tmp_path / "content.sqlite"
    with FileIndex(cache) as index:
        assert index.digest(path) == sha(b"AAAA")
    write(path, b"BBBB", mtime_ns=OLD_NS + 10**9)  # same size, a later modification time
    with FileIndex(cache) as index:
        assert index.digest(path) == sha(b"BBBB")
        assert index.hashed == 1


def test_overwrite_right_after_hashing_is_detected_even_within_one_clock_tick(tmp_path):
    """A file written, hashed and overwritten within one timestamp tick keeps every stat field;
    the racy-window rule re-reads recently modified files, so this is still seen."""
    path = write(tmp_path / "img.jpg", b"AAAA", mtime_ns=None)
    cache = tmp_path / "content.sqlite"
    with FileIndex(cache) as index:
        assert index.digest(path) == sha(b"AAAA")
    path.write_bytes(b"BBBB")
    with FileIndex(cache) as index:
        assert index.digest(path) == sha(b"BBBB")


def test_overwrite_with_the_old_mtime_put_back_is_detected_by_ctime(tmp_path):
    path = write(tmp_path / "img.jpg", b"AAAA")
    cache = tmp_path / "content.sqlite"
    with FileIndex(cache) as index:
        assert index.digest(path) == sha(b"AAAA")
    recorded_ctime = path.stat().st_ctime_ns
    write(path, b"BBBB", mtime_ns=OLD_NS)
    while path.stat().st_ctime_ns == recorded_ctime:  # wait out the file system's clock tick
        time.sleep(0.01)
        os.utime(path, ns=(OLD_NS, OLD_NS))
    assert path.stat().st_mtime_ns == OLD_NS and path.stat().st_size == 4
    with FileIndex(cache) as index:
        assert index.digest(path) == sha(b"BBBB")


def test_a_file_replaced_by_a_rename_is_detected_by_its_inode(tmp_path):
    path = write(tmp_path / "img.jpg", b"AAAA")
    cache = tmp_path / "content.sqlite"
    with FileIndex(cache) as index:
        index.digest(path)
    replacement = write(tmp_path / "new.jpg", b"BBBB")
    os.replace(replacement, path)
    with FileIndex(cache) as index:
        assert index.digest(path) == sha(b"BBBB")


def test_recently_modified_files_are_rehashed_until_outside_the_racy_window(tmp_path):
    now = time.time_ns()
    path = write(tmp_path / "new.bin", b"x", mtime_ns=now)
    with FileIndex(tmp_path / "content.sqlite") as index:
        index.digest(path)
        index.digest(path)
        assert index.hashed == 2  # not trusted: modified less than RACY_WINDOW_NS before hashing
        os.utime(path, ns=(now - 2 * RACY_WINDOW_NS, now - 2 * RACY_WINDOW_NS))
        index.digest(path)
        index.digest(path)
        assert index.hashed == 3


def test_missing_files_are_all_named(tmp_path):
    present = write(tmp_path / "a.bin", b"a")
    with FileIndex(None) as index, pytest.raises(FileNotFoundError) as err:
        index.digests([present, tmp_path / "gone1.bin", tmp_path / "gone2.bin"])
    assert "2 file(s)" in str(err.value) and "gone1.bin" in str(err.value) and "gone2.bin" in str(err.value)


def test_unwritable_cache_location_works_uncached(tmp_path):
    blocker = write(tmp_path / "not-a-dir", b"")
    path = write(tmp_path / "a.bin", b"a")
    with FileIndex(blocker / "attrflow" / "content.sqlite") as index:
        assert not index.cached and index.cache_error
        assert index.digest(path) == sha(b"a")
        assert index.digest(path) == sha(b"a")
        assert index.hashed == 1  # remembered within the instance
    with FileIndex(blocker / "attrflow" / "content.sqlite") as index:
        assert index.digest(path) == sha(b"a")
        assert index.hashed == 1  # but not across instances


def test_missing_cache_directory_without_create_works_uncached(tmp_path):
    path = write(tmp_path / "a.bin", b"a")
    with FileIndex(tmp_path / "absent" / "content.sqlite", create_dirs=False) as index:
        assert not index.cached
        assert index.digest(path) == sha(b"a")
    assert not (tmp_path / "absent").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_cache_directory_works_uncached(tmp_path):
    path = write(tmp_path / "a.bin", b"a")
    cache_dir = tmp_path / "ro"
    cache_dir.mkdir()
    cache_dir.chmod(0o555)
    try:
        with FileIndex(cache_dir / "content.sqlite") as index:
            assert not index.cached
            assert index.digest(path) == sha(b"a")
    finally:
        cache_dir.chmod(0o755)


def test_corrupt_cache_file_works_uncached(tmp_path):
    cache = write(tmp_path / "content.sqlite", b"this is not a database" * 100)
    path = write(tmp_path / "a.bin", b"a")
    with FileIndex(cache) as index:
        assert not index.cached and "DatabaseError" in index.cache_error
        assert index.digest(path) == sha(b"a")


def _hash_folder(args: tuple[str, str, int]) -> tuple[list[str], list[str | None]]:
    cache, folder, rounds = args
    out: list[str] = []
    errors: list[str | None] = []
    for _ in range(rounds):
        with FileIndex(cache) as index:
            paths = sorted(Path(folder).iterdir())
            out = index.digests(paths)
            assert check_images(paths[:3], index=index) == []
            errors.append(index.cache_error)
    return out, errors


def test_concurrent_processes_share_the_cache_without_errors(tmp_path):
    folder = tmp_path / "images"
    for i in range(40):
        write(folder / f"{i:03d}.jpg", jpeg_bytes(i, 8))
    cache = str(tmp_path / "cache" / "content.sqlite")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a SLURM job's parse
    with context.Pool(3) as pool:
        results = pool.map(_hash_folder, [(cache, str(folder), 4)] * 3)
    expected = [sha((folder / f"{i:03d}.jpg").read_bytes()) for i in range(40)]
    assert [digests for digests, _ in results] == [expected] * 3
    assert [errors for _, errors in results] == [[None] * 4] * 3  # nobody fell back to uncached
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 40
    with FileIndex(cache) as index:
        assert index.digests(sorted(folder.iterdir())) == expected and index.hashed == 0


# --------------------------------------------------------------------------------------------
# Images


def test_every_bad_image_is_reported_in_one_call(tmp_path):
    good = write(tmp_path / "cup" / "good.jpg", jpeg_bytes(0))
    whole = jpeg_bytes(1)
    truncated = write(tmp_path / "cup" / "truncated.jpg", whole[: len(whole) // 2])
    text = write(tmp_path / "cat" / "notes.jpg", b"not an image at all\n" * 10)
    png = tmp_path / "cat" / "ok.png"
    Image.new("L", (8, 8), 200).save(png)  # grayscale: must convert to RGB
    missing = tmp_path / "cat" / "missing.jpg"
    with FileIndex(tmp_path / "content.sqlite") as index:
        bad = check_images([good, truncated, text, png, missing], index=index)
    assert [b.path for b in bad] == [str(truncated), str(text), str(missing)]
    assert bad[0].reason.startswith("truncated JPEG") and "truncated" in bad[0].reason
    assert bad[1].reason.startswith("cannot identify image file")
    assert bad[2].reason == "does not exist"


def test_truncated_images_fail_even_if_someone_enabled_lenient_loading(tmp_path):
    from PIL import ImageFile

    whole = jpeg_bytes(2)
    truncated = write(tmp_path / "t.jpg", whole[: len(whole) // 2])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        bad = check_images([truncated], index=FileIndex(None))
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert [b.path for b in bad] == [str(truncated)]


def test_image_verdicts_are_cached_by_content(tmp_path):
    whole = jpeg_bytes(3)
    paths = [write(tmp_path / f"{i}.jpg", jpeg_bytes(10 + i)) for i in range(3)]
    paths.append(write(tmp_path / "bad.jpg", whole[:200]))
    cache = tmp_path / "content.sqlite"
    with FileIndex(cache) as index:
        first = check_images(paths, index=index)
        assert index.decoded == 4
    with FileIndex(cache) as index:
        assert check_images(paths, index=index) == first
        assert index.decoded == 0 and index.hashed == 0
        copy = write(tmp_path / "copy-of-bad.jpg", whole[:200])  # same content, other name
        assert check_images([copy], index=index) == [BadFile(str(copy), first[0].reason)]
        assert index.decoded == 0 and index.hashed == 1


def test_a_repaired_image_is_checked_again(tmp_path):
    whole = jpeg_bytes(4)
    path = write(tmp_path / "x.jpg", whole[:300])
    cache = tmp_path / "content.sqlite"
    with FileIndex(cache) as index:
        assert len(check_images([path], index=index)) == 1
    write(path, whole, mtime_ns=OLD_NS + 10**9)
    with FileIndex(cache) as index:
        assert check_images([path], index=index) == []


def test_format_bad_files_names_count_first_n_and_the_rest():
    bad = [BadFile(f"/data/{i}.jpg", "cannot identify image file") for i in range(25)]
    message = format_bad_files(bad, limit=20)
    lines = message.splitlines()
    assert lines[0] == "25 image files cannot be used:"
    assert lines[1] == "  /data/0.jpg: cannot identify image file"
    assert lines[20] == "  /data/19.jpg: cannot identify image file"
    assert lines[21] == "  … and 5 more"
    assert len(lines) == 22
    assert format_bad_files(bad[:1]).splitlines()[0] == "1 image file cannot be used:"
    assert format_bad_files([]) == ""


# --------------------------------------------------------------------------------------------
# Fingerprints


def test_folder_fingerprint_follows_content_and_relative_names_not_location(tmp_path):
    def make(root: Path) -> list[Path]:
        return [write(root / "cup" / "a.jpg", b"aa"), write(root / "dog" / "b.jpg", b"bb")]

    index = FileIndex(tmp_path / "content.sqlite")
    here, there = make(tmp_path / "here"), make(tmp_path / "moved" / "there")
    reference = folder_fingerprint(here, tmp_path / "here", index=index)
    assert folder_fingerprint(there, tmp_path / "moved" / "there", index=index) == reference
    # Hand-computed: the documented framing over (relative path, digest) pairs.
    h = hashlib.sha256(b"attrflow-files/1 [0, 2)\n")
    for name, data in (("cup/a.jpg", b"aa"), ("dog/b.jpg", b"bb")):
        h.update(f"{len(name)}:{name}\0{sha(data)}\n".encode())
    assert reference == h.hexdigest()
    assert folder_fingerprint(here[::-1], tmp_path / "here", index=index) != reference
    write(here[1], b"bc", mtime_ns=OLD_NS + 10**9)
    assert folder_fingerprint(here, tmp_path / "here", index=index) != reference
    os.rename(here[1], here[1].with_name("c.jpg"))
    renamed = [here[0], here[1].with_name("c.jpg")]
    assert folder_fingerprint(renamed, tmp_path / "here", index=index) != reference


def test_range_fingerprint_changes_only_for_the_ranges_a_change_touches(tmp_path):
    index = FileIndex(None)
    paths = [write(tmp_path / f"{i:02d}.jpg", bytes([i]) * 4) for i in range(10)]
    before = [range_fingerprint(paths, tmp_path, s, s + 5, index=index) for s in (0, 5)]
    write(paths[7], b"\xff" * 4, mtime_ns=OLD_NS + 10**9)
    after = [range_fingerprint(paths, tmp_path, s, s + 5, index=index) for s in (0, 5)]
    assert after[0] == before[0] and after[1] != before[1]
    with pytest.raises(IndexError, match=r"\[5, 11\) is outside the 10 paths"):
        range_fingerprint(paths, tmp_path, 5, 11, index=index)
    with pytest.raises(ValueError, match="is not inside"):
        range_fingerprint(paths, tmp_path / "elsewhere", 0, 1, index=index)
