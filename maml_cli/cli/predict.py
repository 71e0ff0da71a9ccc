"""``maml-predict model=adapted.pt inputs=PATH [output=predictions.csv]``: predictions of an adapted model.

``inputs`` is a folder of images (every image under it, sorted), one image, a comma-separated list
of images, a text file listing image paths (one a line, relative to the list's folder; ``#``
comments), a CSV of rows for a model that reads tables, or a CSV of utterances (a ``text``
column) for a text model. The output has one row per input: the file or row id (``input``), a
CSV's feature values (a text model's utterance), the prediction (a class name or a value) and, for
a classifier, the probability of each class (``p_<class>``). A short summary is printed.

These commands need no config composition, so they parse ``key=value`` arguments themselves and
start without Hydra; errors are one line, ``error: ...``, exit status 1 (``MAML_DEBUG=1`` shows
the traceback).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maml_cli.cli.key_values import Option, command, device_of
from maml_cli.errors import ConfigError, MamlError

if TYPE_CHECKING:
    from torch import Tensor

    from maml_cli.deploy.model import AdaptedModel

PROG = "maml-predict"


def check_output(output: Path, *reads: Path) -> None:
    """Refuse an output that would replace one of the files being read, or that is a folder."""
    if output.is_dir():
        raise ConfigError(f"output {output} is a folder; give a file name")
    for path in reads:
        if path.exists() and output.exists() and output.resolve() == path.resolve():
            raise ConfigError(f"output {output} is the file being read; choose another output path")


# -- inputs and predictions ------------------------------------------------------------------------


def input_paths(value: str) -> list[Path] | Path:
    """What ``inputs=`` names: a folder or a CSV (returned as is), or image files (a list)."""
    from maml_cli.data.image_files import IMAGE_SUFFIXES

    path = Path(value)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq")):
        return path
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [path]
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise MamlError(f"{path} is not an image (by its suffix), a CSV or a text list of images") from None
        listed = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not listed:
            raise MamlError(f"the list of images {path} is empty")
        return [Path(p) if Path(p).is_absolute() else path.parent / p for p in listed]
    if "," in value:
        return [Path(p.strip()) for p in value.split(",") if p.strip()]
    raise MamlError(f"inputs {path} not found; give a folder of images, an image, a list of them or a CSV")


@dataclass
class Inputs:
    x: Tensor
    names: list[str]
    features: dict[str, list[float] | list[str]]  # a CSV's feature columns (utterances), written beside the predictions
    source: Path | None


def read_inputs(value: str, inputs_spec: dict) -> Inputs:
    from maml_cli.deploy.inputs import TEXT_COLUMN, read_csv, read_images, read_text_rows, table_columns

    found = input_paths(value)
    if isinstance(found, Path) and found.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq") and found.is_file():
        if inputs_spec.get("text"):
            rows = read_text_rows(found, inputs_spec, with_label=False)
            return Inputs(rows.x, rows.ids, {TEXT_COLUMN: rows.texts}, found)
        x, _, ids = read_csv(found, inputs_spec, with_target=False)
        features, _ = table_columns(inputs_spec)
        return Inputs(x, ids, {f: x[:, i].tolist() for i, f in enumerate(features)}, found)
    x, names = read_images(found, inputs_spec)
    return Inputs(x, names, {}, found if isinstance(found, Path) else None)


def _cell(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.7g}"


def predictions_csv(adapted: AdaptedModel, inputs: Inputs, predictions: Tensor) -> tuple[str, list[str]]:
    """The predictions file's text and the summary lines to print."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    feature_names = list(inputs.features)
    count = len(inputs.names)
    if adapted.problem == "classification":
        classes = adapted.classes or [str(i) for i in range(predictions.shape[-1])]
        writer.writerow(["input", *feature_names, "prediction", *(f"p_{c}" for c in classes)])
        chosen = predictions.argmax(dim=-1).tolist()
        for i, name in enumerate(inputs.names):
            row = [_cell(inputs.features[f][i]) for f in feature_names]
            writer.writerow([name, *row, classes[chosen[i]], *(_cell(p) for p in predictions[i].tolist())])
        counts = [(c, chosen.count(k)) for k, c in enumerate(classes)]
        summary = [f"{count} inputs: " + ", ".join(f"{c} {n}" for c, n in counts)]
    else:
        values = predictions.reshape(count, -1)
        targets = adapted.inputs.get("target", "prediction")
        target_names = [targets] if isinstance(targets, str) else list(targets)
        heads = ["prediction"] if values.shape[1] == 1 else [f"prediction_{t}" for t in target_names]
        writer.writerow(["input", *feature_names, *heads])
        for i, name in enumerate(inputs.names):
            row = [_cell(inputs.features[f][i]) for f in feature_names]
            writer.writerow([name, *row, *(_cell(v) for v in values[i].tolist())])
        means = ", ".join(_cell(float(m)) for m in values.mean(dim=0))
        low, high = _cell(float(values.min())), _cell(float(values.max()))
        summary = [f"{count} inputs: mean prediction {means} (min {low}, max {high})"]
    return out.getvalue(), summary


def write_predictions(path: Path, adapted: AdaptedModel, inputs: Inputs) -> list[str]:
    """Predict ``inputs`` together (a batch-norm model normalises with their statistics, as at
    evaluation) and write the CSV atomically; returns the lines to print."""
    from maml_cli.storage import atomic_write

    predictions = adapted.predict(inputs.x).cpu()
    text, summary = predictions_csv(adapted, inputs, predictions)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), "choose another output path")
    return [*summary, f"wrote {path}"]


# -- the command -------------------------------------------------------------------------------------

OPTIONS = (
    Option("model", "an adapted model written by maml-adapt (or AdaptedModel.save)", required=True),
    Option(
        "inputs", "a folder of images, an image, image paths (comma-separated or a .txt list), a CSV (of text)", True
    ),
    Option("output", "the predictions CSV to write (default: predictions.csv)"),
    Option("device", "cpu (default), cuda, cuda:1, mps ..."),
)
USAGE = """
usage: maml-predict model=adapted.pt inputs=PATH [output=predictions.csv]

Predict with a model adapted by maml-adapt: one row per input (file or row id, the predicted class
or value, and p_<class> for each class), and a summary of the predictions.
"""


def _predict(args: dict[str, str]) -> None:
    from maml_cli.deploy.model import load_adapted

    model_path, output = Path(args["model"]), Path(args.get("output", "predictions.csv"))
    from maml_cli.threads import configure_threads

    adapted = load_adapted(model_path, device_of(args.get("device")))
    configure_threads(None, adapted.network)
    inputs = read_inputs(args["inputs"], adapted.inputs)
    check_output(output, model_path, *([inputs.source] if inputs.source else []))
    for line in write_predictions(output, adapted, inputs):
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    return command(PROG, OPTIONS, USAGE, _predict, argv)


if __name__ == "__main__":
    sys.exit(main())
