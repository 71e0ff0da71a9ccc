"""The configs themselves: composition, presets, schema validation and range checks."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from maml_cli.config import validate_run_config
from maml_cli.errors import ConfigError

from .helpers import compose_train


def test_default_composes_the_paper_sinusoid_setup():
    cfg = compose_train()
    assert cfg.seed == 0
    assert cfg.dataset._target_.endswith("SinusoidTasks")
    assert (cfg.dataset.shots, cfg.dataset.query) == (10, 10)
    assert list(cfg.model.hidden_sizes) == [40, 40]
    assert cfg.inner_loop.steps == 1 and cfg.inner_loop.lr == 0.01 and not cfg.inner_loop.first_order
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.001
    assert cfg.trainer.max_steps == 70_000 and cfg.trainer.meta_batch_size == 25
    validate_run_config(cfg)


def test_public_keys_exist():
    cfg = compose_train()
    for key in (
        "seed",
        "trainer.max_steps",
        "trainer.meta_batch_size",
        "trainer.val_every",
        "trainer.val_tasks",
        "trainer.ckpt_every",
        "trainer.device",
        "trainer.resume",
        "inner_loop.steps",
        "inner_loop.lr",
        "inner_loop.first_order",
        "inner_loop.eval_steps",
        "inner_loop.task_batching",
        "inner_loop.task_chunk",
        "optimizer.lr",
        "dataset.shots",
        "dataset.query",
    ):
        OmegaConf.select(cfg, key, throw_on_missing=True)
        assert key.rsplit(".", 1)[-1] in (OmegaConf.select(cfg, key.rsplit(".", 1)[0]) if "." in key else cfg)


def test_fomaml_is_maml_with_first_order():
    fomaml = compose_train("inner_loop=fomaml")
    flag = compose_train("inner_loop.first_order=true")
    assert OmegaConf.to_container(fomaml.inner_loop) == OmegaConf.to_container(flag.inner_loop)


@pytest.mark.parametrize("name,target", [("adam", "Adam"), ("sgd", "SGD"), ("adamw", "AdamW")])
def test_optimizer_group(name, target):
    cfg = compose_train(f"optimizer={name}", "optimizer.schedule=cosine")
    assert cfg.optimizer._target_ == f"torch.optim.{target}"
    assert cfg.optimizer.schedule == "cosine"


def test_experiment_preset_sets_the_paper_values():
    cfg = compose_train("experiment=sinusoid_maml_paper", "trainer.max_steps=5")
    assert cfg.trainer.max_steps == 5  # command-line overrides win over the preset
    assert cfg.trainer.meta_batch_size == 25 and cfg.inner_loop.lr == 0.001  # the released code's alpha


def test_misspelt_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose_train("trainer.max_step=3")
    assert "trainer.max_step" in str(info.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose_train("dataset.shots=ten")
    assert "shots" in str(info.value) + str(info.value.__cause__)


def test_enum_choice_is_validated():
    with pytest.raises(ConfigCompositionException) as info:
        compose_train("inner_loop.task_batching=threads")
    assert "threads" in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize(
    "override,key",
    [
        ("dataset.shots=0", "dataset.shots"),
        ("dataset.query=-1", "dataset.query"),
        ("inner_loop.steps=0", "inner_loop.steps"),
        ("trainer.meta_batch_size=0", "trainer.meta_batch_size"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("trainer.device=tpu", "trainer.device"),
    ],
)
def test_out_of_range_values_are_rejected_with_the_key(override, key):
    cfg = compose_train(override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_run_config(cfg)
