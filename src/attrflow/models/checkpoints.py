"""Reading weight files without ever running their code.

Weights are only ever read with safetensors or ``torch.load(weights_only=True)``: a checkpoint
that needs pickled code to load is refused, never executed. `load_weights_into` loads strictly
and names every missing, unexpected and mis-shaped key; `classifier_outputs` reads how many
classes a checkpoint was trained for. `attrflow.models.checkpoint_check` checks a checkpoint's
header against its architecture before any job runs and mirrors these rules.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attrflow.models.checkpoint_check import CHECKPOINT_SUFFIXES, STATE_DICT_KEYS


class ModelLoadError(RuntimeError):
    """A model cannot be built or its weights cannot be read; the message names the culprit."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without ever executing pickled code.

    ``.safetensors`` is read with safetensors; ``.pt/.pth/.bin/.ckpt`` with
    ``torch.load(weights_only=True)``. A raw state dict or one nested under ``state_dict``,
    ``model`` or ``model_state_dict`` is accepted; a ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ModelLoadError(
            f"checkpoint {path}: unknown format {path.suffix!r}; use one of {CHECKPOINT_SUFFIXES}"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error types for a bad header
            raise ModelLoadError(f"checkpoint {path} is not a readable safetensors file: {err}") from err
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ModelLoadError(
                f"refusing checkpoint {path}: it holds pickled objects beyond plain tensors, which "
                f"could run code when loaded (torch.load(weights_only=True) rejected it: "
                f"{_unpickling_culprit(err)}). Convert it to .safetensors in a trusted environment."
            ) from err
        except Exception as err:
            raise ModelLoadError(f"checkpoint {path} is unreadable: {err}") from err
    return _unwrap_state_dict(loaded, path)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _unpickling_culprit(err: Exception) -> str:
    """What torch's weights-only unpickler refused, from its message: the sentence naming the
    object (``Unsupported global: GLOBAL module.Class ...`` or ``... GLOBAL posix.system whose
    module posix is blocked``), without the terminal colour codes torch puts into the text and
    without its advice to load the file unsafely."""
    text = " ".join(_ANSI.sub("", str(err)).split())
    for sentence in re.split(r"(?<=\.) ", text):
        if "GLOBAL" in sentence:
            return sentence.removeprefix("WeightsUnpickler error:").strip().rstrip(".")
    return text


def _unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelLoadError(f"checkpoint {path}: entries {_listing(not_tensors)} are not tensors")
    state = {str(k): v for k, v in loaded.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights_into(net: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load `state` into `net` strictly; on any mismatch raise naming `source` and the keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    if problems:
        raise ModelLoadError(f"weights in {source} do not fit {type(net).__name__}: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', … ({len(items) - limit} more)' if len(items) > limit else ''}]"


def classifier_outputs(default_net: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Classes a checkpoint was trained for: the output size of its classifier.

    The classifier is the network's last linear layer, or its last convolution when it has no
    linear layer (SqueezeNet's 1×1 convolution head).
    """
    for kind in (nn.Linear, nn.Conv2d):
        layers = [name for name, module in default_net.named_modules() if isinstance(module, kind)]
        if layers and f"{layers[-1]}.weight" in state:
            return int(state[f"{layers[-1]}.weight"].shape[0])
    return int(getattr(default_net, "num_classes", 1000))
