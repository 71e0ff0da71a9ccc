"""Where meta-training starts: a local state dict (``model.weights_path``) or another run's
checkpoint (``trainer.init_from``), loaded into the freshly built model with a report.

Which tensors of the file go where, one rule for both sources:

* a key of the file with the model's shape is loaded;
* a key whose shape differs only in the model's head (its last submodule with parameters, as
  ``inner_loop.zero_head`` and ANIL take it) is new: a replaced head, e.g. torchvision's 1000-way
  ``fc`` under a 5-way one, keeps its initialisation;
* the first convolution's kernel with other input channels is adapted as timm's
  ``adapt_input_conv`` does: RGB kernels summed into one channel, otherwise repeated and scaled
  by 3 / channels;
* keys of the file the model lacks are ignored, and keys of the model the file lacks are new;
  both are listed;
* any other shape mismatch, or a file that shares no key with the model, is one error line.

Files are read with ``torch.load(weights_only=True)``: data, never pickled code.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.errors import CheckpointError, ConfigError, MamlError

log = logging.getLogger("maml_cli")

#: Entries of a training script's file that hold the state dict (Lightning and timm: state_dict; DeiT: model).
_WRAPPERS = ("state_dict", "model", "model_state_dict")
#: Prefixes that wrappers add to every key: DataParallel's module., a Lightning module's model.
_PREFIXES = ("module.", "model.")
_LISTED = 8  # names listed per line of the report before "and N more"


def load_initial_weights(model: nn.Module, weights_path: str | None, init_from: str | None) -> None:
    """Load ``weights_path`` (a state dict) or ``init_from`` (a maml-cli checkpoint's model weights)
    into ``model`` in place, logging what loaded, what is new and what was ignored."""
    if weights_path and init_from:
        raise ConfigError(
            "model.weights_path and trainer.init_from are both set: init_from's checkpoint holds the whole "
            "model already; set one of them"
        )
    if weights_path:
        source, error = f"model.weights_path={weights_path}", ConfigError
        weights = _read_state_dict(Path(weights_path), source)
    elif init_from:
        source, error = f"trainer.init_from={init_from}", CheckpointError
        state = load_checkpoint(init_from)  # checks integrity, fields and finiteness
        entries = state["model"]
        weights = {key[len("model.") :]: value for key, value in entries.items() if key.startswith("model.")}
        extras = sorted(key for key in entries if not key.startswith("model."))
        if extras:  # e.g. Meta-SGD's learned rates: the new run's algorithm starts them afresh
            log.info("%s: not loaded, the algorithm's own state: %s", source, _names(extras))
        if not weights:
            raise CheckpointError(f"{source} holds no model weights (no 'model.' entries); use a maml-train checkpoint")
    else:
        return
    _load(model, weights, source, error)


def _read_state_dict(path: Path, source: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(f"{source}: no such file{' (it is a directory)' if path.is_dir() else ''}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "Unsupported global" in str(exc):
            why = "it holds Python objects beyond tensors and plain data (never unpickled)"
        else:
            why = "it is not a readable PyTorch file"
        raise ConfigError(f"cannot load {source}: {why}; save one with torch.save(model.state_dict(), FILE)") from None
    if isinstance(data, Mapping):
        for key in _WRAPPERS:
            if isinstance(data.get(key), Mapping) and not isinstance(data.get(key), Tensor):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data:
        kind = "an empty dict" if isinstance(data, Mapping) else f"a {type(data).__name__}"
        raise ConfigError(
            f"{source} is not a state dict (it holds {kind}); save one with torch.save(model.state_dict(), FILE)"
        )
    bad = next((key for key, value in data.items() if not isinstance(key, str) or not isinstance(value, Tensor)), None)
    if bad is not None:
        raise ConfigError(
            f"{source} is not a state dict: its entry {str(bad)[:60]!r} is a {type(data[bad]).__name__}, "
            "not a tensor; save one with torch.save(model.state_dict(), FILE)"
        )
    for prefix in _PREFIXES:
        if all(key.startswith(prefix) for key in data):
            log.info("%s: every key starts with %r, read without it", source, prefix)
            data = {key[len(prefix) :]: value for key, value in data.items()}
            break
    return dict(data)


def _head_prefix(model: nn.Module) -> str | None:
    """The last submodule with parameters of its own (``fc.`` of a ResNet), as ``head.``."""
    names = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    return f"{names[-1]}." if names and names[-1] else None


def _first_conv_weight(model: nn.Module) -> str | None:
    name = next((name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)), None)
    return None if name is None else (f"{name}.weight" if name else "weight")


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """A first-conv kernel ``[out, c, kh, kw]`` for ``in_channels`` inputs, as timm's ``adapt_input_conv``:
    RGB summed into one channel (a gray image's response equals the RGB kernel's on that image
    repeated three times), otherwise the channels repeated and scaled by ``c / in_channels``."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _shape(tensor: Tensor) -> str:
    return str(list(tensor.shape))


def _names(keys: list[str]) -> str:
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def _load(model: nn.Module, weights: dict[str, Tensor], source: str, error: type[MamlError]) -> None:
    own = model.state_dict()
    head, first_conv = _head_prefix(model), _first_conv_weight(model)
    shared = [key for key in own if key in weights]
    if not shared:
        hint = (
            "start from a run of the same model (its .hydra/config.yaml names it)"
            if error is CheckpointError
            else "pass a state dict of this model (a maml-train checkpoint goes to trainer.init_from)"
        )
        raise error(
            f"{source} shares no key with the model (the file's first: {next(iter(weights))!r}; the model's: "
            f"{next(iter(own))!r}); {hint}"
        )
    loaded: dict[str, Tensor] = {}
    replaced_head, adapted, mismatched = [], [], []
    for key in shared:
        mine, theirs = own[key], weights[key]
        if mine.shape == theirs.shape:
            loaded[key] = theirs
        elif head and key.startswith(head):
            replaced_head.append(f"{key} {_shape(theirs)} -> {_shape(mine)}")
        elif (
            key == first_conv
            and mine.dim() == theirs.dim() == 4
            and mine.shape[0] == theirs.shape[0]
            and mine.shape[2:] == theirs.shape[2:]
        ):
            loaded[key] = adapt_input_conv(theirs, mine.shape[1])
            how = "summed into 1" if mine.shape[1] == 1 else f"repeated into {mine.shape[1]}, scaled"
            adapted.append(f"{key}: the file's {theirs.shape[1]} input channels {how} (as timm's adapt_input_conv)")
        else:
            mismatched.append(f"{key} is {_shape(theirs)} in the file but {_shape(mine)} in the model")
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise error(f"{source} does not fit the model: {mismatched[0]}{more}")
    model.load_state_dict(loaded, strict=False)
    missing = [key for key in own if key not in weights]
    ignored = [key for key in weights if key not in own]
    log.info("%s: loaded %d of the model's %d tensors (parameters and buffers)", source, len(loaded), len(own))
    for line in adapted:
        log.info("  %s", line)
    if replaced_head:
        log.info("  new (replaced head, keeps its initialisation): %s", _names(replaced_head))
    if missing:
        log.info("  new (not in the file, keep their initialisation): %s", _names(missing))
    if ignored:
        log.info("  ignored (in the file, not in the model): %s", _names(ignored))
