"""CLINC150 (Larson et al., 2019, "An Evaluation Dataset for Intent Classification and Out-of-Scope
Prediction"): 150 intents of a task-oriented assistant in 10 domains, 150 utterances each.

For few-shot learning the intents are the classes (as in the few-shot intent literature, e.g.
Zhang et al., 2020; Mehri et al., 2020). They are split between meta-training, validation and
test, never their utterances, and all 150 utterances of an intent (the file's train, val and test
parts pooled) serve its episodes. Two splits:

- ``intent`` (default): a seeded permutation of the 150 intents cut into ``split_sizes`` intents
  (default 50 / 50 / 50);
- ``domain``: whole domains held out, a harder cross-domain test: a seeded permutation of the 10
  domains cut into ``split_sizes`` domains (default 4 / 3 / 3, i.e. 60 / 45 / 45 intents).

The out-of-scope queries (``oos_*``) are not used. Utterances are tokenised once
(:mod:`maml_cli.data.text`: words of a vocabulary built from the meta-training intents alone, hashed
character n-grams for the rest), padded to ``max_length`` and cached as one int tensor, keyed by the
file's digest, the split and the tokeniser settings; episodes are then drawn on the training
device by indexing it, as for images (:class:`~maml_cli.data.images.FewShotImageTasks`).

The files are checked against ``SHA256SUMS`` in the data folder (or, without it, against the
digests of the public release): a missing or damaged file is one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from maml_cli.data.images import FewShotImageTasks, ImageCache, SplitClasses, default_cache_dir, default_data_root
from maml_cli.data.tasks import TaskBatch
from maml_cli.data.text import Tokeniser
from maml_cli.errors import ConfigError, MamlError
from maml_cli.storage import remove_interrupted_writes, save_verified, split_integrity

log = logging.getLogger("maml_cli")

FILES = ("data_full.json", "domains.json")
#: SHA-256 of the public release's files, used when the folder has no SHA256SUMS.
RELEASE_SHA256 = {
    "data_full.json": "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0",
    "domains.json": "b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a",
}
NUM_INTENTS, NUM_DOMAINS, PER_INTENT = 150, 10, 150
DEFAULT_SIZES = {"intent": (50, 50, 50), "domain": (4, 3, 3)}
CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")


def _candidates(root: Path) -> list[Path]:
    return [root / "clinc150", root]


def locate(root: Path) -> Path | None:
    """The folder holding ``data_full.json`` (``<root>/clinc150/`` or ``<root>/``), or None."""
    return next((folder for folder in _candidates(root) if (folder / FILES[0]).is_file()), None)


def _expected_digests(folder: Path) -> dict[str, str]:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return dict(RELEASE_SHA256)
    expected = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            expected[parts[1].lstrip("*")] = parts[0].lower()
    return expected


def verified_files(root: Path) -> tuple[Path, str]:
    """The CLINC150 folder under ``root`` with both files present and matching their SHA-256, and
    the digest of ``data_full.json`` (part of the cache key); a :class:`MamlError` otherwise."""
    folder = locate(root)
    if folder is None:
        looked = ", ".join(str(p / FILES[0]) for p in _candidates(root))
        raise MamlError(
            f"CLINC150 not found (looked for {looked}); put data_full.json and domains.json of the public "
            "release (github.com/clinc/oos-eval) in one of those folders, or point dataset.root or "
            "MAML_DATA_ROOT at their parent"
        )
    expected = _expected_digests(folder)
    digests = {}
    for name in FILES:
        path = folder / name
        if not path.is_file():
            raise MamlError(f"CLINC150 file {path} is missing; copy {name} of the public release next to {FILES[0]}")
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        if name in expected and digests[name] != expected[name]:
            where = folder / "SHA256SUMS" if (folder / "SHA256SUMS").is_file() else "the public release"
            raise MamlError(
                f"CLINC150 file {path} is damaged: its SHA-256 {digests[name][:12]}... does not match "
                f"{expected[name][:12]}... of {where}; copy it again from the public release"
            )
    return folder, digests[FILES[0]]


def read_intents(folder: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Utterances of each in-scope intent (train, val and test of the file pooled, in file order),
    and each domain's intents; both sorted by name."""
    data = json.loads((folder / FILES[0]).read_text())
    domains = json.loads((folder / FILES[1]).read_text())
    by_intent: dict[str, list[str]] = {}
    for part in ("train", "val", "test"):
        for text, intent in data[part]:
            by_intent.setdefault(intent, []).append(text)
    return dict(sorted(by_intent.items())), {d: sorted(domains[d]) for d in sorted(domains)}


def split_intents(
    intents: Sequence[str], domains: dict[str, list[str]], split: str, sizes: Sequence[int] | None, seed: int
) -> dict[str, list[str]]:
    """Intent names of meta-training, validation and test (each list sorted), from a permutation
    seeded with ``seed`` of the intents (``split=intent``) or of the domains (``split=domain``)."""
    if split not in DEFAULT_SIZES:
        raise ConfigError(f"dataset.split must be intent or domain, got {split!r}")
    sizes = list(DEFAULT_SIZES[split] if sizes is None else sizes)
    units = list(intents) if split == "intent" else list(domains)
    if len(sizes) != 3 or any(not isinstance(n, int) or n < 1 for n in sizes) or sum(sizes) > len(units):
        what = "intents" if split == "intent" else "domains"
        raise ConfigError(
            f"dataset.split_sizes must be three counts >= 1 of {what} adding up to at most {len(units)} "
            f"(split={split}), got {sizes}"
        )
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
    out, start = {}, 0
    for name, size in zip(SPLITS, sizes):
        picked = [units[i] for i in order[start : start + size]]
        start += size
        out[name] = sorted(picked if split == "intent" else [i for d in picked for i in domains[d]])
    return out


@dataclass
class TextCache:
    """Tokenised utterances: ``tokens`` int32 ``[N, max_length]`` (0-padded), ``labels`` int64
    ``[N]`` indexing ``intents``, the split's intent names and the tokeniser fitted on its
    meta-training intents. Saved with an integrity digest and rebuilt when damaged, as the image
    caches are (:class:`~maml_cli.data.images.ImageCache`)."""

    tokens: Tensor
    labels: Tensor
    intents: list[str]
    splits: dict[str, list[str]]
    tokeniser: Tokeniser

    def save(self, path: Path) -> None:
        state = {
            "format": CACHE_FORMAT,
            "tokens": self.tokens,
            "labels": self.labels,
            "intents": self.intents,
            "splits": self.splits,
            "tokeniser": self.tokeniser.to_spec(),
        }
        save_verified(state, path, "choose another dataset.cache_dir (or set MAML_CACHE_DIR)")

    @staticmethod
    def load(path: Path) -> TextCache | None:
        if not path.is_file():
            return None
        try:
            state, verified = split_integrity(torch.load(path, map_location="cpu", weights_only=True))
            if state.get("format") != CACHE_FORMAT or not verified:
                raise ValueError("its contents do not match the integrity digest written with it")
            splits = {k: list(v) for k, v in state["splits"].items()}
            tokeniser = Tokeniser.from_spec(state["tokeniser"])
            return TextCache(state["tokens"], state["labels"], list(state["intents"]), splits, tokeniser)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            log.warning("text cache %s is damaged (%s); rebuilding it", path, why)
            return None


def build_cache(folder: Path, split: str, sizes, split_seed: int, tokeniser_settings: dict) -> TextCache:
    by_intent, domains = read_intents(folder)
    if len(by_intent) != NUM_INTENTS or any(len(u) != PER_INTENT for u in by_intent.values()):
        raise MamlError(
            f"CLINC150 at {folder} has {len(by_intent)} intents, expected {NUM_INTENTS} of {PER_INTENT} "
            "utterances each; use data_full.json of the public release"
        )
    splits = split_intents(list(by_intent), domains, split, sizes, split_seed)
    tokeniser = Tokeniser.fit((t for i in splits["train"] for t in by_intent[i]), **tokeniser_settings)
    intents = list(by_intent)
    texts = [t for i in intents for t in by_intent[i]]
    labels = torch.arange(len(intents)).repeat_interleave(PER_INTENT)
    return TextCache(tokeniser.encode(texts).to(torch.int32), labels, intents, splits, tokeniser)


class TextTasks(FewShotImageTasks):
    """N-way K-shot episodes of token-id rows: the image episodes' sampling (classes, then examples,
    drawn on the device) over an ``[N, max_length]`` table of ids; inputs are int64 ``[.., L]``."""

    def __init__(self, cache: TextCache, **episodes) -> None:
        self.tokeniser = cache.tokeniser
        self.split_intents = cache.splits
        self.labels = cache.labels  # the intent of each row of ``images`` (the supervised baseline reads it)
        ways = episodes.get("ways", 5)
        for split in SPLITS:
            have = len(cache.splits[split])
            if isinstance(ways, int) and ways > have:
                raise ConfigError(
                    f"dataset.ways={ways} but the clinc150 {split} split has only {have} intents; lower "
                    "dataset.ways or give that split more intents (dataset.split_sizes)"
                )
        ids = {name: i for i, name in enumerate(cache.intents)}
        splits = {s: SplitClasses.of([ids[i] for i in cache.splits[s]]) for s in SPLITS}
        images = ImageCache(cache.tokens.long(), cache.labels, cache.intents)
        super().__init__(images, splits, name="clinc150", **episodes)

    def input_spec(self) -> dict:
        """Token ids of ``max_length``, and the tokeniser to make them from text."""
        text = self.tokeniser.to_spec()
        return {"problem": "classification", "input_shape": list(self.input_shape), "ways": self.ways, "text": text}

    def _materialize(self, index: Tensor, rotation: Tensor, shots: int, query: int) -> TaskBatch:
        tasks, ways = index.shape[:2]
        x = self.images[index]  # [T, W, S+Q, L] int64
        length = x.shape[-1]
        labels = torch.arange(ways, device=self.device)
        return TaskBatch(
            support_x=x[:, :, :shots].reshape(tasks, ways * shots, length),
            support_y=labels.repeat_interleave(shots).expand(tasks, -1),
            query_x=x[:, :, shots:].reshape(tasks, ways * query, length),
            query_y=labels.repeat_interleave(query).expand(tasks, -1),
        )


def clinc150_tasks(
    root: str | None = None,
    cache_dir: str | None = None,
    split: str = "intent",
    split_sizes: Sequence[int] | None = None,
    split_seed: int = 0,
    min_count: int = 2,
    max_vocab: int = 2000,
    hash_buckets: int = 1024,
    ngrams: Sequence[int] = (3,),
    max_length: int = 32,
    **episodes,
) -> TextTasks:
    """Build the CLINC150 task distribution; the arguments are the ``dataset`` config keys
    (``episodes``: ways, shots, query, eval_shots, eval_query, seed, device)."""
    for key, value, low in (
        ("min_count", min_count, 1),
        ("max_vocab", max_vocab, 0),
        ("hash_buckets", hash_buckets, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"dataset.{key} must be an integer >= {low}, got {value!r}")
    if not isinstance(max_length, int) or max_length < 5:
        raise ConfigError(f"dataset.max_length must be an integer >= 5 (text_cnn's widest filter), got {max_length!r}")
    if not ngrams or any(not isinstance(n, int) or n < 1 for n in ngrams):
        raise ConfigError(f"dataset.ngrams must be a list of integers >= 1, got {list(ngrams or [])}")
    folder, digest = verified_files(Path(root) if root else default_data_root())
    sizes = None if split_sizes is None else [int(n) for n in split_sizes]
    settings = {
        "min_count": min_count,
        "max_vocab": max_vocab,
        "hash_buckets": hash_buckets,
        "ngrams": [int(n) for n in ngrams],
        "max_length": max_length,
    }
    key_text = json.dumps(
        {"data": digest, "split": split, "sizes": sizes, "seed": split_seed, **settings}, sort_keys=True
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache_path = Path(cache_dir or default_cache_dir()) / f"clinc150_{split}_{key}.pt"
    remove_interrupted_writes(cache_path.parent)
    cache = TextCache.load(cache_path)
    if cache is None:
        log.info("tokenising CLINC150 once into %s", cache_path)
        cache = build_cache(folder, split, sizes, split_seed, settings)
        cache.save(cache_path)
    return TextTasks(cache, **episodes)
