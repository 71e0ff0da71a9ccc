"""Few-shot text classification: CLINC150 on the real data (MAML_DATA_ROOT, set by .ci/run), the
tokeniser, the split, episodes, the text models under every algorithm, and bad input.

Under CI the real data must be there: these tests fail rather than skip without it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.func import vmap

from maml_cli.data.clinc150 import clinc150_tasks, locate, read_intents, split_intents
from maml_cli.data.tasks import TaskBatch
from maml_cli.data.text import PAD, Tokeniser, words
from maml_cli.engine.build import build_algorithm, build_model
from maml_cli.errors import ConfigError, MamlError
from maml_cli.models.text import TextBag, TextCNN

from .helpers import compose_train, real_data_root, run_cli

ALGORITHMS = ("maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "imaml")


def data_root() -> Path:
    return real_data_root("CLINC150", locate)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("clinc150-cache")


@pytest.fixture(scope="module")
def tasks(cache_dir):
    return clinc150_tasks(root=str(data_root()), cache_dir=str(cache_dir), ways=5, shots=2, query=3, seed=0)


@pytest.fixture(scope="module")
def intents():
    return read_intents(locate(data_root()))


# -- the tokeniser ---------------------------------------------------------------------------------


def test_vocabulary_comes_from_the_meta_training_intents_only(tasks, intents):
    by_intent, _ = intents
    train_words = {w for i in tasks.split_intents["train"] for t in by_intent[i] for w in words(t)}
    held_out_only = {w for s in ("val", "test") for i in tasks.split_intents[s] for t in by_intent[i] for w in words(t)}
    held_out_only -= train_words
    vocabulary = set(tasks.tokeniser.vocabulary)
    assert len(held_out_only) > 500 and not vocabulary & held_out_only
    assert vocabulary <= train_words and len(vocabulary) > 1000  # words seen twice or more in meta-training


def test_unseen_words_become_hashed_ngram_ids_deterministically_and_padding_is_zero():
    tok = Tokeniser.fit(["book a flight", "book a table", "a flight"], min_count=2, max_vocab=10, hash_buckets=64)
    assert tok.vocabulary == ("a", "book", "flight")  # by count, then alphabetically
    ids = tok.ids("Book a FLIGHT to Zanzibar")
    assert ids[:3] == [2, 1, 3]
    # "to" -> "<to", "to>"; "zanzibar" -> 8 trigrams of "<zanzibar>"; all in the hash range
    assert len(ids) == 3 + 2 + 8 and all(11 <= i < 11 + 64 for i in ids[3:])
    again = Tokeniser.from_spec(json.loads(json.dumps(tok.to_spec())))
    assert again.ids("Book a FLIGHT to Zanzibar") == ids  # same ids after a round trip (no salted hash)
    assert tok.subword_ids("zanzibars")[:7] == tok.subword_ids("zanzibar")[:7]  # shared n-grams
    encoded = Tokeniser.fit(["x y"], min_count=1, max_length=6).encode(["x y", "x " * 10, ""])
    assert encoded.shape == (3, 6) and encoded.dtype == torch.long
    assert encoded[0].tolist() == [1, 2, PAD, PAD, PAD, PAD] and encoded[1].tolist() == [1] * 6
    assert encoded[2].tolist() == [PAD] * 6


# -- the split ------------------------------------------------------------------------------------


def test_intent_split_is_seeded_50_50_50_and_disjoint(intents):
    by_intent, domains = intents
    split = split_intents(list(by_intent), domains, "intent", None, 0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [50, 50, 50]
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == set(by_intent)
    assert split == split_intents(list(by_intent), domains, "intent", None, 0)
    assert split["test"] != split_intents(list(by_intent), domains, "intent", None, 1)["test"]


def test_domain_split_holds_out_whole_domains(intents):
    by_intent, domains = intents
    split = split_intents(list(by_intent), domains, "domain", None, 0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [60, 45, 45]
    for members in domains.values():
        homes = {s for s in split if set(members) & set(split[s])}
        assert len(homes) == 1 and set(members) <= set(split[homes.pop()])


# -- episodes -------------------------------------------------------------------------------------


def test_episodes_are_n_way_k_shot_token_rows_of_the_splits_intents(tasks):
    batch = tasks.sample(4, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (4, 10, 32) and batch.query_x.shape == (4, 15, 32)
    assert batch.support_x.dtype == torch.long and batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.query_y[0].tolist() == [c for c in range(5) for _ in range(3)]
    # every row is an utterance of a meta-training intent, the same intent within a label
    row_of = {tuple(r.tolist()): int(label) for r, label in zip(tasks.images, tasks.labels)}
    train = {tasks.class_names.index(i) for i in tasks.split_intents["train"]}
    for t in range(4):
        intent_of_label = {}
        for x, y in zip(
            torch.cat([batch.support_x[t], batch.query_x[t]]), torch.cat([batch.support_y[t], batch.query_y[t]])
        ):
            intent = row_of[tuple(x.tolist())]
            assert intent in train and intent_of_label.setdefault(int(y), intent) == intent
        assert len(set(intent_of_label.values())) == 5
    first = next(tasks.held_out("test", 6, 6))
    assert torch.equal(first.query_x, next(tasks.held_out("test", 6, 6)).query_x)  # fixed test episodes
    spec = tasks.input_spec()
    assert spec["input_shape"] == [32] and spec["text"]["vocabulary"] == list(tasks.tokeniser.vocabulary)


# -- the models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TextBag, TextCNN])
def test_text_models_take_token_batches(cls, tasks):
    torch.manual_seed(0)
    model = cls(tasks.tokeniser.vocab_size, out_features=5)
    x = tasks.sample(2, torch.Generator().manual_seed(1)).support_x[0]
    out = model(x)
    assert out.shape == (10, 5) and torch.isfinite(out).all()
    torch.testing.assert_close(model(x.float()), out)  # the engine's shape probe sends floats
    if cls is TextBag:  # padding does not change a bag's mean
        torch.testing.assert_close(model(torch.nn.functional.pad(x, (0, 8))), out)


def test_embedding_bag_has_no_vmap_rule_so_the_bag_uses_embedding():
    """Why TextBag does not call F.embedding_bag: torch.func falls back to a per-task loop for it."""
    weights, ids = torch.randn(3, 20, 4), torch.randint(1, 20, (3, 5, 6))
    with pytest.warns(UserWarning, match="batching rule for aten::embedding_bag"):
        vmap(lambda w, i: torch.nn.functional.embedding_bag(i, w, mode="mean", padding_idx=0))(weights, ids)


# -- every algorithm, both task strategies ----------------------------------------------------------


#: Small widths keep the meta-steps of 7 algorithms x 2 models x 2 strategies to seconds on 2 cores.
SMALL = {
    "text_bag": ("model.embedding_dim=8", "model.hidden=8"),
    "text_cnn": ("model.embedding_dim=8", "model.filters=4"),
}


def _algorithm(name: str, model: str, strategy: str, tasks):
    cfg = compose_train(
        "experiment=clinc150_5w1s", f"model={model}", f"inner_loop={name}", "inner_loop.steps=2", *SMALL[model]
    )
    cfg.inner_loop.task_batching = strategy
    torch.manual_seed(0)
    net = build_model(cfg, torch.device("cpu"), tasks.input_shape)
    return build_algorithm(cfg, net, tasks.loss)


def _short_batch(tasks, num_tasks: int, seed: int, length: int = 12) -> TaskBatch:
    """Episodes cut to their first ``length`` tokens (most utterances fit): a cheaper meta-step."""
    b = tasks.sample(num_tasks, torch.Generator().manual_seed(seed))
    return TaskBatch(b.support_x[..., :length], b.support_y, b.query_x[..., :length], b.query_y)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_meta_steps_on_text(name, tasks):
    """Both models, both task strategies (the CNN's per-task loop is covered for MAML below: it is
    the slowest combination on a CPU)."""
    batch = _short_batch(tasks, 2, 2)
    for model, strategies in (("text_bag", ("vmap", "loop")), ("text_cnn", ("vmap",))):
        for strategy in strategies:
            algo = _algorithm(name, model, strategy, tasks)
            algo.meta_backward(batch)
            grads = [p.grad for p in algo.model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), (model, strategy)
            assert sum(g.abs().sum() for g in grads) > 0, (model, strategy)


@pytest.mark.parametrize("model", ["text_bag", "text_cnn"])
def test_maml_vmap_and_loop_agree_on_text(model, tasks):
    batch = _short_batch(tasks, 3, 3)
    grads = {}
    for strategy in ("vmap", "loop"):
        algo = _algorithm("maml", model, strategy, tasks)
        out = algo.meta_backward(batch)
        grads[strategy] = (torch.cat([p.grad.flatten() for p in algo.model.parameters()]), out.loss_after)
    (g_vmap, after_vmap), (g_loop, after_loop) = grads["vmap"], grads["loop"]
    assert g_loop.norm() > 0 and ((g_vmap - g_loop).norm() / g_loop.norm()).item() < 1e-4
    torch.testing.assert_close(after_vmap, after_loop, rtol=1e-4, atol=1e-6)


# -- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["text_bag", "text_cnn"])
def test_train_and_eval_on_clinc150_from_the_cli(model, tmp_path, cache_dir):
    env = {"MAML_DATA_ROOT": str(data_root()), "MAML_CACHE_DIR": str(cache_dir)}
    proc = run_cli(
        "maml-train",
        "experiment=clinc150_5w1s",
        f"model={model}",
        "dataset.query=2",
        "inner_loop.steps=1",
        "inner_loop.eval_steps=2",
        "trainer.max_steps=2",
        "trainer.meta_batch_size=2",
        "trainer.val_every=2",
        "trainer.val_tasks=4",
        "trainer.progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and 0.0 <= metrics["last"]["value"] <= 1.0
    if model == "text_bag":
        proc = run_cli(
            "maml-eval",
            f"checkpoint={tmp_path / 'run/checkpoints/best.pt'}",
            "eval.episodes=10",
            "hydra.run.dir=ev",
            cwd=tmp_path,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads((tmp_path / "ev/eval.json").read_text())
        assert result["episodes"] == 10 and result["ways"] == 5 and 0.0 <= result["mean"] <= 1.0


# -- bad input ------------------------------------------------------------------------------------


def test_missing_clinc150_is_one_line_saying_where_it_looked(tmp_path):
    proc = run_cli(
        "maml-train", "experiment=clinc150_5w1s", "hydra.run.dir=r", cwd=tmp_path, env={"MAML_DATA_ROOT": str(tmp_path)}
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: CLINC150 not found") and str(tmp_path / "clinc150" / "data_full.json") in last


def test_damaged_clinc150_file_fails_its_checksum(tmp_path):
    folder = tmp_path / "clinc150"
    shutil.copytree(locate(data_root()), folder)
    folder.chmod(0o755)
    target = folder / "domains.json"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01  # one changed byte
    target.write_bytes(bytes(data))
    with pytest.raises(
        MamlError, match=r"CLINC150 file .*domains.json is damaged: its SHA-256 .* does not match .*/SHA256SUMS"
    ):
        clinc150_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    (folder / "data_full.json").chmod(0o644)
    (folder / "data_full.json").unlink()
    with pytest.raises(MamlError, match=r"CLINC150 not found \(looked for .*clinc150/data_full.json"):
        clinc150_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_more_ways_than_the_split_has_intents_is_refused(cache_dir):
    with pytest.raises(ConfigError, match=r"dataset.ways=51 but the clinc150 train split has only 50 intents"):
        clinc150_tasks(root=str(data_root()), cache_dir=str(cache_dir), ways=51)
    with pytest.raises(ConfigError, match=r"^dataset.ways=50 but the clinc150 val split has only 45 intents; lower"):
        clinc150_tasks(root=str(data_root()), cache_dir=str(cache_dir), ways=50, split="domain")
