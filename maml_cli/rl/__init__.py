"""Meta-reinforcement learning: MAML's Sec. 5.3 (Finn et al., 2017) on the toolkit's engine.

The room's pieces, in the order data flows through them:

- :mod:`~maml_cli.rl.envs`: batched task environments. One ``reset``/``step`` moves every
  rollout of every task of a meta-batch at once (2D navigation as tensors; MuJoCo HalfCheetah
  through gymnasium's vector environments).
- :mod:`~maml_cli.rl.tasks`: the task distribution the engine samples from. A sampled batch is a
  set of goals bound to an environment: it collects rollouts of whatever policy parameters it is
  given, so the data of each inner step come from the policy that is being adapted.
- :mod:`~maml_cli.rl.rollouts`, :mod:`~maml_cli.rl.baseline`: trajectories, returns, the linear
  feature baseline and advantages.
- :mod:`~maml_cli.rl.policy`: the Gaussian MLP policy.
- :mod:`~maml_cli.rl.maml_rl`: the algorithm. It answers the engine's two questions, the
  meta-gradient of a batch of tasks and the scores of held-out tasks, like every supervised
  algorithm does, so :class:`~maml_cli.engine.trainer.Trainer` trains it unchanged.
"""
