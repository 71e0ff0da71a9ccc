"""maml-cli: Model-Agnostic Meta-Learning (Finn et al., 2017) from the command line.

The package is laid out one idea per sub-package, and data flows one way through them:

- ``config``      structured configs (the schema Hydra validates against) and semantic checks
- ``data``        task distributions that sample few-shot episodes as tensors on the device
- ``models``      plain ``torch.nn.Module``s; any other module works too
- ``algorithms``  functional inner loops (MAML, first-order MAML) that turn a meta-batch into
                  a meta-gradient, knowing nothing of logging or checkpoints
- ``engine``      the episodic training loop, evaluation, checkpoints, TensorBoard, progress
- ``cli``         thin Hydra entry points: ``maml-train`` and ``maml-eval``
"""

__version__ = "0.1.0"
