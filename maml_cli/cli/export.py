"""``maml-export``: an adapted model, or a checkpoint's meta-learned initialisation, as a plain
inference graph (ONNX, TorchScript, or a ``torch.export`` program), checked against PyTorch.

    maml-export model=adapted.pt format=onnx [output=adapted.onnx] [atol=1e-5]
    maml-export checkpoint=runs/.../best.pt format=pt2      # the initialisation, to adapt elsewhere

Adaptation stays in PyTorch (``maml-adapt``, or ``maml_cli.load(...).adapt(...)``): neither ONNX nor
``torch.export`` captures gradients. The exported network returns what the network returns (logits
for classification; ``AdaptedModel.predict`` applies the softmax) with a dynamic batch dimension.
Its outputs are compared with PyTorch's on random batches of 3 and 7 inputs, each fed whole to
both (batch statistics make every output depend on its batch); the largest difference is printed.
A handful of ``key=value`` arguments need no Hydra.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from maml_cli.cli.key_values import Option, command
from maml_cli.deploy.export import FORMATS
from maml_cli.errors import ConfigError

PROG = "maml-export"
USAGE = f"usage: maml-export (model=ADAPTED.pt | checkpoint=PATH) format={'|'.join(FORMATS)} [output=PATH] [atol=1e-5]"
OPTIONS = (
    Option("model", "an adapted model (maml-adapt, AdaptedModel.save): the network adapted to one task"),
    Option("checkpoint", "a maml-train checkpoint: the meta-learned initialisation, for adapting elsewhere"),
    Option("format", "onnx (needs pip install 'maml-cli[export]'), torchscript, or pt2 (torch.export)"),
    Option("output", "where to write (default: beside the input, adapted.pt -> adapted.onnx)"),
    Option("atol", "the largest difference from PyTorch accepted when checking the export (default 1e-5)"),
)
VERIFY_BATCHES = (3, 7)


def check_arguments(args: dict[str, str]) -> dict[str, str]:
    """The combinations ``key=value`` parsing alone cannot check."""
    from maml_cli.deploy.export import check_format

    if ("model" in args) == ("checkpoint" in args):
        raise ConfigError("give one of model=ADAPTED.pt (an adapted model) or checkpoint=PATH (its initialisation)")
    if "format" not in args:
        raise ConfigError(f"say which format: format={'|'.join(FORMATS)}")
    check_format(args["format"])
    return args


def export(args: dict[str, str]) -> str:
    """Load, export, verify; the line to print."""
    import torch

    from maml_cli.deploy import load, load_adapted
    from maml_cli.deploy.export import default_path, export_network, verify_export

    try:
        atol = float(args.get("atol", "1e-5"))
    except ValueError:
        raise ConfigError(f"atol must be a number, got {args['atol']!r}") from None
    source = args.get("model") or args["checkpoint"]
    if "model" in args:
        adapted = load_adapted(source)
        network, input_shape, what = adapted.network, adapted.input_shape, "adapted network"
    else:
        meta = load(source)
        network, input_shape, what = meta.algorithm.model, meta.input_shape, "meta-learned initialisation"
    format = args["format"]
    output = Path(args["output"]) if "output" in args else default_path(source, format)
    dtype = next(network.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    example, *batches = (torch.randn(n, *input_shape, generator=generator, dtype=dtype) for n in (3, *VERIFY_BATCHES))
    start = time.perf_counter()
    export_network(network, example, format, output)
    seconds = time.perf_counter() - start
    difference = verify_export(output, format, network, batches, atol=atol)
    sizes = " and ".join(map(str, VERIFY_BATCHES))
    shape = ", ".join(map(str, input_shape))
    return (
        f"wrote {output}: the {what} of {source} as {format} ({seconds:.1f} s), inputs [N, {shape}] for any N >= 1; "
        f"outputs within {difference:.2g} of PyTorch on batches of {sizes}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE + f"\nsee {PROG} --help", file=sys.stderr)
        return 2
    return command(PROG, OPTIONS, USAGE, lambda args: print(export(check_arguments(args)), flush=True), argv)


if __name__ == "__main__":
    sys.exit(main())
