"""What files hold, decided by their bytes: content digests and image checks for planning.

The workflow fingerprints an image folder by the SHA-256 of every file's content, so an image
overwritten under the same name is noticed, and it checks that every image decodes before any
job runs, so one bad file is reported with all the others instead of failing a job after good
outputs were replaced. Hashing and decoding 50 000 images on every parse would be too slow, so
`FileIndex` remembers each file's digest in a small SQLite database and reuses it while the
file's stat signature is unchanged.

**When a digest is reused.** The key is the absolute path plus ``(size, mtime_ns, ctime_ns,
inode)`` — the signature make and rsync trust (size and modification time), tightened with the
inode (a file replaced by another one) and the inode change time (which the kernel sets on every
write *and* on every ``utime``, so an overwrite that restores the old modification time is
still seen). Any difference re-reads the file. What is not detected: a same-size overwrite that
keeps the path, inode, mtime and ctime — i.e. one made within a single tick of the file
system's clock after the last change *and* with the mtime put back, or by writing to the disk
underneath the file system. Like git's index ("racy git"), an entry hashed less than
`RACY_WINDOW_NS` after the file's last modification is not trusted: a second write within the
same timestamp tick could otherwise leave every stat field unchanged. Such a file is re-read
next time, until its digest is older than the window.

**Verdicts** of checks on content (`verdicts`, `record_verdicts`) are keyed by content digest
and a checker string naming the check and what else it depends on: an image is decoded once per
content and Pillow version (a renamed or copied image reuses its verdict), a checkpoint is
checked against an architecture once (see `attrflow.models.checkpoint_check`).

**Robustness.** Several processes may parse the workflow at once (cluster jobs re-parse the
Snakefile): SQLite serialises the writers, with a busy timeout, in its rollback-journal mode
(WAL would need all processes on one host), and every read or write that
still fails — a locked, read-only, corrupt or missing database, or a directory that cannot be
created — turns the index into an uncached one for the rest of its life (`cache_error` says
why). Results are then the same, only slower.

This module imports only the standard library at load time (Pillow inside `check_images`): the
Snakefile imports it while planning.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BadFile",
    "FileIndex",
    "RACY_WINDOW_NS",
    "check_images",
    "file_digest",
    "folder_fingerprint",
    "format_bad_files",
    "range_fingerprint",
]

# A digest taken less than this long after the file's last modification is re-checked next
# time (2 s covers the coarsest common timestamp resolution, FAT's).
RACY_WINDOW_NS = 2_000_000_000
SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 10.0  # a writer holds the lock for one batch insert: milliseconds
_CHUNK = 1 << 20
_SQL_BATCH = 500  # host parameters per query, well under SQLite's limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    hashed_at_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    sha256 TEXT NOT NULL,
    checker TEXT NOT NULL,
    error TEXT NOT NULL,  -- '' when the content passed the check
    PRIMARY KEY (sha256, checker)
);
"""


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# (size, mtime_ns, ctime_ns, inode): while it is unchanged, the recorded digest is reused.
_Signature = tuple[int, int, int, int]


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


class FileIndex:
    """Content digests of files, cached in SQLite at `cache_path` (or nowhere, if None).

    `hashed` counts the files actually read and hashed by this index, `decoded` the images
    actually decoded by `check_images`; both let callers and tests see what the cache saved.
    Use as a context manager, or call `close`.
    """

    def __init__(self, cache_path: str | os.PathLike | None, *, create_dirs: bool = True):
        self.cache_path = Path(cache_path).absolute() if cache_path is not None else None
        self.cache_error: str | None = None if cache_path is not None else "no cache path given"
        self.hashed = 0
        self.decoded = 0
        self._db: sqlite3.Connection | None = None
        # Digests taken by this instance: reused within one parse even without a cache file.
        self._memory: dict[str, tuple[_Signature, int, str]] = {}
        if self.cache_path is not None:
            self._open(create_dirs)

    # -- life cycle -----------------------------------------------------------------------

    def _open(self, create_dirs: bool) -> None:
        assert self.cache_path is not None
        try:
            if create_dirs:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            if not self.cache_path.parent.is_dir():
                raise OSError(f"directory {self.cache_path.parent} does not exist")
            db = sqlite3.connect(self.cache_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            self._give_up(err)
            return
        try:
            # SQLite's default rollback journal, not WAL: WAL needs shared memory on one host,
            # and several cluster nodes may parse the workflow on a shared file system.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"cache schema version {version}, expected {SCHEMA_VERSION}; delete {self.cache_path}"
                )
            if version == 0:  # new: create the tables (every parse after this one only reads)
                db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
        except sqlite3.Error as err:
            db.close()
            self._give_up(err)
            return
        self._db = db

    def _give_up(self, err: BaseException) -> None:
        """Continue without the cache: every answer is computed afresh, none is wrong."""
        self.cache_error = f"{type(err).__name__}: {err}"
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None

    @property
    def cached(self) -> bool:
        """Whether digests are remembered across processes (False after any cache failure)."""
        return self._db is not None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> FileIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- digests --------------------------------------------------------------------------

    def digest(self, path: str | os.PathLike) -> str:
        """SHA-256 (hex) of `path`'s content; hashed once and reused while its stat is unchanged."""
        return self.digests([path])[0]

    def digests(self, paths: Iterable[str | os.PathLike]) -> list[str]:
        """SHA-256 of each file's content, in the order given, with one cache read and one
        write transaction for the whole batch. Raises FileNotFoundError naming every missing
        file (or one that is not a regular file)."""
        keys = [os.path.abspath(p) for p in paths]
        stats: list[os.stat_result] = []
        missing: list[str] = []
        for key in keys:
            try:
                stat = os.stat(key)
            except OSError:
                missing.append(key)
                continue
            if not _is_regular(stat):
                missing.append(key)
            stats.append(stat)
        if missing:
            raise FileNotFoundError(f"{len(missing)} file(s) missing or not regular files: {_first(missing)}")
        unseen = sorted({key for key in keys if key not in self._memory})
        known = {**self._lookup(unseen), **self._memory}
        out: list[str] = []
        fresh: dict[str, tuple[_Signature, int, str]] = {}
        for key, stat in zip(keys, stats):
            signature = _signature(stat)
            if key in fresh and fresh[key][0] == signature:
                out.append(fresh[key][2])
                continue
            row = known.get(key)
            if row is not None and row[0] == signature and signature[1] + RACY_WINDOW_NS <= row[1]:
                out.append(row[2])
                continue
            hashed_at = time.time_ns()
            digest = file_digest(key)
            self.hashed += 1
            after = _signature(os.stat(key))
            if after != signature:  # written while we read it: record nothing, report what we read
                out.append(digest)
                continue
            fresh[key] = (signature, hashed_at, digest)
            out.append(digest)
        self._memory.update(fresh)
        self._store(fresh)
        return out

    def _lookup(self, keys: Sequence[str]) -> dict[str, tuple[_Signature, int, str]]:
        if self._db is None or not keys:
            return {}
        found: dict[str, tuple[_Signature, int, str]] = {}
        try:
            for start in range(0, len(keys), _SQL_BATCH):
                batch = keys[start : start + _SQL_BATCH]
                rows = self._db.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, hashed_at_ns, sha256 FROM files "
                    f"WHERE path IN ({','.join('?' * len(batch))})",
                    batch,
                )
                for path, size, mtime_ns, ctime_ns, inode, hashed_at, digest in rows:
                    found[path] = ((size, mtime_ns, ctime_ns, inode), hashed_at, digest)
        except sqlite3.Error as err:
            self._give_up(err)
            return {}
        return found

    def _store(self, fresh: dict[str, tuple[_Signature, int, str]]) -> None:
        if self._db is None or not fresh:
            return
        rows = [
            (path, *signature, hashed_at, digest) for path, (signature, hashed_at, digest) in fresh.items()
        ]
        self._write(
            "INSERT OR REPLACE INTO files (path, size, mtime_ns, ctime_ns, inode, hashed_at_ns, sha256) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _write(self, sql: str, rows: list[tuple]) -> None:
        assert self._db is not None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._give_up(err)

    # -- verdicts of checks on content ------------------------------------------------------

    def verdicts(self, digests: Iterable[str], checker: str) -> dict[str, str]:
        """Remembered results of `checker` on contents `digests`: ``{digest: error}``, where
        ``''`` means the content passed. Digests never checked are absent.

        `checker` names the check and everything its result depends on besides the content
        (library versions, settings), so that a change there starts afresh.
        """
        digests = sorted(set(digests))
        if self._db is None or not digests:
            return {}
        found: dict[str, str] = {}
        try:
            for start in range(0, len(digests), _SQL_BATCH):
                batch = list(digests[start : start + _SQL_BATCH])
                rows = self._db.execute(
                    "SELECT sha256, error FROM verdicts WHERE checker = ? "
                    f"AND sha256 IN ({','.join('?' * len(batch))})",
                    [checker, *batch],
                )
                found.update(rows)
        except sqlite3.Error as err:
            self._give_up(err)
            return {}
        return found

    def record_verdicts(self, verdicts: Mapping[str, str], checker: str) -> None:
        """Remember ``{digest: error}`` results of `checker` (``''`` = passed), in one transaction."""
        if self._db is None or not verdicts:
            return
        self._write(
            "INSERT OR REPLACE INTO verdicts (sha256, checker, error) VALUES (?, ?, ?)",
            [(digest, checker, error) for digest, error in verdicts.items()],
        )


def _is_regular(stat: os.stat_result) -> bool:
    import stat as stat_module

    return stat_module.S_ISREG(stat.st_mode)


def _first(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class BadFile:
    """A file that cannot be used as an image, and why (a short reason)."""

    path: str
    reason: str


def check_images(paths: Iterable[str | os.PathLike], *, index: FileIndex) -> list[BadFile]:
    """Every file of `paths` that does not fully decode to an RGB image, in the order given.

    Each image is decoded completely (``Image.open(p).load()`` then ``convert("RGB")``, as the
    dataset preparation does; ``verify()`` would miss a truncated JPEG), with
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` off. Verdicts are remembered in `index` by content
    digest, so each content is decoded once. Missing files are reported too.
    """
    from PIL import Image, ImageFile

    checker = f"Pillow {Image.__version__}; load+convert RGB; strict"
    listed = [os.path.abspath(p) for p in paths]
    bad: dict[str, str] = {}
    present: list[str] = []
    for path in listed:
        if not os.path.isfile(path):
            bad[path] = "does not exist" if not os.path.exists(path) else "is not a regular file"
        else:
            present.append(path)
    digests = index.digests(present)
    known = index.verdicts(digests, checker)
    new: dict[str, str] = {}
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, never decode as grey
    try:
        for path, digest in zip(present, digests):
            if digest in known:
                error = known[digest]
            elif digest in new:
                error = new[digest]
            else:
                error = _decode_error(path, Image)
                index.decoded += 1
                new[digest] = error
            if error:
                bad[path] = error
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    index.record_verdicts(new, checker)
    return [BadFile(path, bad[path]) for path in listed if path in bad]


def _decode_error(path: str, Image) -> str:
    """'' when `path` decodes completely to RGB, otherwise a short reason."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd EXIF; only errors matter here
            with Image.open(path) as image:
                image_format = image.format or "image"
                try:
                    image.load()
                    image.convert("RGB")
                except OSError as err:
                    text = str(err)
                    if "truncated" in text or "broken data stream" in text:
                        return f"truncated {image_format} ({text})"
                    return f"{image_format} does not decode ({text})"
    except Image.UnidentifiedImageError:
        return "cannot identify image file (not an image, or a format Pillow cannot read)"
    except Image.DecompressionBombError as err:
        return f"too large to decode safely ({err})"
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # what Pillow plugins raise for bad data
        if "truncated" in str(err).lower():
            return f"truncated file ({err})"
        return f"does not decode ({type(err).__name__}: {err})"
    return ""


def format_bad_files(bad: Sequence[BadFile], limit: int = 20, *, what: str = "image file") -> str:
    """A message naming every bad file: the count, the first `limit`, and how many more."""
    if not bad:
        return ""
    lines = [f"{len(bad)} {what}{'s' if len(bad) != 1 else ''} cannot be used:"]
    lines += [f"  {item.path}: {item.reason}" for item in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  … and {len(bad) - limit} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Fingerprints of file sets


def folder_fingerprint(
    paths: Sequence[str | os.PathLike], relative_to: str | os.PathLike, *, index: FileIndex
) -> str:
    """SHA-256 (hex) over ``(relative posix path, content digest)`` of `paths`, in the order given.

    Independent of where the folder lies (paths are taken relative to `relative_to`) and of
    timestamps; any renamed, added, removed, reordered or changed file changes it.
    """
    return range_fingerprint(paths, relative_to, 0, len(paths), index=index)


def range_fingerprint(
    paths: Sequence[str | os.PathLike],
    relative_to: str | os.PathLike,
    start: int,
    stop: int,
    *,
    index: FileIndex,
) -> str:
    """`folder_fingerprint` of ``paths[start:stop]`` — e.g. the images of one shard.

    The slice bounds are hashed too, so the same files at other positions give another value.
    A range past the end of `paths` is an error, not a shorter slice.
    """
    if not 0 <= start <= stop <= len(paths):
        raise IndexError(f"range [{start}, {stop}) is outside the {len(paths)} paths given")
    # os.path on strings, not pathlib: planning does this for every image of a folder.
    base = os.path.join(os.path.abspath(relative_to), "")
    chosen = [os.path.abspath(p) for p in paths[start:stop]]
    h = hashlib.sha256(f"attrflow-files/1 [{start}, {stop})\n".encode())
    for path, digest in zip(chosen, index.digests(chosen)):
        if not path.startswith(base):
            raise ValueError(f"{path} is not inside {base.rstrip(os.sep)}")
        relative = path[len(base) :].replace(os.sep, "/")
        h.update(f"{len(relative.encode())}:{relative}\0{digest}\n".encode())
    return h.hexdigest()
