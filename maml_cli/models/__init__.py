"""Built-in models. Any ``torch.nn.Module`` can be meta-trained; these are the papers' ones."""

from maml_cli.models.conv4 import Conv4
from maml_cli.models.layers import TaskBatchNorm2d
from maml_cli.models.mlp import MLP
from maml_cli.models.resnet12 import ResNet12
from maml_cli.models.torchvision_models import torchvision_model

__all__ = ["MLP", "Conv4", "ResNet12", "TaskBatchNorm2d", "torchvision_model"]
