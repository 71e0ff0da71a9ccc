"""model=torchvision, model.weights_path and trainer.init_from: build, load, report, refuse."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision.models
from torch.nn import functional as F

from maml_cli.engine import Trainer
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.engine.init_weights import load_initial_weights
from maml_cli.errors import CheckpointError, ConfigError
from maml_cli.models import torchvision_model
from maml_cli.models.torchvision_models import Hardsigmoid, Hardswish

from . import fixtures_images as fx
from .helpers import run_cli


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_builds_with_the_datasets_channels_and_a_ways_way_head(name, channels, size):
    model = torchvision_model(name, in_channels=channels, out_features=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 5)
    reference = torchvision.models.get_model(name, weights=None)
    # Same keys as torchvision's model: a torchvision state dict maps onto it by name.
    assert list(model.state_dict()) == list(reference.state_dict())


def test_mobilenet_v3_activations_are_the_same_functions_and_differentiable_twice():
    model = torchvision_model("mobilenet_v3_small", 1, 5)
    assert not any(isinstance(m, (torch.nn.Hardsigmoid, torch.nn.Hardswish)) for m in model.modules())
    x = torch.linspace(-5, 5, 2001, requires_grad=True)
    for mine, theirs in ((Hardsigmoid(), F.hardsigmoid), (Hardswish(), F.hardswish)):
        assert torch.equal(mine(x), theirs(x))
        (first,) = torch.autograd.grad(mine(x).sum(), x, create_graph=True)
        torch.autograd.grad(first.sum(), x)  # the second-order MAML needs; torch's own kernels have none


def test_builder_keyword_arguments_reach_torchvision():
    narrow = torchvision_model("mobilenet_v3_small", 1, 5, kwargs={"width_mult": 0.5})
    full = torchvision_model("mobilenet_v3_small", 1, 5)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters())
    with pytest.raises(ConfigError, match="model.kwargs.num_classes is set by maml-cli"):
        torchvision_model("resnet18", 1, 5, kwargs={"num_classes": 3})


def test_unknown_name_lists_the_close_ones():
    with pytest.raises(ConfigError) as error:
        torchvision_model("resnet81", 1, 5)
    message = str(error.value)
    assert "\n" not in message and "model.name=resnet81 is not a torchvision image classifier" in message
    assert "close ones: resnet18" in message and "resnet101" in message


@pytest.fixture
def resnet18_file(tmp_path):
    """A torchvision ResNet-18 state dict (ImageNet's shape: 3 channels, 1000 classes), plus a foreign key."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["projector.weight"] = torch.ones(4, 4)
    path = tmp_path / "resnet18.pt"
    torch.save(state, path)
    return path, state


def test_weights_path_loads_adapts_the_first_conv_and_reports_the_new_head(resnet18_file, caplog):
    path, state = resnet18_file
    model = torchvision_model("resnet18", in_channels=1, out_features=5)
    head_before = model.fc.weight.clone()
    with caplog.at_level(logging.INFO, logger="maml_cli"):
        load_initial_weights(model, weights_path=str(path), init_from=None)
    own = model.state_dict()
    assert torch.equal(own["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert all(torch.equal(own[k], state[k]) for k in own if k not in ("conv1.weight", "fc.weight", "fc.bias"))
    assert torch.equal(model.fc.weight, head_before)  # the replaced head keeps its initialisation
    report = caplog.text
    assert f"model.weights_path={path}: loaded 120 of the model's 122 tensors" in report
    assert "conv1.weight: the file's 3 input channels summed into 1" in report
    assert "new (replaced head, keeps its initialisation): fc.weight [1000, 512] -> [5, 512], fc.bias" in report
    assert "ignored (in the file, not in the model): projector.weight" in report


def test_weights_path_refuses_other_mismatches_and_non_state_dicts(resnet18_file, tmp_path):
    path, state = resnet18_file
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(state, path)
    with pytest.raises(ConfigError) as error:
        load_initial_weights(torchvision_model("resnet18", 1, 5), weights_path=str(path), init_from=None)
    assert "layer1.0.conv1.weight is [32, 64, 3, 3] in the file but [64, 64, 3, 3] in the model" in str(error.value)

    model = torchvision_model("resnet18", 1, 5)
    with pytest.raises(ConfigError, match="model.weights_path and trainer.init_from are both set"):
        load_initial_weights(model, weights_path=str(path), init_from=str(path))
    for content in ([1, 2], {"epoch": 3}):
        torch.save(content, tmp_path / "other.pt")
        with pytest.raises(ConfigError, match="is not a state dict") as error:
            load_initial_weights(model, weights_path=str(tmp_path / "other.pt"), init_from=None)
        assert "\n" not in str(error.value)
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(ConfigError, match="not a readable PyTorch file"):
        load_initial_weights(model, weights_path=str(tmp_path / "text.pt"), init_from=None)
    torch.save({"conv1.weight": torch.nn.Conv2d(1, 1, 1)}, tmp_path / "module.pt")  # pickled code
    with pytest.raises(ConfigError, match="holds Python objects beyond tensors"):
        load_initial_weights(model, weights_path=str(tmp_path / "module.pt"), init_from=None)


def test_init_from_starts_a_new_run_from_another_runs_model(tiny_cfg, tmp_path, caplog):
    first = Trainer(tiny_cfg("inner_loop=metasgd", "trainer.max_steps=2", "trainer.progress=false"), tmp_path / "a")
    first.fit()
    last = tmp_path / "a/checkpoints/last.pt"
    saved = load_checkpoint(last)
    assert saved["step"] == 2

    with caplog.at_level(logging.INFO, logger="maml_cli"):
        second = Trainer(tiny_cfg(f"trainer.init_from={last}", "trainer.progress=false"), tmp_path / "b")
    assert second.step == 0 and not second.optimizer.state_dict()["state"]
    model = second.algorithm.model.state_dict()
    assert all(torch.equal(value, saved["model"][f"model.{key}"]) for key, value in model.items())
    assert f"trainer.init_from={last}: loaded {len(model)} of the model's {len(model)} tensors" in caplog.text
    assert "not loaded, the algorithm's own state:" in caplog.text  # Meta-SGD's learned rates

    with pytest.raises(CheckpointError, match=f"trainer.init_from={last} does not fit the model: "):
        Trainer(tiny_cfg(f"trainer.init_from={last}", "model.hidden_sizes=[8,16]"), tmp_path / "c")


def test_cli_meta_trains_a_pretrained_resnet18_with_a_frozen_body(resnet18_file, tmp_path):
    """Two steps on 1-channel 32x32 images: the ImageNet-shaped file loads with its RGB kernels summed."""
    path, _ = resnet18_file
    fx.image_folder(tmp_path / "images")
    proc = run_cli(
        "maml-train",
        "model=torchvision",
        "model.name=resnet18",
        f"model.weights_path={path}",
        "model.freeze=[conv1.*,bn1.*,layer1.*,layer2.*,layer3.*]",
        "inner_loop.adapt=[layer4.*,fc.*]",
        "dataset=image_folder",
        f"dataset.path={tmp_path / 'images'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.split_ratios=[0.5,0.25,0.25]",
        "dataset.ways=3",
        "dataset.query=1",
        "dataset.image_size=32",
        "dataset.channels=1",
        "trainer.max_steps=2",
        "trainer.meta_batch_size=2",
        "trainer.val_every=2",
        "trainer.val_tasks=2",
        "inner_loop.eval_steps=1",
        "trainer.progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded 120 of the model's 122 tensors" in proc.stderr + proc.stdout
    saved = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert saved["step"] == 2
    start = torch.load(path, weights_only=True)
    # The frozen body is the file's, unchanged by meta-training.
    assert torch.equal(saved["model"]["model.layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])
    assert torch.equal(saved["model"]["model.conv1.weight"], start["conv1.weight"].sum(dim=1, keepdim=True))


def test_stochastic_depth_draws_per_task_under_vmap_and_presets_compose_with_torchvision():
    from maml_cli.algorithms import MAML
    from maml_cli.data.tasks import TaskBatch
    from maml_cli.engine.build import build_model

    from .helpers import compose_train

    torch.manual_seed(0)
    model = torchvision_model("efficientnet_b0", in_channels=3, out_features=3)
    algo = MAML(model, torch.nn.functional.cross_entropy, lr=0.01, task_batching="vmap", first_order=True)
    x, y = torch.randn(2, 3, 3, 32, 32), torch.arange(3).expand(2, -1)
    out = algo.meta_backward(TaskBatch(x, y, x, y))  # training mode: stochastic depth on, per task
    assert torch.isfinite(out.loss_after).all()
    # An image preset sets model.hidden for Conv-4; a torchvision backbone takes it and ignores it.
    cfg = compose_train("experiment=omniglot_5w1s", "model=torchvision", "model.name=resnet18")
    assert cfg.model.hidden == 64
    assert build_model(cfg, torch.device("cpu"), (1, 28, 28)).fc.out_features == 5
