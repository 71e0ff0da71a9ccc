"""Meta-learning algorithms: functional inner loops that turn a meta-batch into a meta-gradient.

An algorithm is an ``nn.Module`` holding the model (and any meta-parameters of its own), with
three verbs the engine uses: ``meta_backward(batch, step)``, ``evaluate(batch, metric, steps)`` and
``adapt(support_x, support_y, steps)``. It knows nothing of logging, checkpoints or the CLI.
"""

from maml_cli.algorithms.anil import ANIL
from maml_cli.algorithms.imaml import IMAML
from maml_cli.algorithms.maml import MAML, MetaStepOutput
from maml_cli.algorithms.mamlpp import MAMLPlusPlus
from maml_cli.algorithms.metasgd import MetaSGD
from maml_cli.algorithms.reptile import Reptile

__all__ = ["ANIL", "IMAML", "MAML", "MAMLPlusPlus", "MetaSGD", "MetaStepOutput", "Reptile"]
