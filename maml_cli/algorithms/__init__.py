"""Meta-learning algorithms: functional inner loops that turn a meta-batch into a meta-gradient.

An algorithm is an ``nn.Module`` holding the model (and any meta-parameters of its own), with
three verbs the engine uses: ``meta_backward(batch, step)``, ``evaluate(batch, metric, steps)`` and
``adapt(support_x, support_y, steps)``. It knows nothing of logging, checkpoints or the CLI.
"""

from maml_cli.algorithms.anil import ANIL
from maml_cli.algorithms.maml import MAML, MetaStepOutput

__all__ = ["ANIL", "MAML", "MetaStepOutput"]
