"""Any image classifier of ``torchvision.models``, by name, fitted to a few-shot task.

``model=torchvision model.name=resnet18`` builds the network with torchvision's own builder
(``get_model_builder``, never with downloaded weights: start from a local file with
``model.weights_path``), then makes two changes so it fits the dataset:

* the first convolution takes ``in_channels`` (1 for Omniglot) instead of 3: a new ``Conv2d`` with
  the same settings, under the same name (so the state-dict key stays, e.g. ``conv1.weight``),
  initialised with the first ``in_channels`` input channels of torchvision's initial kernel
  (repeated when there are more than 3). torchvision initialises its convolutions by fan-out,
  which does not depend on the input channels, so the distribution of the start is unchanged;
* the classifier becomes an ``out_features``-way one (the number of ways): ``nn.Linear(in, ways)``
  in place of the last linear layer (``fc`` of a ResNet, ``classifier[-1]`` of a MobileNet or
  EfficientNet, ``heads.head`` of a ViT), or a 1x1 ``Conv2d`` where the classifier is one
  (SqueezeNet).

MobileNetV3's ``nn.Hardsigmoid`` and ``nn.Hardswish`` are rewritten with ``relu6``: the same
function, but PyTorch has no derivative of their backward kernels, so second-order MAML would stop
with "derivative for aten::hardsigmoid_backward is not implemented".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn import functional as F

from maml_cli.errors import ConfigError

#: Builders whose auxiliary classifiers make the training-mode output a tuple: off unless asked for.
_AUX_LOGITS = ("googlenet", "inception_v3")


class Hardsigmoid(nn.Module):
    """``nn.Hardsigmoid`` as ``relu6(x + 3) / 6``: differentiable twice (see the module's docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3) / 6


class Hardswish(nn.Module):
    """``nn.Hardswish`` as ``x * relu6(x + 3) / 6``: differentiable twice (see the module's docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * F.relu6(x + 3) / 6


_TWICE_DIFFERENTIABLE = {nn.Hardsigmoid: Hardsigmoid, nn.Hardswish: Hardswish}


def _torchvision_models():
    try:
        import torchvision.models
    except Exception as exc:  # not installed, or built for another torch (its C++ ops do not load)
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model=torchvision needs torchvision built for this torch ({torch.__version__}); "
            f"importing it failed: {detail}"
        ) from None
    return torchvision.models


def classifier_names() -> list[str]:
    """The names ``model.name`` accepts: torchvision's image classifiers (no detection, video...)."""
    models = _torchvision_models()
    return models.list_models(module=models)


def _builder(name: str):
    models = _torchvision_models()
    names = models.list_models(module=models)
    if name in names:
        return models.get_model_builder(name)
    if name in models.list_models():
        raise ConfigError(
            f"model.name={name} is a torchvision model but not an image classifier; "
            "use one of torchvision.models.list_models(module=torchvision.models)"
        )
    close = difflib.get_close_matches(name, names, n=6, cutoff=0.6)
    hint = f"close ones: {', '.join(close)}" if close else "e.g. resnet18, mobilenet_v3_small, efficientnet_b0"
    raise ConfigError(
        f"model.name={name} is not a torchvision image classifier; {hint} "
        "(all: torchvision.models.list_models(module=torchvision.models))"
    )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == in_channels:
        return
    if in_channels % conv.groups:
        raise ConfigError(f"{name} has {conv.groups} groups: in_channels={in_channels} must be a multiple of them")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    per_group = conv.weight.shape[1]
    with torch.no_grad():
        channels = [i % per_group for i in range(new.weight.shape[1])]
        new.weight.copy_(conv.weight[:, channels])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(model, name, new)


def _replace_classifier(model: nn.Module, out_features: int, model_name: str) -> None:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        name, old = linears[-1]
        _set_submodule(model, name, nn.Linear(old.in_features, out_features, bias=old.bias is not None))
        return
    # SqueezeNet classifies with a 1x1 convolution: the last module with parameters.
    with_params = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    name, old = with_params[-1]
    if isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        _set_submodule(model, name, nn.Conv2d(old.in_channels, out_features, 1, bias=old.bias is not None))
        return
    raise ConfigError(f"model.name={model_name}: cannot find its classifier (no nn.Linear, no 1x1 convolution last)")


def _task_stochastic_depth():
    """torchvision's ``StochasticDepth`` with out-of-place randomness (EfficientNet, ConvNeXt, Swin).

    torchvision draws its mask with ``torch.empty(...).bernoulli_()``, which ``vmap`` refuses when
    each task must draw its own ("different inplace randomness on an unbatched tensor"). The same
    mask, drawn as ``rand < survival``, is batched per task; outside training it is the identity.
    """
    from torchvision.ops import StochasticDepth

    class TaskStochasticDepth(StochasticDepth):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or self.p == 0.0:
                return x
            survival = 1.0 - self.p
            size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
            mask = (torch.rand(size, dtype=x.dtype, device=x.device) < survival).to(x.dtype)
            return x * (mask / survival if survival > 0.0 else mask)

    return StochasticDepth, TaskStochasticDepth


def torchvision_model(
    name: str,
    in_channels: int = 3,
    out_features: int = 1000,
    kwargs: Mapping[str, Any] | None = None,
    hidden: int | None = None,
) -> nn.Module:
    """torchvision's ``name`` (e.g. ``resnet18``) built without weights by its builder with ``kwargs``,
    taking ``in_channels`` and classifying into ``out_features`` classes (see the module's docstring).

    ``hidden`` is accepted and unused: the image presets set ``model.hidden`` for Conv-4, and
    ``experiment=omniglot_5w1s model=torchvision`` keeps it; a backbone has its own widths.
    """
    builder = _builder(name)
    options = OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else dict(kwargs or {})
    for key, instead in (("weights", "model.weights_path=FILE (a local state dict)"), ("num_classes", "out_features")):
        if key in options:
            raise ConfigError(f"model.kwargs.{key} is set by maml-cli: use {instead} instead")
    if name in _AUX_LOGITS:
        options.setdefault("aux_logits", False)
    try:
        model = builder(weights=None, **options)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"torchvision's {name}(**model.kwargs) failed: {exc}") from None
    _adapt_first_conv(model, int(in_channels))
    _replace_classifier(model, int(out_features), name)
    for module_name, module in list(model.named_modules()):
        if type(module) in _TWICE_DIFFERENTIABLE:
            _set_submodule(model, module_name, _TWICE_DIFFERENTIABLE[type(module)]())
    stochastic_depth, per_task = _task_stochastic_depth()
    for module in model.modules():
        if type(module) is stochastic_depth:
            module.__class__ = per_task  # same attributes (p, mode), no parameters
    return model
