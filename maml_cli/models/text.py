"""Text classifiers over token ids (``[batch, length]``, 0 = padding; see :mod:`maml_cli.data.text`).

Both are plain modules whose forward is differentiable in every parameter through
``torch.func.functional_call``, with or without ``vmap`` over tasks, so every algorithm adapts them
as it adapts Conv-4. Both end in a linear ``head`` (ANIL's default head: the last module with
parameters) and expose :meth:`embed`, the representation under the head (used by the supervised
baseline, ``scripts/clinc150_baseline.py``).

Token ids are looked up with ``F.embedding``, which ``torch.func`` batches. A mean of embeddings
could also be ``F.embedding_bag``, one fused kernel, but it has no ``vmap`` batching rule for
per-task weights on torch 2.14 (it falls back to a per-task loop with a performance warning; see
the tests), so :class:`TextBag` takes the masked mean of ``F.embedding`` itself.

Padding is masked explicitly (embeddings times ``ids != 0``) rather than left to ``padding_idx``:
under ``vmap`` the batched embedding backward ignores ``padding_idx`` and gives the padding row a
gradient that the per-task loop does not (measured: a 14% difference in Kim CNN's meta-gradient),
so with the mask both task strategies compute the same meta-gradient and padding stays zero.

Ids may arrive as floats (the engine's input check probes a model with zeros of the input shape
in the parameters' dtype): they are turned into int64, which is exact for ids below 2**24.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from maml_cli.data.text import PAD


def _ids(x: Tensor) -> Tensor:
    return x if not x.is_floating_point() else x.round().long()


class TextBag(nn.Module):
    """A bag of embeddings (as fastText's classifier, Joulin et al., 2017): the mean embedding of
    an utterance's tokens (padding left out), one hidden ReLU layer, a linear head. Cheap: the
    cost of a step is the embedding lookup plus two small matrix products."""

    def __init__(self, vocab_size: int, out_features: int = 5, embedding_dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        nn.init.normal_(self.embedding.weight, std=embedding_dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        self.hidden = nn.Linear(embedding_dim, hidden) if hidden else None
        self.head = nn.Linear(hidden or embedding_dim, out_features)

    def embed(self, x: Tensor) -> Tensor:
        ids = _ids(x)
        mask = (ids != PAD).unsqueeze(-1).to(self.embedding.weight.dtype)
        vectors = F.embedding(ids, self.embedding.weight)
        mean = (vectors * mask).sum(dim=-2) / mask.sum(dim=-2).clamp(min=1.0)
        return mean if self.hidden is None else F.relu(self.hidden(mean))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


class TextCNN(nn.Module):
    """Kim's (2014) convolutional sentence classifier: embeddings, 1-D convolutions of several
    widths (3, 4 and 5 words) with ReLU, max-pooling over time, a linear head. Kim uses 100
    filters of each width and 300-dimensional embeddings; the defaults here are smaller (64 and
    64) to fit MAML's second-order inner loop on a CPU. Dropout is left out: MAML's inner loop
    should see the same function at every step."""

    def __init__(
        self,
        vocab_size: int,
        out_features: int = 5,
        embedding_dim: int = 64,
        filters: int = 64,
        widths: Sequence[int] = (3, 4, 5),
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        nn.init.normal_(self.embedding.weight, std=embedding_dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        self.widths = tuple(int(w) for w in widths)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, filters, w) for w in self.widths)
        self.head = nn.Linear(filters * len(self.widths), out_features)

    def embed(self, x: Tensor) -> Tensor:
        ids = _ids(x)
        if ids.shape[-1] < max(self.widths):  # shorter than the widest filter: pad, as Kim pads sentences
            ids = F.pad(ids, (0, max(self.widths) - ids.shape[-1]), value=PAD)
        mask = (ids != PAD).unsqueeze(-1).to(self.embedding.weight.dtype)
        vectors = (F.embedding(ids, self.embedding.weight) * mask).transpose(-1, -2)  # [B, D, L], padding zero
        return torch.cat([F.relu(conv(vectors)).amax(dim=-1) for conv in self.convs], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))
