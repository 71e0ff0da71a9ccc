"""Conv-4, ResNet-12 and ANIL inside the functional inner loop: shapes, and exact meta-gradients
under vmap (where batch normalisation is written in plain ops) against the per-task loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maml_cli.algorithms import ANIL, MAML
from maml_cli.models import Conv4, ResNet12, TaskBatchNorm2d

from .helpers import image_batch


def meta_grad(model: nn.Module, algo_cls, strategy: str, first_order=False, **batch_kwargs):
    model.zero_grad()
    algo = algo_cls(
        model, nn.functional.cross_entropy, steps=2, lr=0.3, first_order=first_order, task_batching=strategy
    )
    algo.meta_backward(image_batch(**batch_kwargs))
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("size,hidden,expected", [(28, 64, 64), (84, 32, 32 * 25)])
def test_conv4_shapes(size, hidden, expected):
    model = Conv4(in_channels=3, out_features=5, hidden=hidden, image_size=size)
    assert model.head.in_features == expected
    assert model(torch.randn(7, 3, size, size)).shape == (7, 5)


def test_resnet12_shapes():
    model = ResNet12(in_channels=3, out_features=4, widths=(8, 8, 16, 16), image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="four widths"):
        ResNet12(widths=(8, 8))


def test_task_batchnorm_normalises_each_task_with_its_own_statistics():
    bn = TaskBatchNorm2d(2).double()
    x = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64) * torch.tensor([1.0, 10.0, 100.0]).reshape(3, 1, 1, 1, 1)
    batched = torch.func.vmap(bn)(x)  # the plain-ops path
    per_task = torch.stack([bn(x[t]) for t in range(3)])  # the native path
    torch.testing.assert_close(batched, per_task)
    assert batched[2].mean(dim=(0, 2, 3)).abs().max() < 1e-12
    assert (batched[2].var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-4


@pytest.mark.parametrize("algo_cls", [MAML, ANIL])
@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_vmap_and_loop_meta_gradients_agree(algo_cls, first_order):
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=8, image_size=16).double()
    g_vmap = meta_grad(model, algo_cls, "vmap", first_order)
    g_loop = meta_grad(model, algo_cls, "loop", first_order)
    assert g_loop.norm() > 0
    assert rel(g_vmap, g_loop) <= 1e-10


def test_resnet12_vmap_and_loop_meta_gradients_agree():
    torch.manual_seed(0)
    model = ResNet12(3, 3, widths=(4, 4, 8, 8), image_size=16).double()
    g_vmap = meta_grad(model, MAML, "vmap", channels=3, tasks=2)
    g_loop = meta_grad(model, MAML, "loop", channels=3, tasks=2)
    assert rel(g_vmap, g_loop) <= 1e-10


def test_anil_adapts_only_the_head_and_meta_learns_the_body():
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=8, image_size=16).double()
    anil = ANIL(model, nn.functional.cross_entropy, steps=1, lr=0.5)
    assert anil.head == "head"
    batch = image_batch()
    adapted = anil.adapt(batch.support_x, batch.support_y, steps=2)
    assert set(adapted) == {"head.weight", "head.bias"}
    assert not torch.allclose(adapted["head.weight"][0], model.head.weight)
    anil.meta_backward(batch)
    assert model.features[0][0].weight.grad.abs().sum() > 0  # the body gets a meta-gradient
    with pytest.raises(ValueError, match="has no parameters"):
        ANIL(model, nn.functional.cross_entropy, head="classifier")
