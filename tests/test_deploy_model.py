"""The deployment core in-process: adapt with the checkpoint's algorithm, any number of classes
with a zero head, save and load adapted models, refuse files that are not ones."""

from __future__ import annotations

import pytest
import torch

import maml_cli
from maml_cli.errors import ConfigError

from .helpers import image_batch, write_untrained_checkpoint

SIZE, WAYS = 16, 3
SPEC = {
    "problem": "classification",
    "input_shape": [1, SIZE, SIZE],
    "ways": WAYS,
    "image": {"size": SIZE, "channels": 1, "mean": None, "std": None, "inverted": False},
}


def checkpoint(tmp_path, *overrides: str):
    """A checkpoint as maml-train writes one, of an untrained Conv-4 (no data needed to deploy)."""
    overrides = (
        "dataset=image_folder",
        "dataset.path=/not/needed/to/deploy",
        f"dataset.ways={WAYS}",
        f"dataset.image_size={SIZE}",
        "dataset.channels=1",
        "model=conv4",
        "model.hidden=4",
        *overrides,
    )
    return write_untrained_checkpoint(tmp_path / "best.pt", overrides, SPEC, (1, SIZE, SIZE))


def test_adapted_predictions_are_what_evaluation_scores_and_survive_a_round_trip(tmp_path):
    path, algorithm = checkpoint(tmp_path, "inner_loop=mamlpp", "inner_loop.steps=2")
    batch = image_batch(tasks=1, ways=WAYS, shots=2, query=3, size=SIZE)
    batch = type(batch)(*(t.float() if t.is_floating_point() else t for t in vars(batch).values()))
    expected = algorithm.evaluate(batch, lambda out, y: out.softmax(-1), steps=3)[-1, 0]

    model = maml_cli.load(path)
    assert model.info()["algorithm"] == "MAMLPlusPlus" and model.info()["ways"] == WAYS
    adapted = model.adapt(batch.support_x[0], batch.support_y[0], steps=3, classes=["a", "b", "c"])
    torch.testing.assert_close(adapted.predict(batch.query_x[0]), expected, rtol=1e-5, atol=1e-6)

    adapted.save(tmp_path / "adapted.pt")
    again = maml_cli.load_adapted(tmp_path / "adapted.pt")
    assert again.classes == ["a", "b", "c"] and again.source["steps"] == 3 and again.source["step"] == 7
    torch.testing.assert_close(again.predict(batch.query_x[0]), expected, rtol=1e-5, atol=1e-6)


def test_a_zero_head_adapts_to_any_number_of_classes_and_other_heads_say_their_ways(tmp_path):
    batch = image_batch(tasks=1, ways=5, shots=2, query=2, size=SIZE)
    x, y = batch.support_x[0].float(), batch.support_y[0]
    path, _ = checkpoint(tmp_path, "inner_loop.zero_head=true")
    adapted = maml_cli.load(path).adapt(x, y, steps=2)
    probabilities = adapted.predict(batch.query_x[0].float())
    assert probabilities.shape == (10, 5)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(10))
    adapted.save(tmp_path / "five.pt")
    torch.testing.assert_close(
        maml_cli.load_adapted(tmp_path / "five.pt").predict(batch.query_x[0].float()), probabilities
    )

    (tmp_path / "plain").mkdir()
    path, _ = checkpoint(tmp_path / "plain")
    with pytest.raises(ConfigError, match="meta-trained for 3-way tasks and cannot take 5 classes"):
        maml_cli.load(path).adapt(x, y, steps=2)


def test_bad_inputs_and_files_are_one_line(tmp_path):
    path, _ = checkpoint(tmp_path)
    model = maml_cli.load(path)
    with pytest.raises(
        ConfigError, match=r"support inputs have shape \[4, 3, 16, 16\]; this model takes \[K, 1, 16, 16\]"
    ):
        model.adapt(torch.zeros(4, 3, SIZE, SIZE), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="NaN"):
        model.adapt(torch.full((2, 1, SIZE, SIZE), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        model.adapt(torch.zeros(2, 1, SIZE, SIZE), torch.tensor([0, 0]))

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match=r"list.pt is not an adapted model; write one with maml-adapt"):
        maml_cli.load_adapted(tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(ConfigError, match="not a readable PyTorch file"):
        maml_cli.load_adapted(tmp_path / "text.pt")
    with pytest.raises(ConfigError, match="is a maml-train checkpoint, not an adapted model; adapt it to a task first"):
        maml_cli.load_adapted(path)  # a checkpoint is not an adapted model
    adapted = model.adapt(torch.rand(3, 1, SIZE, SIZE), torch.tensor([0, 1, 2]), steps=1)
    adapted.save(tmp_path / "ok.pt")
    state = torch.load(tmp_path / "ok.pt", weights_only=True)
    state["classes"] = ["x", "y"]  # edited after the fact: the digest no longer matches
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ConfigError, match="is damaged"):
        maml_cli.load_adapted(tmp_path / "edited.pt")
    with pytest.raises(ConfigError, match="inputs have shape"):
        adapted.predict(torch.zeros(3, SIZE, SIZE))


def test_a_run_trained_in_fp16_adapts_in_fp32_off_cuda(tmp_path, caplog):
    """fp16 runs on CUDA only: a checkpoint of an fp16 run still deploys on a CPU, in fp32."""
    from maml_cli.engine.checkpoint import load_checkpoint, save_checkpoint

    sinusoid = {"problem": "regression", "input_shape": [1], "features": ["x"], "target": "y"}
    path = write_untrained_checkpoint(tmp_path / "fp32.pt", ["model.hidden_sizes=[8,8]"], sinusoid, (1,))[0]
    state = load_checkpoint(path)
    state["config"]["trainer"]["precision"] = "fp16"  # as a GPU run writes it
    save_checkpoint(state, tmp_path / "fp16.pt")
    x = torch.linspace(-4, 4, 10)[:, None]
    with caplog.at_level("INFO", logger="maml_cli"):
        fp16 = maml_cli.load(tmp_path / "fp16.pt")
    assert "adapting in fp32 on cpu" in caplog.text
    assert fp16.algorithm.precision.mode == "fp32"
    want = maml_cli.load(path).adapt(x, torch.sin(x), steps=3).predict(x)
    torch.testing.assert_close(fp16.adapt(x, torch.sin(x), steps=3).predict(x), want, rtol=0, atol=0)
