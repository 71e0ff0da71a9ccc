"""Meta-reinforcement learning (maml_cli/rl): the estimator, the environment, the meta-gradient,
TRPO's pieces, and maml-train / maml-eval on 2D navigation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from maml_cli.engine.trainer import Trainer
from maml_cli.errors import ConfigError
from maml_cli.rl.envs.nav2d import Nav2DEnv
from maml_cli.rl.maml_rl import MAMLRL, PolicyGradientData
from maml_cli.rl.policy import GaussianMLPPolicy
from maml_cli.rl.rollouts import collect
from maml_cli.rl.tasks import RLTaskBatch, nav2d_tasks
from maml_cli.rl.trpo import conjugate_gradient, line_search, trust_region_step
from tests.helpers import compose_train, run_cli


class Bandit:
    """A one-step task: the observation is always 0, the reward of action ``a`` is ``-(a - goal)^2``."""

    observation_dim = action_dim = goal_dim = 1
    horizon = 1

    def sample_goals(self, num_tasks, generator):
        return torch.rand(num_tasks, 1, generator=generator)

    def reset(self, goals, rollouts, seed=0):
        self.goals = goals.reshape(-1, 1)
        return torch.zeros(goals.shape[0], rollouts, 1)

    def step(self, actions):
        rewards = -((actions[..., 0] - self.goals) ** 2)
        return torch.zeros_like(actions), rewards, torch.ones_like(rewards, dtype=torch.bool)


def test_reinforce_gradient_matches_the_analytic_gradient_on_a_one_step_bandit():
    """With a ~ N(mu, sigma^2) and r = -(a - g)^2, J = -((mu - g)^2 + sigma^2): dJ/dmu = -2 (mu - g)
    and dJ/dlog(sigma) = -2 sigma^2. The baseline of a one-step task is the mean reward and the
    advantages are normalised by the rewards' spread, so the inner loss's gradient estimates
    -grad J / std(r)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(1, 1, hidden_sizes=(), init_std=0.7).double()
    with torch.no_grad():
        policy.mean.weight.zero_()
        policy.mean.bias.fill_(0.3)
    algorithm = MAMLRL(policy, gamma=1.0)
    goal = 0.8
    theta = {k: v.detach().unsqueeze(0) for k, v in algorithm._theta().items()}
    episodes = collect(Bandit(), torch.tensor([[goal]]), algorithm.policy, theta, rollouts=200_000, seed=3)
    data = PolicyGradientData(episodes, gamma=1.0, gae_lambda=1.0)
    params = {k: v.clone().requires_grad_() for k, v in theta.items()}
    grads = dict(zip(params, torch.autograd.grad(algorithm.inner_losses(params, data).sum(), list(params.values()))))
    spread = episodes.rewards[0, :, 0].double().std(unbiased=False).item()
    mu, sigma = 0.3, 0.7
    assert grads["mean.bias"].item() * spread == pytest.approx(2 * (mu - goal), rel=0.03)
    assert grads["log_std"].item() * spread == pytest.approx(2 * sigma**2, rel=0.03)
    assert grads["mean.weight"].abs().item() == 0  # the observation is 0


def _reference_episode(goal, actions, horizon=100, max_action=0.1, radius=0.01):
    """One episode of 2D navigation written plainly, a step at a time."""
    x = y = 0.0
    done = False
    out = []
    for t in range(horizon):
        if done:
            out.append(((x, y), 0.0, True))
            continue
        ax = min(max(float(actions[t][0]), -max_action), max_action)
        ay = min(max(float(actions[t][1]), -max_action), max_action)
        x, y = x + ax, y + ay
        distance = math.hypot(x - goal[0], y - goal[1])
        done = distance < radius or t == horizon - 1
        out.append(((x, y), -distance, done))
    return out


def test_batched_nav2d_steps_every_episode_as_a_plain_per_episode_loop():
    env = Nav2DEnv(horizon=12)
    goals = torch.tensor([[0.3, -0.2], [0.05, 0.0], [-0.45, 0.4]])
    generator = torch.Generator().manual_seed(0)
    actions = torch.randn(3, 4, 12, 2, generator=generator) * 0.15
    actions[1, 0] = torch.tensor([0.05, 0.0])  # reaches the goal in one step and stops there
    observation = env.reset(goals, rollouts=4)
    assert observation.shape == (3, 4, 2) and observation.abs().sum() == 0
    steps = [env.step(actions[:, :, t]) for t in range(12)]
    ended_early = 0
    for task in range(3):
        for rollout in range(4):
            reference = _reference_episode(goals[task].tolist(), actions[task, rollout].tolist(), horizon=12)
            for t, ((x, y), reward, done) in enumerate(reference):
                obs, rewards, dones = steps[t]
                assert obs[task, rollout].tolist() == pytest.approx([x, y], abs=1e-6)
                assert rewards[task, rollout].item() == pytest.approx(reward, abs=1e-6)
                assert bool(dones[task, rollout]) == done
            ended_early += reference[5][2]
    assert ended_early >= 1  # the early stop was exercised
    assert bool(steps[1][2][1, 0]) and steps[1][1][1, 0].item() == 0.0


def _tiny_meta_batch(first_order=False, outer="pg"):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(5,), init_std=0.5).double()
    algorithm = MAMLRL(policy, lr=0.5, first_order=first_order, outer=outer, gamma=0.95)
    batch = RLTaskBatch(Nav2DEnv(horizon=4), torch.tensor([[0.3, -0.2], [-0.1, 0.4]]), rollouts=3, seed=11)
    return algorithm, batch


def test_the_rl_meta_gradient_matches_finite_differences_through_the_inner_step():
    """The outer loss as a function of theta, the episodes held fixed: the autograd meta-gradient
    (second order through the policy-gradient step) against central differences in float64."""
    algorithm, batch = _tiny_meta_batch()
    data = algorithm.collect(batch)
    theta = algorithm._theta()
    names, params = list(theta), list(theta.values())
    loss, _ = algorithm.meta_objective(theta, data, create_graph=True, with_kl=False)
    grad = torch.autograd.grad(loss, params)
    first_order_grad = torch.autograd.grad(
        algorithm.meta_objective(theta, data, create_graph=False, with_kl=False)[0], params
    )

    def value_at(direction, eps):
        shifted = {n: (p + eps * d).detach() for n, p, d in zip(names, params, direction)}
        return algorithm.meta_objective(shifted, data, create_graph=False, with_kl=False)[0].item()

    generator = torch.Generator().manual_seed(1)
    gaps = []
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        numeric = (value_at(direction, 1e-6) - value_at(direction, -1e-6)) / 2e-6
        exact = sum((g * d).sum() for g, d in zip(grad, direction)).item()
        first = sum((g * d).sum() for g, d in zip(first_order_grad, direction)).item()
        assert exact == pytest.approx(numeric, rel=1e-6, abs=1e-9)
        gaps.append(abs(first - numeric) / abs(numeric))
    assert max(gaps) > 1e-3  # the second-order terms matter here: first order is measurably off

    # meta_backward (outer=pg) collects the same episodes again and writes this gradient.
    algorithm.meta_backward(batch)
    for p, g in zip(params, grad):
        assert torch.allclose(p.grad, g, rtol=1e-10, atol=1e-12)


def test_a_trpo_step_improves_the_surrogate_within_the_trust_region():
    algorithm, batch = _tiny_meta_batch(outer="trpo")
    data = algorithm.collect(batch)
    theta = algorithm._theta()
    before, _ = algorithm.meta_objective(theta, data, create_graph=False)
    algorithm.meta_backward(batch)
    fraction, tries = algorithm.last_line_search
    assert 0 < fraction <= 1 and tries >= 1
    stepped = {n: (p - p.grad).detach() for n, p in theta.items()}
    after, kl = algorithm.meta_objective(stepped, data, create_graph=False)
    assert after.item() < before.item()
    assert 0 < kl.item() <= algorithm.max_kl


def test_conjugate_gradient_trust_region_and_line_search():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=generator, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=6)
    assert torch.allclose(a @ x, b, atol=1e-8)
    step = trust_region_step(lambda v: a @ v, b, max_kl=0.01, iterations=6)
    assert (0.5 * step @ a @ step).item() == pytest.approx(0.01, rel=1e-6)
    assert torch.allclose(step / step.norm(), x / x.norm(), atol=1e-8)
    # The first fraction that improves the loss within the KL bound: 1 fails the KL, 0.5 passes.
    tried = []

    def evaluate(fraction):
        tried.append(fraction)
        return -fraction, 0.02 * fraction

    assert line_search(evaluate, 0.0, max_kl=0.01, max_steps=5, backtrack=0.5) == (0.5, 2)
    assert line_search(lambda f: (1.0, 0.0), 0.0, max_kl=0.01, max_steps=3, backtrack=0.5) == (0.0, 3)


def test_held_out_episodes_do_not_depend_on_how_tasks_are_batched():
    tasks = nav2d_tasks(seed=0, device="cpu", rollouts=4, horizon=10)
    algorithm = MAMLRL(GaussianMLPPolicy(2, 2, hidden_sizes=(8,)))
    whole = torch.cat([algorithm.evaluate(b, steps=1) for b in tasks.held_out("val", 6, 6)], dim=1)
    split = torch.cat([algorithm.evaluate(b, steps=1) for b in tasks.held_out("val", 6, 4)], dim=1)
    assert whole.shape == (2, 6)
    assert torch.allclose(whole, split, atol=1e-5)
    assert not torch.allclose(
        whole, torch.cat([algorithm.evaluate(b, steps=1) for b in tasks.held_out("test", 6, 6)], 1)
    )


def test_options_that_do_not_apply_to_rl_are_refused():
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(4,))
    with pytest.raises(ConfigError, match=r"inner_loop.zero_head=True does not apply to inner_loop=maml_rl"):
        MAMLRL(policy, zero_head=True)
    with pytest.raises(ConfigError, match=r"inner_loop.adapt=\['head.\*'\] does not apply"):
        MAMLRL(policy, adapt=["head.*"])
    with pytest.raises(ConfigError, match="trainer.precision=bf16 does not apply"):
        MAMLRL(policy, precision="bf16")
    with pytest.raises(ConfigError, match="inner_loop.outer must be trpo or pg"):
        MAMLRL(policy, outer="ppo")


# -- through the command line ------------------------------------------------------------------

TINY = (
    "experiment=maml_rl_nav2d",
    "trainer.meta_batch_size=4",
    "trainer.val_every=2",
    "trainer.val_tasks=6",
    "trainer.ckpt_every=2",
    "trainer.progress=false",
    "dataset.rollouts=4",
    "dataset.horizon=20",
    "model.hidden_sizes=[16,16]",
    "inner_loop.eval_steps=2",
)


def test_maml_train_and_eval_on_nav2d_with_both_baselines(tmp_path):
    # Trained in-process, as maml-train trains (the CLI path is the same Trainer); evaluated by maml-eval.
    metrics = Trainer(compose_train(*TINY, "trainer.max_steps=4"), tmp_path / "maml").fit()
    assert metrics["metric"] == "return" and metrics["higher_is_better"] and metrics["steps"] == 4
    assert metrics["last"]["eval_steps"] == 2 and math.isfinite(metrics["last"]["value"])
    assert json.loads((tmp_path / "maml/metrics.json").read_text())["steps"] == 4
    assert (tmp_path / "maml/tb").is_dir()
    Trainer(compose_train(*TINY, "trainer.max_steps=2", "inner_loop.pretrain=true"), tmp_path / "pre").fit()

    evaluated = run_cli(
        "maml-eval",
        "checkpoint=maml/checkpoints/last.pt",
        "eval.episodes=8",
        "eval.steps=3",
        "eval.baselines=[pre/checkpoints/last.pt,random]",
        "eval.output=eval.json",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["metric"] == "return" and result["episodes"] == 8 and result["shots"] == 4
    assert [row["steps"] for row in result["per_step"]] == [0, 1, 2, 3]
    assert [b["name"] for b in result["baselines"]] == ["pre/checkpoints/last.pt", "random"]
    for baseline in result["baselines"]:
        assert len(baseline["per_step"]) == 4
        assert all(math.isfinite(row["mean"]) and row["ci95"] > 0 for row in baseline["per_step"])
    # Different initialisations score differently on the same tasks.
    means = {result["per_step"][0]["mean"], *(b["per_step"][0]["mean"] for b in result["baselines"])}
    assert len(means) == 3
    for line in ("8 test tasks, 4 episodes each", "after 2 steps", "after 3 steps", "baseline random:"):
        assert line in evaluated.stdout


def test_an_rl_run_resumes_exactly(tmp_path):
    """In-process, as maml-train runs it: 4 steps straight, and 2 steps then 2 more from last.pt."""
    straight = Trainer(compose_train(*TINY, "trainer.max_steps=4"), tmp_path / "straight")
    straight.fit()
    Trainer(compose_train(*TINY, "trainer.max_steps=2"), tmp_path / "parts").fit()
    resumed = Trainer(compose_train(*TINY, "trainer.max_steps=4", "trainer.resume=auto"), tmp_path / "parts")
    assert resumed.step == 2
    resumed.fit()
    a, b = straight.algorithm.state_dict(), resumed.algorithm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.last_val["value"] == straight.last_val["value"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("inner_loop=maml_rl",), "inner_loop=maml_rl adapts a policy on episodes, not on the labelled examples"),
        ((*TINY, "inner_loop.zero_head=true"), "inner_loop.zero_head=True does not apply to inner_loop=maml_rl"),
        ((*TINY, "inner_loop.task_chunk=2"), "inner_loop.task_chunk=2 does not apply to inner_loop=maml_rl"),
        ((*TINY, "optimizer.lr=0.01"), "inner_loop.outer=trpo writes TRPO's step as the meta-gradient"),
        ((*TINY, "trainer.grad_clip=1.0"), "inner_loop.outer=trpo writes TRPO's step as the meta-gradient"),
        ((*TINY, "dataset.rollouts=0"), "dataset.rollouts must be an integer >= 1, got 0"),
        ((*TINY, "dataset.action_dim=3"), "dataset.action_dim is 3 but nav2d's environment has 2"),
    ],
)
def test_bad_rl_configs_are_refused_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as caught:
        Trainer(compose_train(*overrides, "trainer.max_steps=1"), tmp_path / "run")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert not (tmp_path / "run/checkpoints").exists()


def test_a_supervised_algorithm_on_rl_tasks_is_one_line_from_the_cli(tmp_path):
    result = run_cli("maml-train", "dataset=nav2d", "trainer.max_steps=1", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: dataset=nav2d is a reinforcement-learning task distribution: use inner_loop=maml_rl and "
        "model=gaussian_mlp (or an experiment=maml_rl_* preset)"
    ]


def test_halfcheetah_velocity_trains_and_validates_through_the_trainer(tmp_path):
    """Real MuJoCo (the [rl] extra) under the same trainer: two tasks, two short episodes each."""
    cfg = compose_train(
        "experiment=maml_rl_halfcheetah_vel",
        "trainer.max_steps=2",
        "trainer.meta_batch_size=2",
        "trainer.val_every=2",
        "trainer.val_tasks=2",
        "trainer.progress=false",
        "dataset.rollouts=2",
        "dataset.horizon=5",
        "model.hidden_sizes=[8]",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    metrics = trainer.fit()
    assert metrics["steps"] == 2 and metrics["metric"] == "return"
    assert math.isfinite(metrics["last"]["value"]) and metrics["last"]["eval_steps"] == 1
    assert (tmp_path / "run/checkpoints/best.pt").is_file()


def test_halfcheetah_without_mujoco_is_one_line_naming_the_extra(tmp_path):
    """As on a machine without the [rl] extra: ``import mujoco`` fails (a stand-in package that
    raises shadows the installed one)."""
    blocker = tmp_path / "blocked" / "mujoco"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named mujoco')\n")
    result = run_cli(
        "maml-train",
        "experiment=maml_rl_halfcheetah_vel",
        "trainer.max_steps=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "blocked")},
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: dataset=halfcheetah_vel needs MuJoCo: pip install 'maml-cli[rl]'"], result.stderr[-2000:]
    assert not (tmp_path / "run/checkpoints").exists()
