"""``maml-export`` in-process: an adapted model and a checkpoint's initialisation exported and
checked against PyTorch; its arguments' mistakes are one line each."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import maml_cli
from maml_cli.cli.export import main
from maml_cli.deploy.export import load_exported
from maml_cli.engine.build import build_algorithm, build_model
from maml_cli.engine.checkpoint import FORMAT_VERSION, save_checkpoint

from .helpers import compose_train

pytest.importorskip("onnxruntime", reason="the [export] extra is part of [test]")

SIZE, WAYS = 16, 3
SPEC = {
    "problem": "classification",
    "input_shape": [1, SIZE, SIZE],
    "ways": WAYS,
    "image": {"size": SIZE, "channels": 1, "mean": None, "std": None, "inverted": False},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A maml-train checkpoint of an untrained MAML++ Conv-4 (per-step batch norm), and its algorithm."""
    cfg = compose_train(
        "dataset=image_folder",
        "dataset.path=/not/needed/to/export",
        f"dataset.ways={WAYS}",
        f"dataset.image_size={SIZE}",
        "dataset.channels=1",
        "model=conv4",
        "model.hidden=4",
        "inner_loop=mamlpp",
        "inner_loop.steps=2",
    )
    torch.manual_seed(0)
    algorithm = build_algorithm(
        cfg, build_model(cfg, torch.device("cpu"), (1, SIZE, SIZE)), torch.nn.functional.cross_entropy
    )
    state = {
        "format_version": FORMAT_VERSION,
        "step": 7,
        "model": algorithm.state_dict(),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "inputs": SPEC,
    }
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(state, path)
    return path, algorithm


def test_an_adapted_model_exports_and_predicts_as_in_pytorch(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    torch.manual_seed(1)
    support_x, support_y = torch.randn(6, 1, SIZE, SIZE), torch.arange(WAYS).repeat(2)
    adapted = maml_cli.load(path).adapt(support_x, support_y, steps=3)
    adapted.save(tmp_path / "adapted.pt")

    assert main([f"model={tmp_path / 'adapted.pt'}", "format=onnx"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {tmp_path / 'adapted.onnx'}: the adapted network of ") and "within " in line
    query = torch.randn(5, 1, SIZE, SIZE)
    logits = load_exported(tmp_path / "adapted.onnx", "onnx")(query)[0]
    torch.testing.assert_close(logits.softmax(-1), adapted.predict(query), atol=1e-5, rtol=0)


def test_the_initialisation_exports_for_adapting_elsewhere(checkpoint, tmp_path, capsys):
    path, algorithm = checkpoint
    assert main([f"checkpoint={path}", "format=torchscript", f"output={tmp_path / 'init.torchscript.pt'}"]) == 0
    assert "the meta-learned initialisation of" in capsys.readouterr().out
    query = torch.randn(4, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = algorithm.model.eval()(query)
    torch.testing.assert_close(load_exported(tmp_path / "init.torchscript.pt", "torchscript")(query)[0], expected)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["format=onnx"], "give one of model=ADAPTED.pt"),
        (["model=a.pt", "checkpoint=b.pt", "format=onnx"], "give one of model=ADAPTED.pt"),
        (["model=a.pt"], "say which format: format=onnx|torchscript|pt2"),
        (["model=a.pt", "format=tflite"], "format must be one of onnx, torchscript, pt2, got 'tflite'"),
        (["model=a.pt", "fromat=onnx"], "unknown argument 'fromat' (did you mean 'format'?)"),
        (["model=a.pt", "onnx"], "maml-export takes key=value arguments, got 'onnx'"),
        (["model=/nowhere/adapted.pt", "format=pt2"], "adapted model not found: /nowhere/adapted.pt"),
    ],
)
def test_mistakes_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_help(capsys):
    main(["--help"])
    assert capsys.readouterr().out.startswith("usage: maml-export (model=ADAPTED.pt | checkpoint=PATH)")
