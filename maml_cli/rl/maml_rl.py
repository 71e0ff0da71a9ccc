"""MAML for reinforcement learning (Finn et al., 2017, Sec. 5.3 and Algorithm 3).

For each task of a meta-batch (a goal), the inner loop collects ``rollouts`` episodes with the
current policy and takes ``steps`` vanilla policy-gradient (REINFORCE) steps,

    theta_i' = theta - alpha * grad_theta [ -mean_t log pi_theta(a_t|s_t) A_t ],

with advantages ``A`` from discounted returns minus a linear feature baseline fitted on the
task's own episodes (:mod:`~maml_cli.rl.baseline`), normalised per task. The adapted policy then
collects new episodes of the same task, and the outer loop improves theta on those: by default
with TRPO (mean KL 0.01, conjugate gradient, line search), differentiating through the inner step
(second order), as the paper and its code do; ``outer=pg`` instead returns the plain gradient of
the same surrogate for any ``torch.optim`` optimizer.

How this meets the engine. The trainer asks every algorithm for two things: a meta-gradient of a
batch of tasks in ``.grad`` (:meth:`MAMLRL.meta_backward`) and scores on held-out tasks
(:meth:`MAMLRL.evaluate`). Here a batch of tasks is goals bound to an environment
(:class:`~maml_cli.rl.tasks.RLTaskBatch`), and the algorithm collects the episodes it needs from
it with the parameters it wants data of. A TRPO step is not a gradient step (its length comes
from the trust region and the line search), so ``outer=trpo`` writes the accepted step itself
into ``.grad`` and runs with ``optimizer=sgd optimizer.lr=1`` (checked when the run is built):
``theta <- theta - 1 * step``. The "losses" it reports are minus the average returns, before and
after adaptation, so that the trainer's logs and checks apply unchanged.

``pretrain=true`` trains the paper's "pretrained" baseline with the same machinery: one policy
for all tasks at once, the outer objective on the unadapted policy's episodes. Evaluated like
MAML (adapted with the same inner steps), it is what meta-learning must beat.

Several inner steps collect fresh episodes after each step, like pytorch-maml-rl; the
meta-gradient flows through the parameter updates but not through the dependence of later
episodes on the adapted policy (the paper uses one step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from maml_cli.algorithms.maml import MetaStepOutput
from maml_cli.errors import ConfigError
from maml_cli.rl import baseline
from maml_cli.rl.rollouts import Episodes, gae, normalise_per_task
from maml_cli.rl.tasks import RLTaskBatch
from maml_cli.rl.trpo import line_search, trust_region_step

Params = dict[str, Tensor]
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

#: Options every inner-loop config has that MAML-RL does not use, with the value meaning "unset".
_SUPERVISED_ONLY = {"task_chunk": 0, "zero_head": False, "grad_clip": None, "adapt": None}


def gaussian_log_prob(mean: Tensor, std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of ``actions`` under a diagonal Gaussian, summed over the action dimension."""
    return (-((actions - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI).sum(dim=-1)


def gaussian_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """KL(p || q) of two diagonal Gaussians, summed over the action dimension."""
    return (torch.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5).sum(dim=-1)


def _leaves(params: Params) -> Params:
    """Copies that an inner gradient can be taken with respect to, cut from any graph."""
    return {k: v.detach().clone().requires_grad_() for k, v in params.items()}


def _detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


class PolicyGradientData:
    """One batch of episodes as the policy gradient uses it: flat observations and actions
    ``[T, N, ...]``, normalised advantages and the valid-step mask ``[T, N]``, and each task's
    average return ``[T]``."""

    def __init__(self, episodes: Episodes, gamma: float, gae_lambda: float) -> None:
        values = baseline.fit_and_predict(episodes, gamma)
        advantages = normalise_per_task(gae(episodes.rewards, values, episodes.mask, gamma, gae_lambda), episodes.mask)
        tasks = episodes.num_tasks
        self.observations, self.actions = episodes.flat()
        self.advantages = advantages.reshape(tasks, -1).detach()
        self.mask = episodes.mask.reshape(tasks, -1)
        self.returns = episodes.returns()


@dataclass
class MetaBatchData:
    """Everything one meta-step needs, collected once: the episodes of each inner step (``train``,
    none under ``pretrain``), the adapted policies' episodes (``valid``), and those policies'
    action distributions on them (the "old" policy of TRPO's importance ratio and KL)."""

    train: list[PolicyGradientData]
    valid: PolicyGradientData
    old_mean: Tensor
    old_std: Tensor

    @property
    def num_tasks(self) -> int:
        return self.valid.advantages.shape[0]


class MAMLRL(nn.Module):
    """MAML-RL of a policy ``model`` (``forward(obs) -> (mean, std)``: see
    :class:`~maml_cli.rl.policy.GaussianMLPPolicy`).

    Args:
        steps: inner policy-gradient steps in meta-training (the paper: 1).
        lr: the inner step size alpha (the paper: 0.1).
        first_order: treat the inner gradient as a constant (first-order MAML-RL).
        eval_steps: inner steps at validation and ``maml-eval`` (the paper's Figure 4: up to 3).
        outer: ``trpo`` (the paper) or ``pg`` (the surrogate's plain gradient, for any optimizer).
        max_kl, cg_iters, cg_damping, ls_max_steps, ls_backtrack: TRPO's trust region, conjugate
            gradient and line search (pytorch-maml-rl's defaults).
        gamma, gae_lambda: discount and GAE parameter of the advantages (0.99 and 1.0).
        pretrain: train without adaptation (the paper's pretrained baseline; see the module).
        fisher: the curvature TRPO's trust region is measured with. ``exact`` (the paper's code):
            the Hessian of the mean KL of the adapted policies with respect to theta, through the
            inner step, so each conjugate-gradient product differentiates the inner loss three
            times; ``first_order``: the same KL's Hessian with the inner step's Jacobian taken
            as the identity, several times cheaper. Either way the line search accepts a step
            only when the true KL is within ``max_kl``, and the gradient is the exact one.
    """

    family = "rl"

    def __init__(
        self,
        model: nn.Module,
        loss=None,
        steps: int = 1,
        lr: float = 0.1,
        first_order: bool = False,
        eval_steps: int = 3,
        outer: str = "trpo",
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 1e-5,
        ls_max_steps: int = 15,
        ls_backtrack: float = 0.8,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        pretrain: bool = False,
        fisher: str = "exact",
        task_batching: str = "auto",
        batch_norm: str = "batch",
        precision: str = "fp32",
        **supervised_only,
    ) -> None:
        super().__init__()
        for key, value in supervised_only.items():
            if key not in _SUPERVISED_ONLY:
                raise TypeError(f"unexpected argument {key!r}")
            if value != _SUPERVISED_ONLY[key]:
                raise ConfigError(
                    f"inner_loop.{key}={value} does not apply to inner_loop=maml_rl (it is an option of the "
                    f"supervised algorithms); remove it"
                )
        if str(getattr(task_batching, "value", task_batching)) == "loop":
            raise ConfigError(
                "inner_loop.task_batching=loop does not apply to inner_loop=maml_rl "
                "(tasks are always adapted together); remove it"
            )
        if str(precision) != "fp32":
            raise ConfigError(
                f"trainer.precision={precision} does not apply to inner_loop=maml_rl "
                "(policies are small; it runs in fp32); remove it"
            )
        if fisher not in ("exact", "first_order"):
            raise ConfigError(f"inner_loop.fisher must be exact or first_order, got {fisher!r}")
        if outer not in ("trpo", "pg"):
            raise ConfigError(f"inner_loop.outer must be trpo or pg, got {outer!r}")
        for key, value in (
            ("steps", steps),
            ("eval_steps", eval_steps),
            ("cg_iters", cg_iters),
            ("ls_max_steps", ls_max_steps),
        ):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"inner_loop.{key} must be an integer >= 1, got {value!r}")
        if not (0 < gamma <= 1 and 0 <= gae_lambda <= 1 and 0 < ls_backtrack < 1 and max_kl > 0):
            raise ConfigError(
                "inner_loop: gamma must be in (0, 1], gae_lambda in [0, 1], ls_backtrack in (0, 1), max_kl > 0"
            )
        self.model = model
        self.steps, self.lr, self.first_order = int(steps), float(lr), bool(first_order)
        self.eval_steps, self.outer, self.pretrain = int(eval_steps), outer, bool(pretrain)
        self.max_kl, self.cg_iters, self.cg_damping = float(max_kl), int(cg_iters), float(cg_damping)
        self.ls_max_steps, self.ls_backtrack = int(ls_max_steps), float(ls_backtrack)
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.fisher = fisher
        #: What the last meta_backward's line search did: (fraction of the step taken, tries).
        self.last_line_search: tuple[float, int] | None = None

    # -- the policy over a batch of tasks ----------------------------------------------------

    def strategy(self) -> str:
        return "vmap"

    def _theta(self) -> Params:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def _frozen(self) -> Params:
        params = {name: p for name, p in self.model.named_parameters() if not p.requires_grad}
        return params | dict(self.model.named_buffers())

    def policy(self, params: Params, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Means and standard deviations of each task's policy: ``params`` with a leading task
        dimension, ``observations`` ``[T, N, obs]``."""
        frozen = self._frozen()
        dtype = next(iter(params.values())).dtype  # environments give float32; a float64 policy reads float64
        return vmap(lambda p, o: functional_call(self.model, p | frozen, (o,)))(params, observations.to(dtype))

    def inner_losses(self, params: Params, data: PolicyGradientData) -> Tensor:
        """Each task's REINFORCE loss on its own episodes: ``[T]``."""
        mean, std = self.policy(params, data.observations)
        log_prob = gaussian_log_prob(mean, std, data.actions)
        return -(log_prob * data.advantages * data.mask).sum(dim=1) / data.mask.sum(dim=1).clamp(min=1)

    def _expand(self, theta: Params, tasks: int) -> Params:
        fast = {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in theta.items()}
        if not any(v.requires_grad for v in fast.values()):
            fast = {k: v.clone().requires_grad_() for k, v in fast.items()}
        return fast

    def _inner_step(self, fast: Params, data: PolicyGradientData, create_graph: bool) -> Params:
        with torch.enable_grad():
            losses = self.inner_losses(fast, data)
            grads = torch.autograd.grad(losses.sum(), list(fast.values()), create_graph=create_graph)
        return {k: v - self.lr * g for (k, v), g in zip(fast.items(), grads)}

    def _replay(self, theta: Params, train: list[PolicyGradientData], create_graph: bool) -> Params:
        """Each task's adapted parameters from ``theta`` on the stored episodes ``train``."""
        tasks = train[0].advantages.shape[0] if train else None
        fast = self._expand(theta, tasks)
        for data in train:
            fast = self._inner_step(fast, data, create_graph)
        return fast

    # -- the engine's two questions --------------------------------------------------------

    def collect(self, batch: RLTaskBatch) -> MetaBatchData:
        """Collect with the current policy, adapt each task, collect with the adapted policies."""
        tasks = batch.num_tasks
        fast = {k: v.detach().unsqueeze(0).expand(tasks, *v.shape) for k, v in self._theta().items()}
        train: list[PolicyGradientData] = []
        for k in range(0 if self.pretrain else self.steps):
            train.append(PolicyGradientData(batch.rollouts_of(self.policy, fast, round=k), self.gamma, self.gae_lambda))
            fast = _detached(self._inner_step(_leaves(fast), train[-1], False))
        valid = PolicyGradientData(batch.rollouts_of(self.policy, fast, round=len(train)), self.gamma, self.gae_lambda)
        with torch.no_grad():
            old_mean, old_std = self.policy(fast, valid.observations)
        return MetaBatchData(train, valid, old_mean, old_std)

    def meta_objective(
        self, params: Params, data: MetaBatchData, create_graph: bool, with_kl: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """The outer loss at ``params`` (one tensor each, no task dimension): the importance-weighted
        policy-gradient surrogate of the adapted policies on ``data.valid``, averaged over tasks,
        and (``with_kl``) their mean KL divergence from the policies that collected it. The
        adaptation is replayed from ``params`` on the stored episodes; ``create_graph`` keeps the
        inner gradient in the graph (the second-order meta-gradient)."""
        if data.train:
            adapted = self._replay(params, data.train, create_graph)
        else:
            adapted = self._expand(params, data.num_tasks)
        valid = data.valid
        mean, std = self.policy(adapted, valid.observations)
        new_log_prob = gaussian_log_prob(mean, std, valid.actions)
        log_ratio = new_log_prob - gaussian_log_prob(data.old_mean, data.old_std, valid.actions)
        count = valid.mask.sum(dim=1).clamp(min=1)
        surrogate = -(log_ratio.exp() * valid.advantages * valid.mask).sum(dim=1) / count
        if not with_kl:
            return surrogate.mean(), None
        kl = (gaussian_kl(data.old_mean, data.old_std, mean, std) * valid.mask).sum(dim=1) / count
        return surrogate.mean(), kl.mean()

    def meta_backward(self, batch: RLTaskBatch, step: int | None = None) -> MetaStepOutput:
        """Collect, adapt, collect again, and write the outer update into ``.grad``."""
        self.train()
        data = self.collect(batch)
        theta = self._theta()
        second_order = not self.first_order

        def objective(params: Params, create_graph: bool, with_kl: bool = True):
            return self.meta_objective(params, data, create_graph, with_kl)

        names, params = list(theta), list(theta.values())
        if self.outer == "pg":
            loss, _ = objective(theta, create_graph=second_order, with_kl=False)
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g.detach()
        else:
            self._trpo_step(objective, theta, names, params, second_order)
        before = data.train[0].returns if data.train else data.valid.returns
        return MetaStepOutput(loss_before=-before.detach(), loss_after=-data.valid.returns.detach())

    def _trpo_step(self, objective, theta: Params, names: list[str], params: list[Tensor], second_order: bool) -> None:
        loss, kl = objective(theta, create_graph=second_order)
        gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        if self.fisher == "first_order" and second_order:
            # The KL's curvature without the inner step's own curvature (d phi / d theta taken as
            # the identity): each product is a pass over the new episodes only (see the class).
            _, kl = objective(theta, create_graph=False)
        kl_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, params, create_graph=True)])

        def fisher_product(vector: Tensor) -> Tensor:
            product = torch.autograd.grad(kl_grad @ vector, params, retain_graph=True)
            return torch.cat([g.reshape(-1) for g in product]).detach() + self.cg_damping * vector

        step = trust_region_step(fisher_product, gradient.detach(), self.max_kl, self.cg_iters)
        shapes = [p.shape for p in params]
        pieces = dict(zip(names, torch.split(step, [p.numel() for p in params])))

        def try_fraction(fraction: float) -> tuple[float, float]:
            candidate = {
                n: (p - fraction * pieces[n].reshape(shape)).detach() for n, p, shape in zip(names, params, shapes)
            }
            new_loss, new_kl = objective(candidate, create_graph=False)
            return new_loss.item(), new_kl.item()

        fraction, tries = line_search(try_fraction, loss.item(), self.max_kl, self.ls_max_steps, self.ls_backtrack)
        self.last_line_search = (fraction, tries)
        for p, shape, n in zip(params, shapes, names):
            p.grad = (fraction * pieces[n]).reshape(shape).clone()

    def evaluate(self, batch: RLTaskBatch, metric=None, steps: int | None = None) -> Tensor:
        """The average return of each task after 0, 1, ..., ``steps`` inner steps: ``[steps + 1, T]``
        (``metric`` is not used: the return is the score). Each step adapts on fresh episodes of
        the policy it has reached, as in the paper's Figure 4."""
        self.eval()
        steps = self.eval_steps if steps is None else int(steps)
        tasks = batch.num_tasks
        fast = {k: v.detach().unsqueeze(0).expand(tasks, *v.shape) for k, v in self._theta().items()}
        rows = []
        for k in range(steps + 1):
            data = PolicyGradientData(batch.rollouts_of(self.policy, fast, round=k), self.gamma, self.gae_lambda)
            rows.append(data.returns)
            if k < steps:
                fast = _detached(self._inner_step(_leaves(fast), data, False))
        return torch.stack(rows)
