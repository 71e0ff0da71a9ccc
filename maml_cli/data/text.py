"""Tokenisation of short texts with no download: lower-cased words, and hashed character n-grams
for the words the vocabulary lacks.

Pretrained tokenisers and embeddings (BERT's WordPiece, GloVe) would need files from the internet;
this needs nothing. The vocabulary is built from the meta-training classes' texts only, so no word
of a held-out class leaks into training. A word of the vocabulary is one token; any other word
becomes the hashed ids of its character n-grams, with ``<`` and ``>`` marking the word's ends
(FastText's subwords, Bojanowski et al., 2017), so "reservations" and "reservation" still share
most of their ids. Words seen fewer than ``min_count`` times in meta-training are left out of the
vocabulary on purpose: they are spelled by n-grams too, so the n-gram embeddings are trained on
meta-training text (were every meta-training word in the vocabulary, the n-gram rows would stay at
their random initialisation and a test word unseen in training would be noise).

Ids: 0 is padding, ``1 .. len(vocabulary)`` the words sorted by falling count, then alphabetically
(a deterministic order; at most ``max_vocab`` of them), then from ``max_vocab + 1`` on the
``hash_buckets`` n-gram ids. The layout depends on the settings alone, not on the data, so a model's
embedding table (``vocab_size = 1 + max_vocab + hash_buckets``) is sized from the config before any
text is read.
Hashes are CRC-32 of the UTF-8 n-gram (not Python's ``hash``, which is salted per process), so the
same text gives the same ids in every run and on every machine.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

PAD = 0
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def vocab_size(max_vocab: int, hash_buckets: int) -> int:
    """Embedding rows for these settings: padding, ``max_vocab`` words, ``hash_buckets`` n-grams."""
    return 1 + int(max_vocab) + int(hash_buckets)


def words(text: str) -> list[str]:
    """Lower-cased words: runs of letters and digits, apostrophes inside a word kept ("don't")."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Tokeniser:
    """Words to ids: ``vocabulary`` words are ``1..V``, other words their hashed n-grams ``V+1..``."""

    vocabulary: tuple[str, ...]
    max_vocab: int = 2000
    hash_buckets: int = 1024
    ngrams: tuple[int, ...] = (3,)
    max_length: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {w: i + 1 for i, w in enumerate(self.vocabulary)})

    @staticmethod
    def fit(
        texts: Iterable[str],
        min_count: int = 2,
        max_vocab: int = 2000,
        hash_buckets: int = 1024,
        ngrams: Sequence[int] = (3,),
        max_length: int = 32,
    ) -> Tokeniser:
        """The vocabulary of ``texts``: words seen at least ``min_count`` times, the ``max_vocab``
        most frequent of them."""
        counts = Counter(w for text in texts for w in words(text))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        grams = tuple(int(n) for n in ngrams)
        return Tokeniser(tuple(kept[:max_vocab]), int(max_vocab), int(hash_buckets), grams, int(max_length))

    @property
    def vocab_size(self) -> int:
        """Rows an embedding table needs: padding, the words, the hash buckets."""
        return vocab_size(self.max_vocab, self.hash_buckets)

    def subword_ids(self, word: str) -> list[int]:
        """The hashed ids of ``word``'s character n-grams (``<word>`` with its end marks); a word
        shorter than the smallest n is hashed whole."""
        marked = f"<{word}>"
        grams = [marked[i : i + n] for n in self.ngrams for i in range(len(marked) - n + 1)] or [marked]
        base = 1 + self.max_vocab
        return [base + zlib.crc32(g.encode()) % self.hash_buckets for g in grams]

    def ids(self, text: str) -> list[int]:
        """The token ids of ``text``, unpadded, cut at ``max_length``."""
        out: list[int] = []
        for w in words(text):
            known = self._ids.get(w)  # type: ignore[attr-defined]
            out.extend([known] if known is not None else self.subword_ids(w))
            if len(out) >= self.max_length:
                break
        return out[: self.max_length]

    def encode(self, texts: Sequence[str]) -> Tensor:
        """``[len(texts), max_length]`` int64 ids, padded with 0 (:data:`PAD`) on the right."""
        out = torch.full((len(texts), self.max_length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.ids(text)
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def to_spec(self) -> dict:
        """Everything needed to tokenise new text exactly so (kept in a checkpoint's ``inputs``)."""
        return {
            "vocabulary": list(self.vocabulary),
            "max_vocab": self.max_vocab,
            "hash_buckets": self.hash_buckets,
            "ngrams": list(self.ngrams),
            "max_length": self.max_length,
            "lowercase": True,
        }

    @staticmethod
    def from_spec(spec: dict) -> Tokeniser:
        return Tokeniser(
            tuple(spec["vocabulary"]),
            int(spec["max_vocab"]),
            int(spec["hash_buckets"]),
            tuple(int(n) for n in spec["ngrams"]),
            int(spec["max_length"]),
        )
