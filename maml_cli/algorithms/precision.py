"""Mixed precision for functional inner loops: autocast forward passes, fp32 meta-parameters, and
hand-made loss scaling for fp16 that keeps second-order meta-gradients right.

``trainer.precision`` chooses one of :data:`PRECISIONS`:

- ``fp32``: nothing changes; no context is entered and no tensor is copied.
- ``bf16``: every forward pass runs under ``torch.autocast(dtype=torch.bfloat16)``; the model's
  output is cast back to float32 before the task loss, so losses, inner updates, the adapted
  parameters and the meta-gradient stay float32. bfloat16 has float32's exponent range, so no
  gradient underflows and no loss scaling is needed.
- ``fp16``: the same with float16, whose range is narrow: small gradients underflow to zero. The
  usual ``torch.amp.GradScaler`` cannot help a MAML inner loop, because the inner gradients are
  built with ``torch.autograd.grad(create_graph=True)`` and used inside the graph, never stored in
  ``.grad``. So the scaling is done by hand, as PyTorch's AMP gradient-penalty recipe does
  (``docs/notes/amp_examples``, "Gradient penalty"): every loss is multiplied by the scale ``S``
  before ``autograd.grad`` and the gradients are multiplied by ``1/S`` before they are used (the
  multiplication is part of the graph, so the meta-gradient differentiates through it); the outer
  loss is multiplied by ``S`` before ``backward`` and the meta-gradient in ``.grad`` divided by ``S``
  afterwards. The scale is dynamic, like GradScaler's: a meta-gradient with an inf or NaN means
  ``S`` overflowed somewhere; the meta-step is redone with ``S / 2`` (rather than skipped: the
  trainer steps its optimizer after every ``meta_backward``), and ``S`` doubles again after
  :data:`GROWTH_INTERVAL` good meta-steps. ``S`` and the count of good steps are buffers of this
  module, so they are in the algorithm's ``state_dict`` and a resumed run continues exactly.

Autocast covers forward passes only (backward passes under autocast are not recommended by the
AMP docs; they run in the dtypes the forward chose anyway). Measured on CPU with torch 2.14: under
``torch.func.vmap`` autocast casts ``linear`` but not convolutions (their batching rule runs below
autocast), so a vmapped Conv-4 on CPU computes its convolutions in float32; CPU's ``auto`` task
batching is ``loop`` for convolutional models, where everything is cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: GradScaler's defaults: start at 2**16, halve on overflow, double after 2000 good steps.
INIT_SCALE = 2.0**16
GROWTH_INTERVAL = 2000
#: Below this the scale stops halving: a meta-gradient that still overflows at S = 1 does so in
#: float32 arithmetic too, and the trainer's non-finite check reports it.
MIN_SCALE = 1.0

T = TypeVar("T")


class Precision(nn.Module):
    """The forward-pass precision of an algorithm, and for ``fp16`` its dynamic loss scale.

    Args:
        mode: ``fp32``, ``bf16`` or ``fp16``.
        init_scale: fp16's first loss scale.
        growth_interval: fp16: good meta-steps after which the scale doubles.

    The algorithm calls :meth:`autocast` around forward passes, :meth:`grad` instead of
    ``torch.autograd.grad`` for every gradient it uses inside its graph (inner steps,
    Hessian-vector products), :meth:`backward` instead of ``loss.backward()``, and wraps its
    meta-gradient in :meth:`meta_step`, which unscales ``.grad`` and redoes an overflowed step.
    Which device may run which precision is the caller's concern (``maml-train`` refuses fp16 on
    CPU, see :func:`maml_cli.engine.build.build_algorithm`); this class runs anywhere torch does.
    """

    def __init__(self, mode: str = "fp32", init_scale: float = INIT_SCALE, growth_interval: int = GROWTH_INTERVAL):
        super().__init__()
        mode = str(getattr(mode, "value", mode))
        if mode not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {mode!r}")
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale >= MIN_SCALE):
            raise ValueError(f"the initial loss scale must be a finite number >= {MIN_SCALE}, got {init_scale!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"the loss scale's growth interval must be an integer >= 1, got {growth_interval!r}")
        self.mode = mode
        self.dtype: torch.dtype | None = DTYPES[mode]
        self.scaled = mode == "fp16"
        self.growth_interval = growth_interval
        self.scale = float(init_scale) if self.scaled else 1.0  # the buffer's value, without a device sync
        self.good_steps = 0
        self.redone_steps = 0  # meta-steps redone for an overflow since this object was built (not saved)
        self._scaled_backward = False
        if self.scaled:
            self.register_buffer("loss_scale", torch.tensor(self.scale, dtype=torch.float64))
            self.register_buffer("good_step_count", torch.tensor(0, dtype=torch.int64))

    def extra_repr(self) -> str:
        return self.mode + (f", scale={self.scale:g}" if self.scaled else "")

    # -- forward passes --------------------------------------------------------------------------

    def autocast(self, device_type: str) -> AbstractContextManager:
        """The context for one forward pass on ``device_type`` (none for fp32). The weight-cast
        cache is off: each forward uses a weight once, and fast weights are new tensors each step."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type, dtype=self.dtype, cache_enabled=False)

    def forward_pass(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn(x)`` under autocast, its output back in float32 so that the loss is float32."""
        if self.dtype is None:
            return fn(x)
        with torch.autocast(x.device.type, dtype=self.dtype, cache_enabled=False):
            out = fn(x)
        return out.float() if out.dtype == self.dtype else out

    # -- gradients ---------------------------------------------------------------------------------

    def grad(self, output: Tensor, inputs: Sequence[Tensor], **kwargs) -> tuple[Tensor, ...]:
        """``torch.autograd.grad(output, inputs, **kwargs)``, scaled against fp16 underflow: the
        gradient of ``S * output``, times ``1/S``. With ``create_graph`` both products are in the
        graph, so what is differentiated later is the true (unscaled) gradient."""
        if not self.scaled:
            return torch.autograd.grad(output, inputs, **kwargs)
        grads = torch.autograd.grad(output * self.scale, inputs, **kwargs)
        inverse = 1.0 / self.scale
        return tuple(None if g is None else g * inverse for g in grads)

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``; with fp16 of ``S * loss``, which :meth:`meta_step` unscales."""
        if not self.scaled:
            loss.backward()
            return
        self._scaled_backward = True
        (loss * self.scale).backward()

    def meta_step(
        self, compute: Callable[[], T], parameters: Iterable[nn.Parameter], state: nn.Module, fresh: Callable[[T], bool]
    ) -> T:
        """Run ``compute`` (which adds a meta-gradient to ``.grad`` of ``parameters``) with fp16's
        dynamic loss scale; for fp32 and bf16 just run it.

        With fp16 the meta-gradient is computed alone (``.grad`` set aside and added back after),
        unscaled if it came through :meth:`backward` (algorithms that write ``.grad`` themselves
        from :meth:`grad`'s already unscaled gradients leave it as is), and checked: if it holds
        an inf or NaN while ``fresh(result)`` says the forward pass at the initialisation was
        finite (so the overflow came from a scaled gradient, not from the data or a diverged
        model), the scale halves, ``state``'s buffers (running statistics that ``compute`` may have
        moved) are put back, and the step is computed again. Redoing instead of skipping keeps
        one optimizer step per ``meta_backward``, as the trainer expects; every redo draws fresh
        random numbers (dropout), deterministically given the seed, so a resumed run is exact.
        """
        if not self.scaled:
            return compute()
        params = [p for p in parameters if p.requires_grad]
        kept = [p.grad for p in params]
        own = {id(b) for b in self.buffers()}
        buffers = {name: b.clone() for name, b in state.named_buffers() if id(b) not in own}
        while True:
            for p in params:
                p.grad = None
            self._scaled_backward = False
            result = compute()
            grads = [p.grad for p in params if p.grad is not None]
            if self._scaled_backward:
                torch._foreach_mul_(grads, 1.0 / self.scale)
            # Each entry, not a norm: the norm of large finite gradients can overflow on its own.
            finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
            if finite:
                self._count_good_step()
                break
            if self.scale / 2 < MIN_SCALE or not fresh(result):
                break  # not the scale's doing: leave it to the trainer's non-finite check
            self._set(self.scale / 2, 0)
            self.redone_steps += 1
            with torch.no_grad():
                live = dict(state.named_buffers())
                for name, value in buffers.items():
                    live[name].copy_(value)
        for p, before in zip(params, kept):
            if before is not None:
                p.grad = before if p.grad is None else before + p.grad
        return result

    def _count_good_step(self) -> None:
        good = self.good_steps + 1
        if good >= self.growth_interval:
            self._set(self.scale * 2, 0)
        else:
            self._set(self.scale, good)

    def _set(self, scale: float, good_steps: int) -> None:
        self.scale, self.good_steps = scale, good_steps
        self.loss_scale.fill_(scale)
        self.good_step_count.fill_(good_steps)

    # -- checkpoints -------------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        """Load the loss scale if this is fp16 and the checkpoint has one; otherwise ignore it.

        A checkpoint of another precision fits: a loss scale means nothing to fp32 or bf16 (a run
        trained in fp16 can be evaluated in bf16), and an fp16 run started from an fp32 checkpoint
        begins at the initial scale, as a fresh fp16 run does.
        """
        scale = state_dict.get(prefix + "loss_scale")
        good = state_dict.get(prefix + "good_step_count")
        if self.scaled and scale is not None and good is not None:
            self._set(float(scale), int(good))
