"""maml-cli: Model-Agnostic Meta-Learning (Finn et al., 2017) from the command line.

The package is laid out one idea per sub-package, and data flows one way through them:

- ``config``      structured configs (the schema Hydra validates against) and semantic checks
- ``data``        task distributions that sample few-shot episodes as tensors on the device
- ``models``      plain ``torch.nn.Module``s; any other module works too
- ``algorithms``  functional inner loops (MAML, first-order MAML) that turn a meta-batch into
                  a meta-gradient, knowing nothing of logging or checkpoints
- ``engine``      the episodic training loop, evaluation, checkpoints, TensorBoard, progress
- ``deploy``      from a checkpoint to a new task: adapt, predict, save (``maml_cli.load``)
- ``cli``         thin Hydra entry points: ``maml-train`` and ``maml-eval``
"""

__version__ = "0.1.0"

__all__ = ["load", "load_adapted"]


def __getattr__(name: str):
    # Lazily: importing maml_cli must not import torch, so the CLIs can set OpenMP's wait policy
    # before torch loads (maml_cli/threads.py).
    if name in ("load", "load_adapted"):
        from maml_cli import deploy

        return getattr(deploy, name)
    raise AttributeError(f"module 'maml_cli' has no attribute {name!r}")
