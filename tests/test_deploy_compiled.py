"""Compiled adaptation (``MetaModel.compile``, ``maml-serve compile=true``): torch.compile's
inductor on this machine's C++ compiler, held to the eager inner loop it replaces."""

from __future__ import annotations

import copy

import pytest
import torch

import maml_cli
from maml_cli.errors import ConfigError

from .helpers import write_untrained_checkpoint

SINUSOID = {"problem": "regression", "input_shape": [1], "features": ["x"], "target": "y"}
SMALL = ["model.hidden_sizes=[8,8]", "inner_loop.eval_steps=2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled")
    maml = write_untrained_checkpoint(root / "maml.pt", SMALL, SINUSOID, (1,))[0]
    metasgd = write_untrained_checkpoint(root / "metasgd.pt", [*SMALL, "inner_loop=metasgd"], SINUSOID, (1,))[0]
    mamlpp = write_untrained_checkpoint(root / "mamlpp.pt", [*SMALL, "inner_loop=mamlpp"], SINUSOID, (1,))[0]
    return {"maml": maml, "metasgd": metasgd, "mamlpp": mamlpp}


def _support(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(k, 1, generator=g) * 10 - 5
    return x, 2 * torch.sin(x + 1)


def _weights(adapted) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in adapted.network.state_dict().items()}


def test_compiled_maml_adapts_as_the_eager_loop_for_any_support_size(checkpoints):
    eager, compiled = maml_cli.load(checkpoints["maml"]), maml_cli.load(checkpoints["maml"], compile=True)
    assert compiled.info()["compiled_steps"] == [2] and eager.info()["compiled_steps"] == []
    for k in (10, 5, 23):  # one graph for every support size (dynamic shapes)
        x, y = _support(k, seed=k)
        want, got = eager.adapt(x, y), compiled.adapt(x, y)
        for name, value in want.network.state_dict().items():
            torch.testing.assert_close(got.network.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(_weights(got)["net.0.weight"], _weights(eager.adapt(x, y, steps=0))["net.0.weight"])
        query = torch.linspace(-5, 5, 7)[:, None]
        torch.testing.assert_close(got.predict(query), want.predict(query), rtol=1e-5, atol=1e-6)
    # Another number of steps than the compiled one runs the eager loop: the same weights as eager.
    x, y = _support(10, seed=3)
    torch.testing.assert_close(compiled.adapt(x, y, steps=4).predict(x), eager.adapt(x, y, steps=4).predict(x))


def test_compiled_metasgd_uses_its_learned_rates_and_a_copy_compiles_its_own(checkpoints):
    eager = maml_cli.load(checkpoints["metasgd"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # rates that differ entry by entry, as a trained Meta-SGD's do
        for rate in eager.algorithm.inner_lrs.values():
            rate.copy_(torch.rand(rate.shape, generator=g) * 0.2)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    x, y = _support(10, seed=1)
    want, got = eager.adapt(x, y), compiled.adapt(x, y)
    for name, value in want.network.state_dict().items():
        torch.testing.assert_close(got.network.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    # A worker's copy (maml-serve deep-copies the model per worker) runs its own modules.
    clone = copy.deepcopy(compiled)
    assert clone.info()["compiled_steps"] == [2]
    assert clone._compiled[2].algorithm is clone.algorithm is not compiled.algorithm
    torch.testing.assert_close(clone.adapt(x, y).predict(x), want.predict(x), rtol=1e-5, atol=1e-6)


def test_an_algorithm_with_its_own_inner_loop_is_refused_in_one_line(checkpoints):
    with pytest.raises(ConfigError) as error:
        maml_cli.load(checkpoints["mamlpp"], compile=True)
    message = str(error.value)
    assert "\n" not in message and "not MAMLPlusPlus" in message and "without compile" in message
