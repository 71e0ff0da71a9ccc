"""Export of a network as ONNX, TorchScript and a torch.export program (maml_cli/deploy/export.py).

Each built-in model is exported once per format with a dynamic batch dimension (module-scoped: the
ONNX exporter takes seconds per model), then run at several batch sizes against PyTorch. The
built-in models normalise with each batch's own statistics, so both sides get the same batch.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch
from torch import nn
from torch.func import functional_call

from maml_cli.deploy.export import (
    FORMATS,
    ExportMismatch,
    default_path,
    export_network,
    load_exported,
    verify_export,
)
from maml_cli.errors import ConfigError
from maml_cli.models import MLP, Conv4, ResNet12
from maml_cli.models.batch_norm import prepare_batch_norms

pytest.importorskip("onnxruntime", reason="the [export] extra is part of [test]")


class RunningStatsNet(nn.Module):
    """A model as users write it: standard BatchNorm2d (running statistics), used in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

    def forward(self, x):
        return self.head(self.body(x))


def running_stats_net() -> nn.Module:
    net = RunningStatsNet()
    prepare_batch_norms(net, "running")
    norm = net.body[1]
    with torch.no_grad():  # statistics far from a fresh batch's, so that using them shows
        norm.running_mean.uniform_(-1.0, 1.0)
        norm.running_var.uniform_(0.5, 2.0)
    return net.eval()


# name: (builder, input shape without the batch, batch sizes checked)
MODELS = {
    "mlp": (lambda: MLP(1, 1, hidden_sizes=[40, 40]), (1,), (1, 3, 7)),
    "conv4": (lambda: Conv4(1, 5, hidden=8, image_size=28), (1, 28, 28), (1, 3, 7)),
    "resnet12": (lambda: ResNet12(3, 5, widths=[8, 16, 16, 16], image_size=32), (3, 32, 32), (1, 3, 7)),
    "running_bn": (running_stats_net, (1, 8, 8), (1, 3, 7)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every model exported to every format: {(model, format): (network, path)}; times printed."""
    directory = tmp_path_factory.mktemp("exports")
    artefacts = {}
    for name, (build, shape, _) in MODELS.items():
        torch.manual_seed(0)
        network = build()
        for format in FORMATS:
            start = time.perf_counter()
            path = export_network(network, torch.randn(3, *shape), format, directory / f"{name}{FORMATS[format]}")
            print(f"export {name} {format}: {time.perf_counter() - start:.2f} s")
            artefacts[name, format] = network, path
    return artefacts


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_export_matches_pytorch_at_every_batch_size(exported, name, format):
    network, path = exported[name, format]
    _, shape, sizes = MODELS[name]
    torch.manual_seed(1)
    batches = [torch.randn(n, *shape) for n in sizes]
    difference = verify_export(path, format, network, batches, atol=1e-5)
    print(f"{name} {format}: max abs difference {difference:.3g}")
    assert difference <= 1e-5
    run = load_exported(path, format)
    assert [run(x)[0].shape[0] for x in batches] == list(sizes)  # one artefact, any batch size


def test_batch_statistics_are_the_batch_s_own(exported):
    """Conv-4 normalises with the batch's statistics in the export too: a sample's output depends
    on its batch; with running statistics it does not."""
    x = torch.randn(4, 1, 28, 28)
    run = load_exported(exported["conv4", "onnx"][1], "onnx")
    assert not torch.allclose(run(x)[0][:2], run(x[:2])[0], atol=1e-4)
    x = torch.randn(4, 1, 8, 8)
    run = load_exported(exported["running_bn", "onnx"][1], "onnx")
    torch.testing.assert_close(run(x)[0][:2], run(x[:2])[0], atol=1e-5, rtol=0)


def test_adapted_params_are_exported_and_the_network_is_left_alone(tmp_path):
    torch.manual_seed(0)
    network = MLP(1, 1, hidden_sizes=[40, 40])
    adapted = {name: p + 0.1 * torch.randn_like(p) for name, p in network.named_parameters()}
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    path = export_network(network, torch.randn(5, 1), "pt2", tmp_path / "adapted.pt2", params=adapted)
    assert network.training and all(p.requires_grad for p in network.parameters())
    assert all(torch.equal(p, before[name]) for name, p in network.named_parameters())
    x = torch.randn(7, 1)
    with torch.no_grad():
        expected = functional_call(network, adapted, (x,))
    torch.testing.assert_close(load_exported(path, "pt2")(x)[0], expected, atol=1e-6, rtol=0)
    assert verify_export(path, "pt2", network, x, params=adapted) <= 1e-6
    with pytest.raises(ExportMismatch, match="differs from PyTorch"):  # the initialisation is not the adapted net
        verify_export(path, "pt2", network, x)
    assert [p.name for p in tmp_path.iterdir()] == ["adapted.pt2"]  # no temporary file left
    with pytest.raises(ValueError, match="net.9.weight"):
        export_network(network, torch.randn(5, 1), "pt2", tmp_path / "x.pt2", params={"net.9.weight": x})


def test_a_batch_of_one_as_example_still_exports_a_dynamic_batch(tmp_path):
    network = MLP(1, 1, hidden_sizes=[8])
    path = export_network(network, torch.randn(1, 1), "pt2", tmp_path / "one.pt2")
    assert verify_export(path, "pt2", network, [torch.randn(n, 1) for n in (1, 4)]) <= 1e-6


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as if not installed
    with pytest.raises(ConfigError) as error:
        export_network(MLP(), torch.randn(2, 1), "onnx", tmp_path / "m.onnx")
    message = str(error.value)
    assert "\n" not in message and missing in message and "pip install 'maml-cli[export]'" in message
    assert not list(tmp_path.iterdir())


def test_a_missing_runtime_is_one_line_naming_it(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"onnxruntime.*pip install 'maml-cli\[export\]'"):
        load_exported(exported["mlp", "onnx"][1], "onnx")


def test_formats_and_default_paths(tmp_path):
    with pytest.raises(ConfigError, match="format must be one of onnx, torchscript, pt2, got 'tflite'"):
        export_network(MLP(), torch.randn(2, 1), "tflite", tmp_path / "m")
    assert default_path("runs/x/adapted.pt", "onnx").as_posix() == "runs/x/adapted.onnx"
    assert default_path("best.pt", "torchscript").name == "best.torchscript.pt"
    assert default_path("best.pt", "pt2").name == "best.pt2"
