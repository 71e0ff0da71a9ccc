"""HalfCheetah with a goal velocity or a goal direction: the MAML paper's locomotion tasks (Sec. 5.3).

The robot is gymnasium's MuJoCo ``HalfCheetah-v5`` (17 observations: the joint positions less the
torso's x, and every velocity; 6 torques in [-1, 1]). Only the reward is the paper's, computed here
from the forward velocity that gymnasium reports (``info["x_velocity"]``) and the applied action,
as in the reference code (cbfinn/maml_rl, and pytorch-maml-rl's ``HalfCheetahVelEnv`` and
``HalfCheetahDirEnv``):

- ``task="velocity"`` (``dataset=halfcheetah_vel``): a goal speed ``v*`` drawn from U[0, 2];
  ``r = -|v - v*| - 0.05 * |a|^2``;
- ``task="direction"`` (``dataset=halfcheetah_dir``): a direction ``d`` of +1 (forward) or -1
  (backward) with equal probability; ``r = d * v - 0.05 * |a|^2``.

The control cost is that of the clipped action, the torques the robot really got (the reference
code clipped in rllab's ``NormalizedEnv`` before its environment priced the action). Episodes last
``horizon`` steps (200 in the paper): HalfCheetah never falls, so nothing ends an episode early.

All ``tasks * rollouts`` episodes of a batch are one gymnasium vector environment, stepped with one
call. It is the synchronous one: on this project's 2-core machines, 64 cheetahs stepped
at about 5,500 steps/s in one process, against 1,400 with ``vectorization_mode="async"`` (a
process per cheetah, which spend their time passing messages) and 4,500 split over 2 worker
processes of 32 each; a HalfCheetah step is ~0.2 ms of Python and MuJoCo, too little to pay for
the round trip between processes.

gymnasium and MuJoCo are the optional extra ``[rl]``; they are imported when an environment is made,
so this module imports without them.
"""

from __future__ import annotations

import importlib
import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maml_cli.errors import ConfigError

INSTALL_HINT = "pip install 'maml-cli[rl]'"

#: The config name of each task, for messages.
DATASETS = {"velocity": "halfcheetah_vel", "direction": "halfcheetah_dir"}
#: Weight of the squared action in the reward (the reference code's 0.5 * 1e-1).
CONTROL_COST = 0.05
#: Goal speeds are drawn from U[0, MAX_GOAL_VELOCITY].
MAX_GOAL_VELOCITY = 2.0

_GYM_ID = "HalfCheetah-v5"
# gymnasium's half_cheetah.xml sets the robot's total mass with <compiler settotalmass>, which
# MuJoCo 4 still applies but warns about, on stderr and into MUJOCO_LOG.TXT in the working
# directory, once for every cheetah built. Nothing a user can act on; other warnings go through.
_DEPRECATED_ASSET_WARNING = "compiler attribute 'settotalmass' is deprecated"


def _import_gymnasium(task: str) -> Any:
    try:
        import gymnasium
        import mujoco  # noqa: F401

        # HalfCheetah's module imports what MuJoCo environments need beyond mujoco (imageio, glfw).
        importlib.import_module("gymnasium.envs.mujoco.half_cheetah_v5")
    except ImportError:
        raise ConfigError(f"dataset={DATASETS[task]} needs MuJoCo: {INSTALL_HINT}") from None
    return gymnasium


@contextmanager
def _asset_warnings_dropped():
    """While MuJoCo compiles gymnasium's model: drop its deprecation warning about the asset, and
    turn any other MuJoCo warning into a Python warning."""
    import mujoco

    def forward(message: str) -> None:
        if _DEPRECATED_ASSET_WARNING not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(forward)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class HalfCheetahEnv:
    """``tasks * rollouts`` HalfCheetahs stepped together (a :class:`~maml_cli.rl.envs.base.TaskEnv`).

    ``task`` is ``"velocity"`` or ``"direction"``; observations, rewards and done flags are returned
    on ``device``. A vector environment is built for each batch size the first time it is reset
    and kept for the next batches of that size (a meta-training batch and an evaluation batch
    usually differ); :meth:`close` releases them.
    """

    observation_dim = 17
    action_dim = 6
    goal_dim = 1

    def __init__(self, task: str = "velocity", horizon: int = 200, device: str | torch.device = "cpu") -> None:
        if task not in DATASETS:
            raise ConfigError(f"HalfCheetah task must be 'velocity' or 'direction', got {task!r}")
        if int(horizon) < 1:
            raise ConfigError(f"dataset={DATASETS[task]} needs a horizon of at least 1 step, got {horizon}")
        self._gym = _import_gymnasium(task)
        self.task = task
        self.horizon = int(horizon)
        self.device = torch.device(device)
        self._vector_envs: dict[int, Any] = {}
        self._env: Any = None  # the vector environment of the current batch
        self._shape: tuple[int, int] = (0, 0)
        self._goals = np.zeros(0)  # one goal per cheetah, float64
        self._steps = 0
        self._last_observations: Tensor | None = None

    def sample_goals(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        if self.task == "velocity":
            return torch.rand(num_tasks, 1, generator=generator) * MAX_GOAL_VELOCITY
        return (torch.randint(0, 2, (num_tasks, 1), generator=generator) * 2 - 1).float()

    def _vector_env(self, size: int) -> Any:
        env = self._vector_envs.get(size)
        if env is None:
            with _asset_warnings_dropped():
                env = self._gym.make_vec(
                    _GYM_ID,
                    num_envs=size,
                    vectorization_mode="sync",
                    # The time limit lies past the horizon, so it never truncates an episode and
                    # gymnasium never resets a cheetah on its own: an episode is exactly `horizon`
                    # steps, and step() stops stepping after that.
                    max_episode_steps=self.horizon + 1,
                )
            self._vector_envs[size] = env
        return env

    def reset(self, goals: Tensor, rollouts: int, seed: int) -> Tensor:
        if goals.ndim != 2 or goals.shape[1] != self.goal_dim:
            raise ValueError(f"goals must be [tasks, {self.goal_dim}], got {tuple(goals.shape)}")
        tasks, rollouts = goals.shape[0], int(rollouts)
        size = tasks * rollouts
        if size < 1:
            raise ValueError(f"a batch needs at least one episode, got {tasks} tasks x {rollouts} rollouts")
        self._env = self._vector_env(size)
        self._shape = (tasks, rollouts)
        # Cheetah i (in [tasks, rollouts] order) starts from the noise of seed + i.
        observations, _ = self._env.reset(seed=[int(seed) + i for i in range(size)])
        self._goals = np.repeat(goals[:, 0].detach().to("cpu", torch.float64).numpy(), rollouts)
        self._steps = 0
        self._last_observations = self._tensor(observations).reshape(tasks, rollouts, self.observation_dim)
        return self._last_observations

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self._env is None:
            raise RuntimeError("HalfCheetahEnv.step() before reset()")
        tasks, rollouts = self._shape
        if tuple(actions.shape) != (tasks, rollouts, self.action_dim):
            raise ValueError(f"actions must be [{tasks}, {rollouts}, {self.action_dim}], got {tuple(actions.shape)}")
        done = torch.ones(tasks, rollouts, dtype=torch.bool, device=self.device)
        if self._steps >= self.horizon:  # every episode has ended: it stays done, with no reward
            return self._last_observations, torch.zeros(tasks, rollouts, device=self.device), done
        space = self._env.single_action_space
        applied = np.clip(
            actions.detach().to("cpu", torch.float64).numpy().reshape(tasks * rollouts, self.action_dim),
            space.low,
            space.high,
        )
        observations, _, terminated, truncated, info = self._env.step(applied)
        if terminated.any() or truncated.any():  # HalfCheetah-v5 never ends before its time limit
            raise RuntimeError("a HalfCheetah episode ended inside the horizon; gymnasium would reset it")
        velocity = info["x_velocity"]
        if self.task == "velocity":
            rewards = -np.abs(velocity - self._goals)
        else:
            rewards = self._goals * velocity
        rewards = rewards - CONTROL_COST * np.square(applied).sum(axis=1)
        self._steps += 1
        self._last_observations = self._tensor(observations).reshape(tasks, rollouts, self.observation_dim)
        if self._steps < self.horizon:
            done = torch.zeros_like(done)
        return self._last_observations, self._tensor(rewards).reshape(tasks, rollouts), done

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(array)).to(device=self.device, dtype=torch.float32)

    def close(self) -> None:
        """Close every vector environment this one has built."""
        for env in self._vector_envs.values():
            env.close()
        self._vector_envs.clear()
        self._env = None
