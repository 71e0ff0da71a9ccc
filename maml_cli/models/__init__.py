"""Built-in models. Any ``torch.nn.Module`` can be meta-trained; these are the paper's."""

from maml_cli.models.mlp import MLP

__all__ = ["MLP"]
