"""ANIL, "almost no inner loop" (Raghu et al., 2020, "Rapid Learning or Feature Reuse?").

Only the head is adapted in the inner loop; the body is shared by all tasks and meta-learned
through the outer loop alone. Raghu et al. find it matches MAML on Omniglot and miniImageNet at a
fraction of the inner-loop cost, which suggests MAML's success is mostly feature reuse.
"""

from __future__ import annotations

from torch import nn

from maml_cli.algorithms.maml import MAML, last_parametrised_module


class ANIL(MAML):
    """MAML whose inner loop adapts only the submodule ``head`` (default: the last one with
    parameters, e.g. ``head`` of :class:`~maml_cli.models.Conv4`).

    It is MAML with ``adapt=[head]``; an explicit ``adapt`` list takes precedence over ``head``.
    """

    def __init__(self, model: nn.Module, loss, head: str | None = None, **kwargs) -> None:
        head = head or last_parametrised_module(model)
        if not any(name.startswith(head + ".") for name, _ in model.named_parameters()):
            known = sorted({name.rsplit(".", 1)[0] for name, _ in model.named_parameters()})
            raise ValueError(f"inner_loop.head={head!r} has no parameters; submodules with some: {known}")
        if kwargs.get("adapt") is None:
            kwargs["adapt"] = [head]
        super().__init__(model, loss, **kwargs)
        self.head = head
