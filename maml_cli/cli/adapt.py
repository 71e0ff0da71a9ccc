"""``maml-adapt checkpoint=best.pt support=PATH [steps=N] [output=adapted.pt] [inputs=PATH]``.

Adapts a meta-trained checkpoint to one new task with the checkpoint's own algorithm and writes the
adapted model (:meth:`maml_cli.deploy.model.AdaptedModel.save`: weights, class names, how inputs
are preprocessed, the source checkpoint's config and digest) for ``maml-predict``.

The support set is a folder with one sub-folder of images per class (classes: the sub-folder names,
sorted; images decoded, resized and standardised as the checkpoint's training images were), or,
for a model of table rows (the sinusoid), a CSV of the feature and target columns the checkpoint
names, or, for a text model (CLINC150), a CSV of utterances: columns ``text`` and ``label``,
tokenised by the checkpoint's own tokeniser (classes: the distinct labels, sorted). With
``inputs=PATH`` it predicts those inputs at once (written to ``predictions=``), and writes the
adapted model only if ``output=`` is given too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from maml_cli.cli.key_values import Option, command, device_of
from maml_cli.cli.predict import check_output, read_inputs, write_predictions
from maml_cli.errors import ConfigError

PROG = "maml-adapt"
OPTIONS = (
    Option("checkpoint", "a checkpoint written by maml-train, e.g. RUN/checkpoints/best.pt", required=True),
    Option("support", "a folder of one sub-folder of images per class, or a CSV (features, target; text, label)", True),
    Option("steps", "inner steps to adapt with (default: the run's inner_loop.eval_steps)"),
    Option("output", "the adapted model to write (default: adapted.pt; with inputs=, none unless given)"),
    Option("inputs", "predict these at once: images (folder, file, comma list, .txt list) or a CSV"),
    Option("predictions", "with inputs=: the predictions CSV to write (default: predictions.csv)"),
    Option("device", "cpu (default), cuda, cuda:1, mps ..."),
)
USAGE = """
usage: maml-adapt checkpoint=RUN/checkpoints/best.pt support=PATH [steps=N] [output=adapted.pt]
       maml-adapt checkpoint=... support=PATH inputs=PATH [predictions=predictions.csv] [output=...]

Adapt a meta-trained model to a new task from its support set, with the checkpoint's algorithm,
and write the adapted model (for maml-predict), or predict inputs=PATH in one go.
"""


def _steps(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        steps = int(value)
    except ValueError:
        raise ConfigError(f"steps={value} is not a whole number of inner steps (e.g. steps=10)") from None
    if steps < 0:
        raise ConfigError(f"steps={steps} must be >= 0")
    return steps


def _read_support(value: str, meta):
    """``(x, y, classes or None, what the support set is in words)``."""
    from maml_cli.deploy.inputs import read_csv, read_support_folder, read_support_table, read_support_text

    path = Path(value)
    if meta.inputs.get("text"):  # a model meta-trained on text: a CSV of utterances and their labels
        if path.is_dir():
            raise ConfigError(f"this model reads utterances: support={path} must be a CSV of text,label, not a folder")
        x, y, classes = read_support_text(path, meta.inputs)
        return x, y, classes, f"{len(x)} support utterances of {len(classes)} classes ({', '.join(classes)})"
    if meta.inputs.get("table"):  # a model meta-trained on a table: a CSV or Parquet file of its columns
        if path.is_dir():
            raise ConfigError(f"this model reads rows of a table: support={path} must be a CSV file, not a folder")
        x, y, classes = read_support_table(path, meta.inputs)
        named = f" of {len(classes)} classes ({', '.join(classes)})" if classes else ""
        return x, y, classes, f"{len(x)} support rows{named}"
    if meta.problem == "classification":
        x, y, classes = read_support_folder(path, meta.inputs)
        return x, y, classes, f"{len(y)} support images of {len(classes)} classes ({', '.join(classes)})"
    if path.is_dir():
        raise ConfigError(f"this model reads rows of a table: support={path} must be a CSV file, not a folder")
    x, y, _ = read_csv(path, meta.inputs, with_target=True)
    return x, y, None, f"{len(x)} support rows"


def _support_score(adapted, x, y) -> str:
    predictions = adapted.predict(x).cpu()
    if adapted.problem == "classification":
        accuracy = float((predictions.argmax(dim=-1) == y).float().mean())
        return f"support accuracy {100 * accuracy:.1f}%"
    return f"support mse {float(((predictions.reshape(y.shape) - y) ** 2).mean()):.4g}"


def _adapt(args: dict[str, str]) -> None:
    from maml_cli.deploy.model import load
    from maml_cli.threads import configure_threads

    checkpoint, steps = Path(args["checkpoint"]), _steps(args.get("steps"))
    predict = "inputs" in args
    output = Path(args["output"]) if "output" in args else (None if predict else Path("adapted.pt"))
    predictions = Path(args.get("predictions", "predictions.csv"))
    if "predictions" in args and not predict:
        raise ConfigError("predictions= names where to write the predictions of inputs=PATH; give inputs= too")

    meta = load(checkpoint, device_of(args.get("device")))
    configure_threads(None, meta.algorithm.model)
    x, y, classes, what = _read_support(args["support"], meta)
    inputs = read_inputs(args["inputs"], meta.inputs) if predict else None  # every input read before any write
    reads = [checkpoint, Path(args["support"]), *([inputs.source] if inputs and inputs.source else [])]
    for path in [output] if output else []:
        check_output(path, *reads)
    if predict:
        check_output(predictions, *reads)
        if output is not None and output.resolve() == predictions.resolve():
            raise ConfigError(f"output= and predictions= are both {output}; give two files")

    adapted = meta.adapt(x, y, steps=steps, classes=classes)
    used = meta.steps if steps is None else steps
    print(f"adapted {checkpoint} (step {meta.step}, {type(meta.algorithm).__name__}) with {what} in {used} steps")
    print(_support_score(adapted, x, y))
    if output is not None:
        adapted.save(output)
        print(f"wrote {output}")
    if inputs is not None:
        for line in write_predictions(predictions, adapted, inputs):
            print(line)


def main(argv: Sequence[str] | None = None) -> int:
    return command(PROG, OPTIONS, USAGE, _adapt, argv)


if __name__ == "__main__":
    sys.exit(main())
