"""maml-adapt, maml-predict and maml-serve on a model meta-trained on text (CLINC150, the real data
under MAML_DATA_ROOT): a user's utterances are tokenised by the checkpoint's own tokeniser into
exactly the token rows training cached, a support CSV of utterances and labels adapts the model to
intents it never saw in meta-training, and the predictions are named by those labels. One tiny
run is trained once for the module, in-process."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import torch

import maml_cli
from maml_cli.cli import adapt as adapt_cli
from maml_cli.cli import predict as predict_cli
from maml_cli.data.clinc150 import PER_INTENT, TextCache, locate, read_intents
from maml_cli.data.text import Tokeniser
from maml_cli.deploy.inputs import (
    _what_it_takes,
    encode_utterances,
    read_csv,
    read_support_folder,
    read_text_rows,
)
from maml_cli.engine import Trainer
from maml_cli.errors import ConfigError, MamlError

from .helpers import compose_train, csv_rows, one_error_line, real_data_root

SHOTS, QUERIES, STEPS = 3, 5, 30
SINUSOID = {"problem": "regression", "input_shape": [1], "features": ["x"], "target": "y"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step MAML run of ``experiment=clinc150_5w1s`` (a bag of embeddings, 5-way), its
    checkpoint and the token cache its training built."""
    root = real_data_root("CLINC150", locate)
    base = tmp_path_factory.mktemp("clinc150-run")
    cfg = compose_train(
        "experiment=clinc150_5w1s",
        f"dataset.root={root}",
        f"dataset.cache_dir={base / 'cache'}",
        "dataset.query=2",
        "inner_loop.steps=1",
        "trainer.max_steps=2",
        "trainer.meta_batch_size=2",
        "trainer.val_every=2",
        "trainer.val_tasks=4",
        "trainer.ckpt_every=2",
        "trainer.progress=false",
        "trainer.figures=false",
    )
    Trainer(cfg, base / "run").fit()
    (cache_file,) = (base / "cache").glob("clinc150_*.pt")
    cache = TextCache.load(cache_file)
    assert cache is not None
    return base / "run" / "checkpoints" / "best.pt", cache, read_intents(locate(root))[0]


def _write(path: Path, header: list[str], rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def task(run, tmp_path):
    """Five intents of the test split (never seen in meta-training): a support CSV of 3 utterances
    each (id, text, label) and a query CSV of 5 other utterances each (id, text), with their truth."""
    _, cache, by_intent = run
    intents = cache.splits["test"][:5]
    support = [(f"s{i}{j}", by_intent[intent][j], intent) for i, intent in enumerate(intents) for j in range(SHOTS)]
    queries = [
        (f"q{i}{j}", by_intent[intent][j], intent)
        for i, intent in enumerate(intents)
        for j in range(SHOTS, SHOTS + QUERIES)
    ]
    support_csv = _write(tmp_path / "support.csv", ["id", "text", "label"], support)
    query_csv = _write(tmp_path / "query.csv", ["id", "text"], [row[:2] for row in queries])
    return intents, support_csv, query_csv, {row[0]: row[2] for row in queries}


# -- the tokens -------------------------------------------------------------------------------------


def test_every_utterance_tokenises_to_the_training_cache_row(run, tmp_path, caplog):
    checkpoint, cache, by_intent = run
    spec = maml_cli.load(checkpoint).inputs
    assert spec["text"] == cache.tokeniser.to_spec() and spec["input_shape"] == [32] and spec["ways"] == 5
    # All 22,500 in-scope utterances, in the cache's order (intents sorted, each intent's in file order).
    texts = [t for intent in cache.intents for t in by_intent[intent]]
    assert len(texts) == len(cache.intents) * PER_INTENT == cache.tokens.shape[0]
    path = _write(tmp_path / "all.csv", ["text", "note"], [(t, "ignored") for t in texts])
    with caplog.at_level("INFO", logger="maml_cli"):
        rows = read_text_rows(path, spec, with_label=False)
    assert rows.x.dtype == torch.long and torch.equal(rows.x, cache.tokens.long())
    assert rows.texts == texts and rows.ids == [str(i + 1) for i in range(len(texts))] and rows.y is None
    uncut = Tokeniser.from_spec({**spec["text"], "max_length": 10_000})
    longer = sum(len(uncut.ids(t)) > 32 for t in texts)
    assert longer > 0 and f"{longer} of {len(texts)} longer than 32 tokens, cut to them" in caplog.text
    # The held-out intents' words are outside the vocabulary: spelled by hashed n-grams, as in the cache.
    held_out = cache.intents.index(cache.splits["test"][0]) * PER_INTENT
    assert (cache.tokens[held_out : held_out + PER_INTENT] > len(cache.tokeniser.vocabulary)).any()


# -- the commands -----------------------------------------------------------------------------------


def _accuracy(written: list[dict[str, str]], truth: dict[str, str]) -> float:
    return sum(r["prediction"] == truth[r["input"]] for r in written) / len(written)


def test_adapt_to_held_out_intents_and_predict_utterances(run, task, tmp_path, capsys):
    checkpoint, _, _ = run
    intents, support, query, truth = task
    adapted_path, predictions = tmp_path / "adapted.pt", tmp_path / "p.csv"
    argv = [f"checkpoint={checkpoint}", f"support={support}", f"output={adapted_path}", f"steps={STEPS}"]
    assert adapt_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"with {5 * SHOTS} support utterances of 5 classes ({', '.join(sorted(intents))}) in {STEPS} steps" in out
    support_accuracy = float(out.split("support accuracy ")[1].split("%")[0])
    assert support_accuracy >= 80.0, out

    assert predict_cli.main([f"model={adapted_path}", f"inputs={query}", f"output={predictions}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{5 * QUERIES} inputs: ") and f"wrote {predictions}" in out
    written = csv_rows(predictions)
    classes = sorted(intents)
    assert list(written[0]) == ["input", "text", "prediction", *(f"p_{c}" for c in classes)]
    assert [r["input"] for r in written] == list(truth)
    assert [r["text"] for r in written] == [r["text"] for r in csv_rows(query)]
    assert {r["prediction"] for r in written} <= set(classes)
    # Utterances of intents meta-training never had, 5-way: chance is 20%.
    assert _accuracy(written, truth) >= 0.4, [(r["prediction"], truth[r["input"]]) for r in written]
    # The file's probabilities are the adapted model's on the checkpoint's tokens.
    adapted = maml_cli.load_adapted(adapted_path)
    assert adapted.classes == classes
    expected = adapted.predict(read_text_rows(query, adapted.inputs, with_label=False).x)
    got = torch.tensor([[float(r[f"p_{c}"]) for c in classes] for r in written])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)

    # The support utterances themselves (their label column is left out), as maml-predict reads them.
    again = tmp_path / "again.csv"
    assert predict_cli.main([f"model={adapted_path}", f"inputs={support}", f"output={again}"]) == 0
    labels = {r["id"]: r["label"] for r in csv_rows(support)}
    assert _accuracy(csv_rows(again), labels) >= 0.8

    # inputs= at once: the same predictions, no adapted model written without output=.
    at_once = tmp_path / "at_once.csv"
    argv = [f"checkpoint={checkpoint}", f"support={support}", f"inputs={query}", f"predictions={at_once}"]
    assert adapt_cli.main([*argv, f"steps={STEPS}"]) == 0
    assert csv_rows(at_once) == written


def test_python_readers_take_text_csvs(run, task):
    checkpoint, _, _ = run
    intents, support, query, _ = task
    model = maml_cli.load(checkpoint)
    x, y, classes = read_support_folder(support, model.inputs)  # maml-adapt's reader: a CSV for a text model
    assert classes == sorted(intents) and x.shape == (5 * SHOTS, 32)
    assert y.tolist() == [classes.index(i) for i in intents for _ in range(SHOTS)]
    qx, qy, ids = read_csv(query, model.inputs, with_target=False)
    assert qy is None and ids[0] == "q03" and torch.equal(qx, read_text_rows(query, model.inputs, False).x)
    adapted = model.adapt(x, y, steps=STEPS, classes=classes)
    assert adapted.predict(qx).shape == (5 * QUERIES, 5)
    # A TSV (by its suffix) and the same strings given directly: the same tokens.
    tsv = Path(str(query).replace(".csv", ".tsv"))
    frame = pd.read_csv(query, dtype=str, keep_default_na=False)
    frame.to_csv(tsv, sep="\t", index=False)
    assert torch.equal(read_text_rows(tsv, model.inputs, with_label=False).x, qx)
    assert torch.equal(encode_utterances(list(frame.text), model.inputs), qx)
    assert "utterances of up to 32 tokens: a CSV with a text column" in _what_it_takes(model.inputs)


# -- bad input ------------------------------------------------------------------------------------


def test_bad_text_input_is_one_line(run, task, tmp_path, capsys):
    checkpoint, cache, by_intent = run
    intents, support, query, _ = task
    spec = maml_cli.load(checkpoint).inputs
    output = tmp_path / "a.pt"

    def adapt_fails(support_file, *words: str, **kwargs) -> None:
        argv = [f"checkpoint={checkpoint}", f"support={support_file}", f"output={output}"]
        assert adapt_cli.main(argv) == 1
        error = one_error_line(capsys)
        for word in words:
            assert word in error, error
        assert not output.exists()

    rows = csv_rows(support)
    bad = _write(tmp_path / "no_label.csv", ["id", "text"], [(r["id"], r["text"]) for r in rows])
    adapt_fails(bad, "lacks column(s) label", "columns text, label", "other columns are ignored")
    blank = [({2: "", 5: " ?! "}.get(i, r["text"]), r["label"]) for i, r in enumerate(rows)]
    adapt_fails(_write(tmp_path / "blank.csv", ["text", "label"], blank), "has no words in row(s) 3, 6")
    unlabelled = [(r["text"], "" if i == 4 else r["label"]) for i, r in enumerate(rows)]
    adapt_fails(_write(tmp_path / "unlabelled.csv", ["text", "label"], unlabelled), "column label is empty in row(s) 5")
    one = [(r["text"], "balance") for r in rows]
    adapt_fails(_write(tmp_path / "one.csv", ["text", "label"], one), "one class (balance)", "at least 2 classes")
    six = [(t, intent) for intent in cache.splits["test"][:6] for t in by_intent[intent][:2]]
    adapt_fails(_write(tmp_path / "six.csv", ["text", "label"], six), "meta-trained for 5-way tasks", "6 classes")
    adapt_fails(tmp_path, "must be a CSV of text,label, not a folder")
    adapt_fails(tmp_path / "missing.csv", "missing.csv not found")

    # maml-predict: no text column; a folder of images for a text model.
    assert adapt_cli.main([f"checkpoint={checkpoint}", f"support={support}", f"output={output}"]) == 0
    capsys.readouterr()
    no_text = _write(tmp_path / "no_text.csv", ["id", "utterance"], [("a", "what is my balance")])
    assert predict_cli.main([f"model={output}", f"inputs={no_text}", f"output={tmp_path / 'p.csv'}"]) == 1
    assert "lacks column(s) text" in one_error_line(capsys) and not (tmp_path / "p.csv").exists()
    (tmp_path / "photos").mkdir()
    assert predict_cli.main([f"model={output}", f"inputs={tmp_path / 'photos'}"]) == 1
    assert "this model takes utterances of up to 32 tokens" in one_error_line(capsys)

    # A model of other inputs given a text CSV is refused by its own readers, as before.
    with pytest.raises(MamlError, match=r"lacks column\(s\) x, y and has column\(s\) the model does not take"):
        read_csv(support, SINUSOID, with_target=True)
    with pytest.raises(ConfigError, match="this model takes rows of a CSV with columns x, not utterances"):
        read_text_rows(support, SINUSOID, with_label=True)
    image = {"problem": "classification", "input_shape": [1, 8, 8], "image": {"size": 8, "channels": 1}}
    with pytest.raises(MamlError, match="is a file; give a folder with one sub-folder of images per class"):
        read_support_folder(support, image)
    assert read_text_rows(query, spec, with_label=False).x.shape == (5 * QUERIES, 32)


# -- maml-serve ---------------------------------------------------------------------------------------


def test_serve_takes_utterances_as_json(run, task):
    """A real server on 127.0.0.1 (uvicorn in a thread, as tests/test_serve.py runs it)."""
    from tests.test_serve import multipart, serving

    checkpoint, _, _ = run
    intents, support, query, truth = task
    meta = maml_cli.load(checkpoint)
    rows = csv_rows(support)
    queries = [r["text"] for r in csv_rows(query)]
    with serving(meta, workers=1) as client:
        body = {"x": [r["text"] for r in rows], "y": [r["label"] for r in rows], "steps": STEPS}
        status, created = client.json("POST", "/tasks", body)
        assert status == 200, created
        assert created["classes"] == intents and created["support"] == 5 * SHOTS
        status, answer = client.json("POST", f"/tasks/{created['task_id']}/predict", {"x": queries})
        assert status == 200, answer
        predictions = answer["predictions"]
        # maml-adapt's predictions: the same tokens, adapted the same way (classes in another order).
        x, y, classes = read_support_folder(support, meta.inputs)
        adapted = meta.adapt(x, y, steps=STEPS, classes=classes)
        expected = adapted.predict(read_text_rows(query, meta.inputs, with_label=False).x)
        got = torch.tensor([[p["probabilities"][c] for c in classes] for p in predictions])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        correct = sum(p["class"] == truth[name] for p, name in zip(predictions, truth))
        assert correct >= 0.4 * len(queries)

        status, refused = client.json("POST", "/tasks", {**body, "x": ["", *body["x"][1:]]})
        assert status == 422 and "x[0] have no words" in refused["error"]
        status, mixed = client.json("POST", f"/tasks/{created['task_id']}/predict", {"x": ["hello", 3]})
        assert status == 422 and "list of utterances" in mixed["error"]
        upload, content_type = multipart([("balance", "a.png", b"\x89PNG")])
        status, files = client.request("POST", "/tasks", upload, {"Content-Type": content_type})
        assert status == 415 and "takes utterances, not image files" in files["error"]
