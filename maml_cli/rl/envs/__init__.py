"""Batched task environments: see :class:`~maml_cli.rl.envs.base.TaskEnv`."""
