"""HalfCheetah task environments (maml_cli/rl/envs/halfcheetah.py) on real MuJoCo."""

from __future__ import annotations

import sys

import gymnasium  # the [rl] extra, which [test] brings in: these tests fail, never skip, without it
import numpy as np
import pytest
import torch

from maml_cli.errors import ConfigError
from maml_cli.rl.envs.halfcheetah import HalfCheetahEnv, _asset_warnings_dropped


@pytest.fixture
def make_env():
    made = []

    def make(*args, **kwargs):
        env = HalfCheetahEnv(*args, **kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def _actions(tasks, rollouts, steps, seed=0):
    # Wider than [-1, 1], so that the environment's clipping is part of what is checked.
    return torch.randn(steps, tasks, rollouts, 6, generator=torch.Generator().manual_seed(seed)) * 1.5


def test_shapes_dtypes_and_done_at_the_horizon(make_env):
    env = make_env("velocity", horizon=4)
    assert (env.observation_dim, env.action_dim, env.goal_dim, env.horizon) == (17, 6, 1, 4)
    goals = env.sample_goals(3, torch.Generator().manual_seed(0))
    assert goals.shape == (3, 1) and goals.dtype == torch.float32
    observations = env.reset(goals, rollouts=2, seed=0)
    assert observations.shape == (3, 2, 17) and observations.dtype == torch.float32
    for step, actions in enumerate(_actions(3, 2, 4)):
        observations, rewards, done = env.step(actions)
        assert observations.shape == (3, 2, 17) and observations.dtype == torch.float32
        assert rewards.shape == (3, 2) and rewards.dtype == torch.float32
        assert done.shape == (3, 2) and done.dtype == torch.bool
        assert bool(done.all()) == (step == 3) and bool(done.any()) == (step == 3)
        assert torch.isfinite(observations).all() and torch.isfinite(rewards).all()
    # Past the horizon an episode stays done and earns nothing; the cheetahs are not stepped again.
    after, rewards, done = env.step(torch.ones(3, 2, 6))
    assert done.all() and (rewards == 0).all() and torch.equal(after, observations)


@pytest.mark.parametrize("task", ["velocity", "direction"])
def test_rewards_match_a_single_gymnasium_halfcheetah(make_env, task):
    tasks, rollouts, steps, seed = 2, 2, 6, 11
    env = make_env(task, horizon=steps)
    goals = torch.tensor([[0.3], [1.7]]) if task == "velocity" else torch.tensor([[1.0], [-1.0]])
    actions = _actions(tasks, rollouts, steps, seed=1)
    observations = [env.reset(goals, rollouts, seed=seed)]
    rewards = []
    for step_actions in actions:
        obs, reward, _ = env.step(step_actions)
        observations.append(obs)
        rewards.append(reward)

    with _asset_warnings_dropped():
        reference = gymnasium.make("HalfCheetah-v5")
    try:
        for task_index in range(tasks):
            goal = float(goals[task_index, 0])
            for rollout in range(rollouts):
                index = task_index * rollouts + rollout
                obs, _ = reference.reset(seed=seed + index)
                np.testing.assert_allclose(observations[0][task_index, rollout], obs, atol=1e-5)
                for step in range(steps):
                    action = np.clip(actions[step, task_index, rollout].double().numpy(), -1.0, 1.0)
                    obs, _, terminated, truncated, info = reference.step(action)
                    assert not (terminated or truncated)
                    velocity = info["x_velocity"]
                    cost = 0.05 * float(np.sum(action**2))
                    expected = -abs(velocity - goal) - cost if task == "velocity" else goal * velocity - cost
                    assert rewards[step][task_index, rollout].item() == pytest.approx(expected, abs=1e-5)
                    np.testing.assert_allclose(observations[step + 1][task_index, rollout], obs, atol=1e-5)
    finally:
        reference.close()


def _observations(env, goals, seed, actions):
    out = [env.reset(goals, rollouts=3, seed=seed)]
    out += [env.step(a)[0] for a in actions]
    return torch.stack(out)


def test_the_seed_fixes_every_start(make_env):
    env = make_env("direction", horizon=5)
    goals = torch.tensor([[1.0], [-1.0]])
    actions = _actions(2, 3, 5)
    first = _observations(env, goals, 7, actions)
    assert torch.equal(first, _observations(env, goals, 7, actions))
    assert not torch.equal(first[0], _observations(env, goals, 8, actions)[0])
    # Each cheetah of a batch starts from its own noise (seed + its index), not a copy of the first.
    starts = first[0].reshape(6, 17)
    assert len({tuple(row.tolist()) for row in starts}) == 6
    # A batch of another size gets its own vector environment; coming back reuses the first one.
    env.reset(torch.tensor([[1.0]]), rollouts=1, seed=7)
    assert torch.equal(first, _observations(env, goals, 7, actions))


def test_goals_come_from_the_task_distribution(make_env):
    velocity = make_env("velocity").sample_goals(500, torch.Generator().manual_seed(0))
    assert velocity.shape == (500, 1) and velocity.min() >= 0 and velocity.max() <= 2
    assert velocity.min() < 0.1 and velocity.max() > 1.9
    assert torch.equal(velocity, make_env("velocity").sample_goals(500, torch.Generator().manual_seed(0)))
    direction = make_env("direction").sample_goals(500, torch.Generator().manual_seed(0))
    assert set(direction.flatten().tolist()) == {-1.0, 1.0}
    assert 200 < int((direction == 1).sum()) < 300


def test_bad_task_or_horizon_is_one_line():
    with pytest.raises(ConfigError, match="'velocity' or 'direction'"):
        HalfCheetahEnv(task="backflip")
    with pytest.raises(ConfigError, match="horizon"):
        HalfCheetahEnv(task="velocity", horizon=0)


@pytest.mark.parametrize("missing", ["mujoco", "gymnasium"])
@pytest.mark.parametrize("task, dataset", [("velocity", "halfcheetah_vel"), ("direction", "halfcheetah_dir")])
def test_missing_extra_names_it(monkeypatch, missing, task, dataset):
    monkeypatch.setitem(sys.modules, missing, None)  # `import mujoco` now raises ImportError
    with pytest.raises(ConfigError) as raised:
        HalfCheetahEnv(task=task)
    message = str(raised.value)
    assert "\n" not in message and "maml-cli[rl]" in message and f"dataset={dataset}" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_come_back_on_the_device(make_env):
    env = make_env("velocity", horizon=2, device="cuda")
    goals = env.sample_goals(2, torch.Generator().manual_seed(0))
    observations = env.reset(goals, rollouts=2, seed=0)
    assert observations.device.type == "cuda"
    observations, rewards, done = env.step(torch.zeros(2, 2, 6, device="cuda"))
    assert {observations.device.type, rewards.device.type, done.device.type} == {"cuda"}
