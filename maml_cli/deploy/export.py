"""A network as a plain inference graph: ONNX, TorchScript, or a ``torch.export`` program (.pt2).

Adaptation takes gradients (``torch.autograd.grad``), which neither ``torch.export`` nor ONNX can
capture, so it stays in PyTorch: what is exported is a network's forward pass with fixed weights,
without gradients, with a dynamic batch dimension (any size from 1). The weights are either the
adapted ones (``params``: a dict of adapted tensors, as the algorithms produce them for
``torch.func.functional_call``) or the network's own, i.e. the meta-learned initialisation, for
users who adapt elsewhere.

Batch normalisation with the batch's own statistics (:class:`~maml_cli.models.TaskBatchNorm2d`,
``model.batch_norm=batch``) is exported as it is: each output depends on the whole batch, in the
exported graph as in PyTorch, so compare the two on the same batch. Its ``is_batchedtensor`` test
sees a plain tensor under tracing and ``torch.export``, so the native kernel is captured; ONNX gets
batch means (ReduceMean) feeding an inference-mode BatchNormalization, which every runtime runs.
Layers with running statistics in eval mode (``model.batch_norm=running``) export as standard ones.

The network is copied to the CPU before export (the caller's network is left as it was), so the
artefacts load on any machine; a loaded TorchScript or .pt2 module can be moved to a GPU.
"""

from __future__ import annotations

import copy
import importlib
import io
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from maml_cli.errors import ConfigError, MamlError
from maml_cli.storage import atomic_write

#: Each format and the ending of its file name.
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}
#: The packages of the ``[export]`` extra that each step of the ONNX format needs.
_ONNX_EXPORT = ("onnx", "onnxscript")
_ONNX_RUN = ("onnxruntime",)
# TorchScript is one of the formats asked for; torch 2.14 marks its trace, save and load deprecated
# in favour of torch.export (the pt2 format), and says so on every call.
_JIT_DEPRECATED = r"`torch\.jit\.(trace|trace_method|save|load)` is deprecated"

Runner = Callable[[Tensor], list[Tensor]]


class ExportMismatch(MamlError):
    """An exported artefact whose outputs differ from PyTorch's by more than the tolerance."""


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    return format


def default_path(source: str | Path, format: str) -> Path:
    """Where to write the export of ``source`` (``adapted.pt`` -> ``adapted.onnx``, ...)."""
    source = Path(source)
    stem = source.name.removesuffix(source.suffix) if source.suffix else source.name
    return source.with_name(stem + FORMATS[check_format(format)])


def _tensors(output) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    raise TypeError(f"an exported network returns tensors, got {type(output).__name__}")


def _import_extra(format: str, names: Iterable[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(
                f"format={format} needs the optional package {name}, which is not installed: "
                "pip install 'maml-cli[export]'"
            ) from None


def inference_copy(network: nn.Module, params: Mapping[str, Tensor] | None = None) -> nn.Module:
    """A CPU copy of ``network`` in eval mode, without gradients, holding ``params`` (adapted
    parameters or buffers by their names in ``network.state_dict()``; the others stay) if given."""
    copied = copy.deepcopy(network).cpu().eval().requires_grad_(False)
    if params:
        known = copied.state_dict()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"params names what the network does not have: {', '.join(unknown[:5])}")
        copied.load_state_dict({name: tensor.detach().cpu() for name, tensor in params.items()}, strict=False)
    return copied


def _example_batch(example: Tensor) -> Tensor:
    """``example`` on the CPU with at least two rows: ``torch.export`` takes a dimension of size 1
    for a constant, so a batch of one would fix the batch size."""
    if example.dim() == 0 or example.shape[0] < 1:
        raise ValueError(f"the example must be a batch of inputs ([N, ...], N >= 1), got shape {tuple(example.shape)}")
    example = example.detach().cpu()
    return torch.cat([example, example]) if example.shape[0] == 1 else example


def _exported_program(network: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(network, (example,), dynamic_shapes=({0: batch},))


def _onnx_bytes(network: nn.Module, example: Tensor) -> bytes:
    with torch.no_grad():
        outputs = len(_tensors(network(example)))
    program = torch.onnx.export(
        _exported_program(network, example),
        (example,),
        dynamo=True,
        external_data=False,  # one self-contained file (the protobuf limit, 2 GB, is far off)
        input_names=["input"],
        output_names=["output"] if outputs == 1 else [f"output{i}" for i in range(outputs)],
        verbose=False,
    )
    return program.model_proto.SerializeToString()


def _torchscript_bytes(network: nn.Module, example: Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
        # F.batch_norm's check that a training-mode batch has more than one value per channel reads
        # the size as a Python bool; it guards, it does not compute, so nothing is lost.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        with torch.no_grad():
            traced = torch.jit.trace(network, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _pt2_bytes(network: nn.Module, example: Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(_exported_program(network, example), buffer)
    return buffer.getvalue()


_WRITERS = {"onnx": _onnx_bytes, "torchscript": _torchscript_bytes, "pt2": _pt2_bytes}


def export_network(
    network: nn.Module,
    example: Tensor,
    format: str,
    path: str | Path,
    params: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write ``network`` (with ``params`` if given, else its own weights) as ``format`` to ``path``.

    ``example`` is one batch of inputs (``[N, ...]``); the batch dimension of the artefact is
    dynamic, the other dimensions are the example's. The file is written atomically. Exporting the
    meta-learned initialisation is this with the meta-model and no ``params``.
    """
    check_format(format)
    if format == "onnx":
        _import_extra(format, _ONNX_EXPORT)
    payload = _WRITERS[format](inference_copy(network, params), _example_batch(example))
    path = Path(path)
    atomic_write(path, lambda handle: handle.write(payload), "choose another output=")
    return path


def load_exported(path: str | Path, format: str) -> Runner:
    """The artefact at ``path`` as a function of a CPU batch to the list of its output tensors."""
    check_format(format)
    path = Path(path)
    if format == "onnx":
        _import_extra(format, _ONNX_RUN)
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(y) for y in session.run(None, {name: x.detach().cpu().numpy()})]
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.export.load(path).module()

    def run(x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return _tensors(module(x.detach().cpu()))

    return run


def verify_export(
    path: str | Path,
    format: str,
    network: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    atol: float = 1e-5,
    params: Mapping[str, Tensor] | None = None,
) -> float:
    """The largest absolute difference between the artefact's outputs and ``network``'s (with
    ``params``) over ``inputs`` (a batch, or several of different sizes, each fed whole to both:
    batch statistics make every output depend on its batch). Above ``atol``: :class:`ExportMismatch`."""
    run = load_exported(path, format)
    reference = inference_copy(network, params)
    batches = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    worst = 0.0
    for x in batches:
        x = x.detach().cpu()
        with torch.no_grad():
            expected = _tensors(reference(x))
        got = run(x)
        if [tuple(t.shape) for t in got] != [tuple(t.shape) for t in expected]:
            raise ExportMismatch(
                f"the {format} export at {path} gives outputs of shapes {[tuple(t.shape) for t in got]} for a batch "
                f"of {x.shape[0]}, PyTorch {[tuple(t.shape) for t in expected]}"
            )
        for y, z in zip(got, expected):
            difference = (y.to(z.dtype) - z).abs().max().item() if z.numel() else 0.0
            if not difference <= worst:  # larger, or NaN
                worst = difference
            if math.isnan(worst):
                break
        if not worst <= atol:
            raise ExportMismatch(
                f"the {format} export at {path} differs from PyTorch by {worst:.3g} (more than atol={atol:g}) on a "
                f"batch of {x.shape[0]}; the file is written: check it before use, or accept it with a larger atol"
            )
    return worst
