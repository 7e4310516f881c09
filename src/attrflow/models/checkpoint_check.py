"""Check a model entry's checkpoint against its architecture before any job runs.

A checkpoint whose keys or shapes do not fit the architecture would otherwise fail inside the
``prepare_model`` job — after the previous good outputs may already have been replaced, and one
model per run. `check_model_checkpoint` reads only the checkpoint's *header* (names, shapes,
dtypes), builds the architecture the entry describes on PyTorch's ``meta`` device (shapes
without memory or weights), and reports every problem at once: missing and unexpected keys,
shape mismatches, a prefix shared by all keys (``model.``, ``state_dict.``) and how to strip it,
and tensors nested under a wrapper key that the loader does not unwrap.

It mirrors `attrflow.models.checkpoints` and `attrflow.models.hub` exactly: the same accepted suffixes, the same wrapper keys
(``state_dict``, ``model``, ``model_state_dict``) unwrapped, a ``module.`` prefix (DataParallel)
stripped, the number of classes read from the checkpoint's classifier when the entry does not
give ``num_classes``, and the architecture built by `architectures.build_architecture` from the same
``{"library", "name", "kwargs", "x_dnn"}`` record the model card stores.

``.safetensors`` headers are parsed here (an 8-byte little-endian length, then a JSON table), so
checking them imports neither torch nor safetensors. ``.pt/.pth/.bin/.ckpt`` files are read with
``torch.load(weights_only=True, map_location="meta")``: tensors are never materialised and a
file holding pickled objects other than tensors and plain containers is refused, its code never
run. `expected_shapes` needs torch and timm/torchvision; `check_model_checkpoint_cached`
remembers each verdict in an `attrflow.content.FileIndex` by the checkpoint's content digest, so
planning imports torch only when a checkpoint, its model entry or the libraries changed.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from math import prod
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "STATE_DICT_KEYS",
    "CheckpointError",
    "CheckpointHeader",
    "check_model_checkpoint",
    "check_model_checkpoint_cached",
    "checkpoint_header",
    "compare_state_dict",
    "expected_shapes",
]

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Wrappers under which training scripts commonly nest the state dict; the loader unwraps these.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
# Prefix the loader removes when every key has it (torch.nn.DataParallel / DistributedDataParallel).
DATA_PARALLEL_PREFIX = "module."
LISTED = 8  # problems of one kind named in full before "… (N more)"

Shape = tuple[int, ...]

# Bytes per element of each safetensors dtype, and the torch name it loads as.
_SAFETENSORS_DTYPES: dict[str, tuple[float, str]] = {
    "BOOL": (1, "bool"),
    "U8": (1, "uint8"),
    "I8": (1, "int8"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
    "U16": (2, "uint16"),
    "I16": (2, "int16"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "U32": (4, "uint32"),
    "I32": (4, "int32"),
    "F32": (4, "float32"),
    "U64": (8, "uint64"),
    "I64": (8, "int64"),
    "F64": (8, "float64"),
}
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


class CheckpointError(ValueError):
    """A checkpoint cannot be read as a state dict; the message names the file and why."""


class CheckpointHeader(dict):
    """``{tensor name: (shape, dtype name)}`` of a checkpoint, as the loader would see it.

    `wrapper` is the key the tensors were nested under (``"state_dict"``…) or None;
    `stripped_prefix` is ``"module."`` when the loader's DataParallel prefix was removed.
    """

    def __init__(
        self,
        entries: Mapping[str, tuple[Shape, str]],
        *,
        path: str,
        wrapper: str | None = None,
        stripped_prefix: str | None = None,
    ):
        super().__init__(entries)
        self.path = path
        self.wrapper = wrapper
        self.stripped_prefix = stripped_prefix


# --------------------------------------------------------------------------------------------
# Reading headers


def checkpoint_header(path: str | os.PathLike) -> CheckpointHeader:
    """Names, shapes and dtypes of a checkpoint's tensors, without reading or running anything else.

    Unwraps and strips exactly as `attrflow.models.checkpoints.read_state_dict` does. Raises
    `CheckpointError` naming the file for a missing, unreadable, unsafe or non-state-dict file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"checkpoint {path}: unknown format {path.suffix!r}; use one of {CHECKPOINT_SUFFIXES}")
    if path.suffix == ".safetensors":
        entries, wrapper = _safetensors_header(path), None
    else:
        entries, wrapper = _torch_header(path)
    stripped = None
    if entries and all(k.startswith(DATA_PARALLEL_PREFIX) for k in entries):
        entries = {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in entries.items()}
        stripped = DATA_PARALLEL_PREFIX
    return CheckpointHeader(entries, path=str(path), wrapper=wrapper, stripped_prefix=stripped)


def _safetensors_header(path: Path) -> dict[str, tuple[Shape, str]]:
    """Parse and validate a safetensors header: every tensor's extent must lie inside the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError(f"the file has {size} bytes, too few for a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_SAFETENSORS_HEADER, size - 8):
                raise ValueError(f"header length {length} exceeds the file ({size} bytes)")
            table = json.loads(handle.read(length))
        if not isinstance(table, dict):
            raise ValueError("the header is not a JSON object")
        data_size = size - 8 - length
        entries: dict[str, tuple[Shape, str]] = {}
        for name, info in table.items():
            if name == "__metadata__":
                continue
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            if dtype not in _SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name!r} has unknown dtype {dtype!r}")
            itemsize, torch_name = _SAFETENSORS_DTYPES[dtype]
            if not 0 <= begin <= end <= data_size:
                raise ValueError(
                    f"tensor {name!r} lies at bytes [{begin}, {end}) but the data holds {data_size} "
                    "(is the file truncated?)"
                )
            if end - begin != prod(shape) * itemsize:
                raise ValueError(f"tensor {name!r}: {end - begin} bytes do not hold shape {shape} of {dtype}")
            entries[name] = (shape, torch_name)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {detail}") from None
    return entries


def _torch_header(path: Path) -> tuple[dict[str, tuple[Shape, str]], str | None]:
    import pickle

    import torch

    def load(mmap: bool) -> Any:
        return torch.load(path, map_location="meta", weights_only=True, mmap=mmap)

    try:
        try:
            loaded = load(mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            loaded = load(mmap=False)  # the legacy (pre-zip) format cannot be memory-mapped
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing checkpoint {path}: it holds pickled objects beyond plain tensors, which could "
            f"run code when loaded (torch.load(weights_only=True) rejected it: {str(err).splitlines()[0]}). "
            "Convert it to .safetensors in a trusted environment."
        ) from None
    except Exception as err:  # a truncated zip, a text file, …: torch raises many types
        raise CheckpointError(f"checkpoint {path} is unreadable: {type(err).__name__}: {err}") from None
    wrapper = None
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded, wrapper = loaded[key], key
                break
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        nested = [
            str(k)
            for k, v in loaded.items()
            if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())
        ]
        where = f" under key {wrapper!r}" if wrapper else ""
        if nested:
            raise CheckpointError(
                f"checkpoint {path}: the tensors are nested{where} under {_names(nested)}, which attrflow "
                f"does not unwrap (it unwraps only {', '.join(map(repr, STATE_DICT_KEYS))}). Save the state "
                f"dict itself, e.g. `safetensors.torch.save_file(ckpt[{nested[0]!r}], 'model.safetensors')`"
            )
        raise CheckpointError(f"checkpoint {path}: entries{where} {_names(not_tensors)} are not tensors")
    entries = {str(k): (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in loaded.items()}
    return entries, wrapper


# --------------------------------------------------------------------------------------------
# Comparing


def compare_state_dict(
    header: Mapping[str, tuple[Shape, str] | Shape], expected: Mapping[str, Shape], *, limit: int = LISTED
) -> list[str]:
    """Every way `header` fails to load strictly into a network whose state dict has `expected`
    shapes: missing keys, unexpected keys, shape mismatches — each kind one line naming the
    first `limit` keys and the count. When all checkpoint keys share a prefix (``model.``,
    ``state_dict.``, …) whose removal makes the names match, that is the one line about names,
    with the fix; shapes are then compared after removing it. [] when it loads.

    `header` values are ``(shape, dtype)`` as `checkpoint_header` gives them, or bare shapes.
    Dtypes are not compared: ``load_state_dict`` casts them.
    """
    header = {k: _shape_of(v) for k, v in header.items()}
    names = set(expected)
    stripped, prefix = dict(header), None
    if set(header) != names:
        for candidate in _common_prefixes(header):
            trial = {k[len(candidate) :]: v for k, v in header.items()}
            if set(trial) == names:
                stripped, prefix = trial, candidate
                break
    problems: list[str] = []
    if prefix is not None:
        problems.append(
            f"all {len(header)} keys start with {prefix!r}: strip it, e.g. "
            f"`sd = {{k.removeprefix({prefix!r}): v for k, v in sd.items()}}` and save with "
            f"`safetensors.torch.save_file(sd, 'model.safetensors')`"
        )
    else:
        missing = [k for k in expected if k not in header]
        unexpected = [k for k in header if k not in names]
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_names(missing, limit)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected, limit)}")
        # A prefix the architecture's own names share (``features.`` of a plain Sequential) is no news.
        shared = _common_prefixes(header)[:1] if len(header) > 1 else []
        shared = [p for p in shared if not all(k.startswith(p) for k in expected)]
        if missing and unexpected and shared:
            problems.append(f"all checkpoint keys start with {shared[0]!r}, but removing it does not make them match")
    mismatched = [
        f"{k} (checkpoint {_shape(stripped[k])}, model {_shape(shape)})"
        for k, shape in expected.items()
        if k in stripped and stripped[k] != tuple(shape)
    ]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_names(mismatched, limit, quote=False)}")
    return problems


def _shape_of(value: tuple[Shape, str] | Shape) -> Shape:
    if len(value) == 2 and isinstance(value[0], (tuple, list)) and isinstance(value[1], str):
        return tuple(value[0])
    return tuple(value)


def _common_prefixes(keys: Mapping[str, Any] | list[str]) -> list[str]:
    """Dotted prefixes shared by every key, shortest first (``["model.", "model.net."]``);
    a key's last component is never part of one."""
    keys = list(keys)
    if not keys:
        return []
    parts = [k.split(".")[:-1] for k in keys]
    shared: list[str] = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    return [".".join(shared[: i + 1]) + "." for i in range(len(shared))]


def _names(items: list[str], limit: int = LISTED, *, quote: bool = True) -> str:
    shown = ", ".join(repr(i) if quote else i for i in items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _shape(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------------------------
# Architectures


def expected_shapes(
    model_spec: Mapping[str, Any], header: Mapping[str, tuple[Shape, str]] | None = None
) -> dict[str, Shape]:
    """``{name: shape}`` of the state dict the loader builds for a ``timm`` or ``torchvision``
    config entry, computed on the ``meta`` device (no memory, no weights).

    Without ``num_classes`` in the entry, the class count is the output size of the classifier
    in `header` (as the loader reads it from the checkpoint), else the architecture's default.
    If the header's keys carry a common prefix that hides the classifier (``model.fc.weight``),
    the classifier is read through that prefix, so the shapes are those the loader will expect
    once the prefix is stripped. Raises ValueError for an entry the loader would refuse.
    """
    import torch

    from attrflow.models.architectures import build_architecture
    from attrflow.models.checkpoints import classifier_outputs

    kind, arch_name = model_spec.get("kind"), model_spec.get("name")
    if kind not in ("timm", "torchvision"):
        raise ValueError(f"kind {kind!r} has no checkpoint to check; only timm and torchvision entries do")
    if not arch_name:
        raise ValueError(f"kind {kind!r} needs 'name' (the {kind} model name)")
    if kind == "timm":
        import timm

        known = timm.is_model(arch_name)
    else:
        import torchvision

        known = arch_name in torchvision.models.list_models()
    if not known:
        raise ValueError(f"{kind} has no model {arch_name!r}")
    kwargs: dict[str, Any] = {}
    with torch.device("meta"):
        if model_spec.get("num_classes") is not None:
            kwargs["num_classes"] = int(model_spec["num_classes"])
        elif header:
            default = build_architecture({"library": kind, "name": arch_name, "kwargs": {}})
            view = _closest_view(header, set(default.state_dict()))
            kwargs["num_classes"] = classifier_outputs(
                default, {k: torch.empty(shape, device="meta") for k, (shape, _) in view.items()}
            )
        net = build_architecture(
            {"library": kind, "name": arch_name, "kwargs": kwargs, "x_dnn": bool(model_spec.get("x_dnn"))}
        )
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _closest_view(header: Mapping[str, tuple[Shape, str]], names: set[str]) -> dict[str, tuple[Shape, str]]:
    """`header` as is, or with the common prefix removed whose removal matches most `names`."""
    views = [dict(header)] + [{k[len(p) :]: v for k, v in header.items()} for p in _common_prefixes(header)]
    return max(views, key=lambda view: len(names & set(view)))  # ties: the unstripped header


def check_model_checkpoint(
    name: str, spec: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None
) -> str | None:
    """None when config entry `name`'s checkpoint loads into its architecture, else one message
    naming the entry, the file and every problem. Entries without a ``checkpoint`` pass.

    A relative checkpoint path is taken from `base_dir` (default: the working directory, as the
    ``prepare_model`` job does).
    """
    checkpoint = spec.get("checkpoint")
    if not checkpoint:
        return None
    kind = spec.get("kind")
    path = Path(base_dir or ".") / Path(checkpoint)
    where = f"model {name!r}: checkpoint {path}"
    if kind == "timm" and spec.get("pretrained"):
        return f"model {name!r}: give either checkpoint or pretrained: true, not both"
    if kind == "torchvision" and spec.get("weights"):
        return f"model {name!r}: give either checkpoint or weights, not both"
    try:
        header = checkpoint_header(path)
    except CheckpointError as err:
        return f"model {name!r}: {err}"
    try:
        expected = expected_shapes(spec, header)
    except ValueError as err:
        return f"model {name!r}: {err}"
    problems = compare_state_dict(header, expected)
    if not problems:
        return None
    described = f"{kind} {spec.get('name')}"
    if spec.get("num_classes") is not None:
        described += f" (num_classes={spec['num_classes']})"
    notes = []
    if header.wrapper:
        notes.append(f"its tensors are nested under {header.wrapper!r}, which attrflow unwraps")
    if header.stripped_prefix:
        notes.append(f"the DataParallel prefix {header.stripped_prefix!r} was already removed")
    counts = f"{len(header)} tensors in the file, {len(expected)} expected"
    lines = [f"{where} does not fit the {described} architecture ({counts}):"]
    lines += [f"  - {problem}" for problem in problems]
    if notes:
        lines.append(f"  (note: {'; '.join(notes)})")
    return "\n".join(lines)


def check_model_checkpoint_cached(
    name: str, spec: Mapping[str, Any], *, index: Any, base_dir: str | os.PathLike | None = None
) -> str | None:
    """`check_model_checkpoint`, remembered in `index` (an `attrflow.content.FileIndex`).

    The verdict is keyed by the checkpoint's content digest and by everything else it depends
    on: the model entry, `base_dir`, the installed torch/timm/torchvision versions and the
    source of the attrflow modules that build the architecture. A cached verdict is returned
    without importing torch.
    """
    checkpoint = spec.get("checkpoint")
    path = Path(base_dir or ".") / Path(checkpoint) if checkpoint else None
    if path is None or not path.is_file():
        return check_model_checkpoint(name, spec, base_dir=base_dir)  # nothing to cache; no torch
    checker = _checker(name, spec, base_dir, index)
    digest = index.digest(path)
    known = index.verdicts([digest], checker)
    if digest in known:
        return known[digest] or None
    message = check_model_checkpoint(name, spec, base_dir=base_dir)
    index.record_verdicts({digest: message or ""}, checker)
    return message


def _checker(name: str, spec: Mapping[str, Any], base_dir: str | os.PathLike | None, index: Any) -> str:
    from importlib import metadata

    versions = {}
    for package in ("torch", "timm", "torchvision"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    here = Path(__file__).resolve().parent
    sources = [here / name for name in ("checkpoint_check.py", "checkpoints.py", "architectures.py", "hub.py", "xdnn.py")]
    return json.dumps(
        {
            "check": "attrflow checkpoint/1",
            "model": name,
            "spec": {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in spec.items()},
            "base_dir": os.fspath(base_dir) if base_dir is not None else None,
            "versions": versions,
            "code": index.digests(sources),
        },
        sort_keys=True,
        default=str,
    )
