"""From a checkpoint to predictions on a new task: load, adapt, predict, save.

    model = maml_cli.load("runs/omniglot/checkpoints/best.pt")
    adapted = model.adapt(support_x, support_y, steps=10)   # one task: [K, *input_shape], [K]
    probabilities = adapted.predict(query_x)                # [N, ways]; regression: [N, *target]
    adapted.save("adapted.pt")                              # later: maml_cli.load_adapted("adapted.pt")

Adaptation runs the checkpoint's own algorithm (its inner rule, learned rates, zero head, per-step
batch norm...), so a deployed model adapts exactly as ``maml-eval`` scored it. The adapted model
is a plain network with adapted weights: predicting needs no gradients, and the network can be
exported (:mod:`maml_cli.deploy.export`). Nothing here needs the training data: what the inputs
must look like comes from the checkpoint (``inputs``, written by ``maml-train``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn import functional as F

from maml_cli.algorithms.maml import last_parametrised_module
from maml_cli.config.compat import upgrade_run_config
from maml_cli.engine.build import build_algorithm, build_model
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.errors import ConfigError
from maml_cli.storage import file_digest, load_verified, save_verified

log = logging.getLogger("maml_cli")

#: The ``format`` field of an adapted-model file, and its version.
ADAPTED_FORMAT, ADAPTED_VERSION = "maml-cli-adapted", 1


def _loss(problem: str):
    return F.cross_entropy if problem == "classification" else F.mse_loss


def _inputs_of(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    spec = state.get("inputs")
    if spec:
        return dict(spec)
    dataset = state["config"].get("dataset", {})
    if "sinusoid" in str(dataset.get("_target_", "")):  # checkpoints from before ``inputs`` existed
        return {"problem": "regression", "input_shape": [1], "features": ["x"], "target": "y"}
    raise ConfigError(
        f"checkpoint {path} does not say what its inputs look like (written before maml-cli kept that); "
        "continue its run for one step (trainer.resume=PATH trainer.max_steps=<its step + 1>) to get one that does"
    )


class MetaModel:
    """A meta-trained model, ready to adapt to new tasks. Build with :func:`load`."""

    def __init__(self, state: dict[str, Any], source: str | Path, device: str | torch.device = "cpu") -> None:
        self.source = str(source)
        self.device = torch.device(device)
        self.config = OmegaConf.create(upgrade_run_config(dict(state["config"])))
        trainer = self.config.get("trainer") or {}
        if str(trainer.get("precision", "fp32")) == "fp16" and self.device.type != "cuda":
            # fp16 runs on CUDA only; the weights are fp32 whatever the run trained in, so adapt in fp32.
            log.info("the run trained with trainer.precision=fp16 (CUDA only); adapting in fp32 on %s", self.device)
            self.config.trainer.precision = "fp32"
        self.inputs = _inputs_of(state, source)
        self.problem: str = self.inputs["problem"]
        self.input_shape = tuple(int(n) for n in self.inputs["input_shape"])
        self.ways: int | None = self.inputs.get("ways")
        self.step = int(state["step"])
        self.source_digest = file_digest(source)
        self._state = state["model"]
        self.algorithm = self._build(self.config)
        self._compiled: dict[int, Any] = {}  # steps -> CompiledAdaptation (see compile())

    def __deepcopy__(self, memo: dict) -> MetaModel:
        """A copy with its own modules; compiled adaptations are compiled again for the copy's
        modules (a compiled loop runs on the very module it was traced with)."""
        clone = copy.copy(self)
        clone.__dict__ = {k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k != "_compiled"}
        clone._compiled = {}
        for steps in self._compiled:
            clone.compile(steps)
        return clone

    def _build(self, config) -> nn.Module:
        model = build_model(config, self.device, self.input_shape)
        algorithm = build_algorithm(config, model, _loss(self.problem))
        algorithm.load_state_dict(self._state)
        return algorithm.eval()

    # -- what it is ------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Inner steps :meth:`adapt` takes by default: the run's ``inner_loop.eval_steps``."""
        return int(self.algorithm.eval_steps)

    @property
    def any_ways(self) -> bool:
        """Whether tasks may have another number of classes than training had (a zero head)."""
        from maml_cli.algorithms import ANIL, MAML

        return bool(getattr(self.algorithm, "zero_head", False)) and type(self.algorithm) in (MAML, ANIL)

    def info(self) -> dict[str, Any]:
        return {
            "checkpoint": self.source,
            "checkpoint_step": self.step,
            "model": str(self.config.model.get("_target_")),
            "algorithm": type(self.algorithm).__name__,
            "problem": self.problem,
            "ways": self.ways,
            "any_ways": self.any_ways,
            "input_shape": list(self.input_shape),
            "steps": self.steps,
            "compiled_steps": sorted(self._compiled),
            "inputs": self.inputs,
        }

    # -- adaptation --------------------------------------------------------------------------------

    def compile(self, steps: int | None = None) -> float:
        """Compile adaptation in ``steps`` steps (default :attr:`steps`) with ``torch.compile``
        (:mod:`maml_cli.deploy.compiled`); afterwards :meth:`adapt` with that many steps, for the
        trained number of classes, runs the compiled loop. Returns the seconds compiling took.
        Worth it for small models served at low latency (the sinusoid MLP: ~8x); MAML, first-order
        MAML, ANIL and Meta-SGD only."""
        import time

        from maml_cli.deploy.compiled import CompiledAdaptation

        steps = self.steps if steps is None else int(steps)
        started = time.perf_counter()
        compiled = CompiledAdaptation(self.algorithm, steps)
        k = self.ways if self.problem == "classification" and self.ways else 5
        # Zeros are a valid input of every model here (an image, a row, padding token ids).
        x = torch.zeros(k, *self.input_shape, device=self.device, dtype=self._dtype)
        if self.problem == "classification":
            y = torch.arange(k, device=self.device)
        else:
            with torch.no_grad():
                y = torch.zeros_like(self.algorithm.forward_with(self.algorithm.initial_params(), x))
        compiled.warm_up(x, y)
        self._compiled[steps] = compiled
        return time.perf_counter() - started

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.algorithm.model.parameters()).dtype

    def _algorithm_for(self, ways: int | None) -> nn.Module:
        if self.problem != "classification" or ways == self.ways:
            return self.algorithm
        if not self.any_ways:
            raise ConfigError(
                f"this model was meta-trained for {self.ways}-way tasks and cannot take {ways} classes "
                "(only MAML, first-order MAML and ANIL with inner_loop.zero_head=true adapt to any number of classes)"
            )
        model = build_model(self.config, self.device)
        model.load_state_dict({k[len("model.") :]: v for k, v in self._state.items() if k.startswith("model.")})
        _replace_head(model, ways)
        return build_algorithm(self.config, model, _loss(self.problem)).eval()  # zero_head zeroes the new head

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> AdaptedModel:
        """Adapt to one task from its support set: ``support_x`` is ``[K, *input_shape]``;
        ``support_y`` holds class indices ``[K]`` (classification) or targets ``[K, ...]``."""
        steps = self.steps if steps is None else int(steps)
        if steps < 0:
            raise ConfigError(f"steps must be >= 0, got {steps}")
        support_x = torch.as_tensor(support_x)
        if tuple(support_x.shape[1:]) != self.input_shape or support_x.shape[0] < 1:
            shape = ", ".join(map(str, self.input_shape))
            raise ConfigError(f"support inputs have shape {list(support_x.shape)}; this model takes [K, {shape}]")
        dtype = self._dtype
        x = support_x.to(self.device, dtype)
        ways = None
        if self.problem == "classification":
            y = torch.as_tensor(support_y).to(self.device, torch.long)
            ways = len(classes) if classes is not None else int(y.max()) + 1
            if int(y.min()) < 0 or int(y.max()) >= ways:
                raise ConfigError(f"support labels must be class indices 0..{ways - 1}")
            if ways < 2:
                raise ConfigError("a classification task needs at least 2 classes in its support set")
        else:
            y = torch.as_tensor(support_y).to(self.device, dtype)
            if y.dim() == 1:
                y = y[:, None]
        if not torch.isfinite(x).all() or (y.is_floating_point() and not torch.isfinite(y).all()):
            raise ConfigError("the support set holds NaN or infinite values")
        algorithm = self._algorithm_for(ways)
        compiled = self._compiled.get(steps) if algorithm is self.algorithm else None
        params = compiled(x, y) if compiled is not None else algorithm.adapt(x[None], y[None], steps=steps)
        network = copy.deepcopy(algorithm.model).eval()
        with torch.no_grad():
            for name, value in params.items():
                network.get_parameter(name).copy_(value[0])
        for p in network.parameters():
            p.requires_grad_(False)
        names = list(classes) if classes is not None else (None if ways is None else [str(i) for i in range(ways)])
        return AdaptedModel(network, self.problem, names, self.inputs, self._source_record(steps))

    def _source_record(self, steps: int) -> dict[str, Any]:
        return {
            "checkpoint": self.source,
            "digest": self.source_digest,
            "step": self.step,
            "steps": steps,
            "config": self._plain_config,
        }

    @property
    def _plain_config(self) -> dict[str, Any]:
        """The run's config as plain data, made once: converting it took most of a small model's
        compiled adaptation (5 ms of 8). Every adapted model shares it; nothing changes it."""
        if self.__dict__.get("_plain") is None:
            self._plain = OmegaConf.to_container(self.config, resolve=True)
        return self._plain


class AdaptedModel:
    """A network adapted to one task; predicts without gradients. Save with :meth:`save`."""

    def __init__(
        self,
        network: nn.Module,
        problem: str,
        classes: list[str] | None,
        inputs: dict[str, Any],
        source: dict[str, Any],
    ) -> None:
        self.network = network.eval()
        self.problem = problem
        self.classes = classes
        self.inputs = inputs
        self.source = source
        self.input_shape = tuple(int(n) for n in inputs["input_shape"])

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class probabilities ``[N, ways]``, or predicted values ``[N, ...]`` for regression.

        With the toolkit's batch-norm convention (``model.batch_norm=batch``) a network normalises
        with the statistics of the batch it is given, as at evaluation, so predict a task's inputs
        together rather than one by one.
        """
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"inputs have shape {list(x.shape)}; this model takes [N, {', '.join(map(str, self.input_shape))}]"
            )
        parameter = next(self.network.parameters())
        out = self.network(x.to(parameter.device, parameter.dtype))
        return out.softmax(dim=-1) if self.problem == "classification" else out

    # -- the file --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the adapted weights (a plain state dict), class names, input description and the
        source checkpoint's config and digest, atomically with an integrity record."""
        path = Path(path)
        state = {
            "format": ADAPTED_FORMAT,
            "format_version": ADAPTED_VERSION,
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "problem": self.problem,
            "classes": self.classes,
            "inputs": self.inputs,
            "source": self.source,
        }
        save_verified(state, path, "choose another output path")
        return path


def load(path: str | Path, device: str | torch.device = "cpu", compile: bool = False) -> MetaModel:
    """A meta-trained model from a ``maml-train`` checkpoint (verified, ``weights_only``);
    ``compile=True`` compiles its default adaptation now (:meth:`MetaModel.compile`)."""
    model = MetaModel(load_checkpoint(path), path, device)
    if compile:
        model.compile()
    return model


def _replace_head(model: nn.Module, ways: int) -> None:
    """Give ``model`` a ``ways``-way head (its last layer with parameters, an ``nn.Linear``)."""
    head = last_parametrised_module(model)
    old = model.get_submodule(head)
    if not isinstance(old, nn.Linear):
        kind = type(old).__name__
        raise ConfigError(f"the model's head {head!r} is a {kind}, not an nn.Linear: it cannot change its classes")
    new = nn.Linear(old.in_features, ways, bias=old.bias is not None).to(old.weight)
    parent, _, child = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _read_adapted(path: str | Path) -> dict[str, Any]:
    what = "write one with maml-adapt or AdaptedModel.save"
    if not Path(path).is_file():
        raise ConfigError(f"adapted model not found: {path}; {what}")
    try:
        state, verified = load_verified(path)
    except Exception:
        why = "not a readable PyTorch file of plain data"
        raise ConfigError(f"{path} is not an adapted model ({why}); {what}") from None
    if isinstance(state, dict) and "model" in state and "config" in state and "format" not in state:
        raise ConfigError(
            f"{path} is a maml-train checkpoint, not an adapted model; adapt it to a task first "
            f"(maml-adapt checkpoint={path} support=PATH, or maml_cli.load(...).adapt(...))"
        )
    if not isinstance(state, dict) or state.get("format") != ADAPTED_FORMAT:
        raise ConfigError(f"{path} is not an adapted model; {what}")
    if verified is not True:
        raise ConfigError(f"adapted model {path} is damaged (its contents do not match its integrity digest); {what}")
    if state.get("format_version") != ADAPTED_VERSION:
        raise ConfigError(
            f"{path} is an adapted model of format {state.get('format_version')}; this maml-cli reads {ADAPTED_VERSION}"
        )
    return state


def load_adapted(path: str | Path, device: str | torch.device = "cpu") -> AdaptedModel:
    """An adapted model written by :meth:`AdaptedModel.save` or ``maml-adapt`` (verified, ``weights_only``)."""
    state = _read_adapted(path)
    source, inputs, classes = state["source"], state["inputs"], state.get("classes")
    config = OmegaConf.create(source["config"])
    model = build_model(config, torch.device(device))
    if state["problem"] == "classification" and classes and len(classes) != inputs.get("ways"):
        _replace_head(model, len(classes))
    # The algorithm gives the model what adaptation gave it: batch-norm convention, per-step layers.
    algorithm = build_algorithm(config, model, _loss(state["problem"]))
    try:
        algorithm.model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0][:200]
        raise ConfigError(f"{path} does not fit the model its config describes ({detail})") from None
    if hasattr(algorithm, "bn_state"):  # MAML++: the batch-norm set of the last adapted step
        algorithm.bn_state.step = int(source["steps"])
    network = algorithm.model.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return AdaptedModel(network, state["problem"], classes, inputs, source)
