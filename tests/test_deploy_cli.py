"""maml-adapt and maml-predict, and the file readers under them (maml_cli.deploy.inputs).

Two tiny runs are trained once for the module (in-process, as maml-train would): a sinusoid MLP
and a Conv-4 on the image-folder fixture with a zero head (3-way training, so a 4-class support
set exercises "any number of classes"). Two commands run as subprocesses (the installed scripts);
everything else calls the commands' ``main(argv)`` in-process.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

import maml_cli
from maml_cli.cli import adapt as adapt_cli
from maml_cli.cli import predict as predict_cli
from maml_cli.deploy.inputs import read_csv, read_images
from maml_cli.deploy.model import MetaModel
from maml_cli.engine import Trainer

from .fixtures_images import codes_of, colour, image_folder, image_folder_class, write_image
from .helpers import TINY, compose_train, csv_rows, one_error_line, run_cli

IMAGE_RUN = (
    "experiment=image_folder",
    "dataset.ways=3",
    "dataset.shots=1",
    "dataset.query=2",
    "dataset.image_size=16",
    "dataset.split_ratios=[0.5,0.25,0.25]",
    "model.hidden=4",
    "inner_loop.steps=1",
    "inner_loop.eval_steps=2",
    "inner_loop.zero_head=true",
    "trainer.max_steps=3",
    "trainer.val_every=3",
    "trainer.val_tasks=4",
    "trainer.meta_batch_size=2",
    "trainer.ckpt_every=3",
)


def _train(run_dir: Path, *overrides: str) -> Path:
    cfg = compose_train(*overrides, "trainer.progress=false", "trainer.figures=false")
    Trainer(cfg, run_dir).fit()
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("sinusoid"), *TINY, "trainer.max_steps=20")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    image_folder(root / "my_images")  # 12 classes of 4 images (12x10, RGB/JPEG/RGBA/palette)
    data = (f"dataset.path={root / 'my_images'}", f"dataset.cache_dir={root / 'cache'}")
    return _train(root / "run", *IMAGE_RUN, *data), root / "my_images"


def _task(folder: Path, images: Path, classes=(0, 1, 2, 3)) -> tuple[Path, Path]:
    """``folder/support/<class>/`` (two images a class) and ``folder/query/`` (one image a class)."""
    for code in classes:
        name = image_folder_class(code)
        (folder / "support" / name).mkdir(parents=True)
        for file in ("0.png", "1.JPG"):
            shutil.copy(images / name / file, folder / "support" / name / file)
        (folder / "query").mkdir(exist_ok=True)
        shutil.copy(images / name / "2.png", folder / "query" / f"{name}.png")
    return folder / "support", folder / "query"


def _sinusoid_csvs(folder: Path) -> tuple[Path, Path]:
    xs = [-4.5 + i for i in range(10)]
    support = folder / "support.csv"
    support.write_text("x,y\n" + "".join(f"{x},{2 * math.sin(x + 0.5):.5f}\n" for x in xs))
    query = folder / "query.csv"
    query.write_text("id,x\n" + "".join(f"q{i},{-5 + 2.5 * i}\n" for i in range(5)))
    return support, query


# -- the commands, end to end ----------------------------------------------------------------------


def test_adapt_a_support_folder_then_predict_a_folder(image_run, tmp_path):
    checkpoint, images = image_run
    support, query = _task(tmp_path, images)  # 4 classes; trained 3-way with a zero head
    proc = run_cli("maml-adapt", f"checkpoint={checkpoint}", f"support={support}", "steps=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 support images of 4 classes" in proc.stdout and "wrote adapted.pt" in proc.stdout
    # images of another size are resized as training's were, and that is said once
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "8 of 8 resized to 16x16 (from 12x10)" in notes[0], proc.stderr

    proc = run_cli("maml-predict", "model=adapted.pt", f"inputs={query}", "output=out/p.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("4 inputs: class_00 ") and "wrote out/p.csv" in proc.stdout
    rows = csv_rows(tmp_path / "out/p.csv")
    classes = [image_folder_class(c) for c in range(4)]
    assert list(rows[0]) == ["input", "prediction", *(f"p_{c}" for c in classes)]
    assert [r["input"] for r in rows] == [str(query / f"{c}.png") for c in classes]

    adapted = maml_cli.load_adapted(tmp_path / "adapted.pt")
    assert adapted.classes == classes and adapted.source["steps"] == 3
    x, names = read_images(query, adapted.inputs)
    expected = adapted.predict(x)
    written = torch.tensor([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    torch.testing.assert_close(written, expected, rtol=1e-6, atol=1e-6)
    assert [r["prediction"] for r in rows] == [classes[i] for i in expected.argmax(-1).tolist()]


def test_adapt_a_csv_then_predict_a_csv_in_process(sinusoid_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    support, query = _sinusoid_csvs(tmp_path)
    assert adapt_cli.main([f"checkpoint={sinusoid_run}", f"support={support}", "output=sin.pt"]) == 0
    out = capsys.readouterr().out
    assert "10 support rows in 2 steps" in out and "support mse" in out and "wrote sin.pt" in out
    assert predict_cli.main(["model=sin.pt", f"inputs={query}"]) == 0
    assert capsys.readouterr().out.startswith("5 inputs: mean prediction ")
    rows = csv_rows(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["input", "x", "prediction"] and [r["input"] for r in rows] == [f"q{i}" for i in range(5)]
    x, _, ids = read_csv(query, maml_cli.load_adapted("sin.pt").inputs, with_target=False)
    expected = maml_cli.load_adapted("sin.pt").predict(x)[:, 0]
    torch.testing.assert_close(torch.tensor([float(r["prediction"]) for r in rows]), expected, rtol=1e-6, atol=1e-6)
    # The same adaptation from Python gives the same model.
    sx, sy, _ = read_csv(support, maml_cli.load(sinusoid_run).inputs, with_target=True)
    torch.testing.assert_close(maml_cli.load(sinusoid_run).adapt(sx, sy).predict(x)[:, 0], expected)


def test_adapt_with_inputs_predicts_in_one_go(image_run, tmp_path, monkeypatch, capsys):
    checkpoint, images = image_run
    support, query = _task(tmp_path, images, classes=(3, 4))
    monkeypatch.chdir(tmp_path)
    listed = tmp_path / "list.txt"
    listed.write_text("# two of them\nquery/class_04.png\nquery/class_03.png\n")
    argv = [f"checkpoint={checkpoint}", f"support={support}", f"inputs={listed}", "predictions=one_go.csv"]
    assert adapt_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 inputs: class_03 " in out and "wrote one_go.csv" in out
    assert not (tmp_path / "adapted.pt").exists()  # no output= given: no adapted model written
    rows = csv_rows(tmp_path / "one_go.csv")
    assert [r["input"] for r in rows] == [str(tmp_path / "query/class_04.png"), str(tmp_path / "query/class_03.png")]

    # output= as well: both files, and the adapted model predicts what the one-go run wrote
    assert adapt_cli.main([*argv, "output=a.pt"]) == 0
    comma = f"inputs={tmp_path / 'query/class_04.png'},{tmp_path / 'query/class_03.png'}"
    assert predict_cli.main(["model=a.pt", comma, "output=later.csv"]) == 0
    later = csv_rows(tmp_path / "later.csv")
    assert [r["p_class_03"] for r in later] == [r["p_class_03"] for r in rows]


def test_readme_deploy_example(image_run, tmp_path, monkeypatch, capsys):
    checkpoint, images = image_run
    _task(tmp_path, images, classes=(0, 1, 5, 7))
    monkeypatch.chdir(tmp_path)
    readme_example(str(checkpoint))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 True"
    assert [line.split()[0] for line in lines[1:]] == [f"query/class_{c:02d}.png" for c in (0, 1, 5, 7)]
    assert maml_cli.load_adapted("adapted.pt").classes == ["class_00", "class_01", "class_05", "class_07"]


def readme_example(checkpoint: str) -> None:
    """README.md's Deploy example, word for word but for the checkpoint's path."""
    import maml_cli
    from maml_cli.deploy.inputs import read_images, read_support_folder

    model = maml_cli.load(checkpoint)  # e.g. "runs/my_images/checkpoints/best.pt"
    print(model.ways, model.any_ways)  # 3 True: trained 3-way with a zero head, so any number of classes
    support_x, support_y, classes = read_support_folder("support", model.inputs)  # support/<class>/<image>
    adapted = model.adapt(support_x, support_y, steps=10, classes=classes)
    query_x, names = read_images("query", model.inputs)  # every image under query/, sorted
    probabilities = adapted.predict(query_x)  # [N, classes]: predict a task's inputs together
    for name, p in zip(names, probabilities):
        print(name, classes[int(p.argmax())], f"{float(p.max()):.2f}")
    adapted.save("adapted.pt")  # for maml-predict, or maml_cli.load_adapted("adapted.pt")


# -- what is deployed is what maml-eval scores --------------------------------------------------------


def test_adapt_and_predict_match_the_algorithms_evaluation(image_run):
    from maml_cli.engine.build import build_run
    from maml_cli.engine.checkpoint import load_checkpoint

    checkpoint, _ = image_run
    state = load_checkpoint(checkpoint)
    run = build_run(maml_cli.load(checkpoint).config, torch.device("cpu"))  # as maml-eval builds it
    run.algorithm.load_state_dict(state["model"])
    batch = next(run.tasks.held_out("test", 1, 1))
    steps = 3
    scored = run.algorithm.evaluate(batch, metric=lambda out, y: out, steps=steps)[-1, 0].softmax(-1)
    adapted = maml_cli.load(checkpoint).adapt(batch.support_x[0], batch.support_y[0], steps=steps)
    torch.testing.assert_close(adapted.predict(batch.query_x[0]), scored, rtol=1e-5, atol=1e-6)


def test_images_are_preprocessed_as_training_preprocessed_them(image_run):
    from maml_cli.data.image_files import class_folders
    from maml_cli.engine.build import build_run

    checkpoint, images = image_run
    model = maml_cli.load(checkpoint)
    run = build_run(model.config, torch.device("cpu"))  # the training data, from its cache
    files = [f for fs in class_folders(images).values() for f in fs]
    x, names = read_images(files, model.inputs)
    training = run.tasks.images.float().div(255.0)
    mean, std = (torch.tensor(model.inputs["image"][k]).reshape(3, 1, 1) for k in ("mean", "std"))
    assert torch.equal(x, (training - mean) / std)  # bit for bit, every file format of the fixture
    codes, _ = codes_of(x, model.inputs["image"]["mean"], model.inputs["image"]["std"], tol=2)
    assert codes.tolist() == [c for c in range(12) for _ in range(4)]


# -- bad input: one line, exit 1, nothing written ------------------------------------------------------


@pytest.fixture
def image_task(image_run, tmp_path, monkeypatch):
    checkpoint, images = image_run
    support, query = _task(tmp_path, images, classes=(0, 1))
    monkeypatch.chdir(tmp_path)
    return checkpoint, support, query


def _fails(capsys, main, argv, *fragments) -> str:
    assert main(argv) == 1
    line = one_error_line(capsys)
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_arguments(capsys):
    assert adapt_cli.main(["--help"]) == 0 and "usage: maml-adapt" in capsys.readouterr().out
    assert predict_cli.main(["-h"]) == 0 and "usage: maml-predict" in capsys.readouterr().out
    _fails(capsys, adapt_cli.main, [], "needs checkpoint=... and support=...")
    _fails(capsys, adapt_cli.main, ["checkpoint=a.pt", "support=s", "stpes=3"], "did you mean 'steps'")
    _fails(capsys, adapt_cli.main, ["checkpoint=a.pt", "support"], "key=value", "'support'")
    _fails(capsys, adapt_cli.main, ["checkpoint=a.pt", "checkpoint=b.pt", "support=s"], "given twice")
    _fails(capsys, adapt_cli.main, ["checkpoint=a.pt", "support=s", "steps=-1"], "steps=-1 must be >= 0")
    _fails(capsys, adapt_cli.main, ["checkpoint=a.pt", "support=s", "steps=two"], "steps=two is not a whole number")
    _fails(capsys, predict_cli.main, ["model=a.pt"], "needs inputs=...")


def test_missing_and_wrong_files(image_task, sinusoid_run, capsys, tmp_path):
    checkpoint, support, query = image_task
    _fails(capsys, adapt_cli.main, ["checkpoint=nowhere.pt", f"support={support}"], "checkpoint not found: nowhere.pt")
    _fails(capsys, adapt_cli.main, [f"checkpoint={checkpoint}", "support=nowhere"], "support folder nowhere not found")
    _fails(capsys, adapt_cli.main, [f"checkpoint={checkpoint}", "support=s.csv"], "support folder s.csv not found")
    _fails(capsys, adapt_cli.main, [f"checkpoint={sinusoid_run}", f"support={support}"], "must be a CSV file")
    assert adapt_cli.main([f"checkpoint={checkpoint}", f"support={support}", "output=ok.pt"]) == 0
    capsys.readouterr()
    _fails(capsys, predict_cli.main, ["model=nowhere.pt", f"inputs={query}"], "adapted model not found")
    _fails(capsys, predict_cli.main, [f"model={checkpoint}", f"inputs={query}"], "not an adapted model")
    (tmp_path / "text.pt").write_text("not a model")
    _fails(capsys, predict_cli.main, ["model=text.pt", f"inputs={query}"], "text.pt is not an adapted model")
    _fails(capsys, predict_cli.main, ["model=ok.pt", "inputs=nowhere"], "inputs nowhere not found")
    _fails(capsys, predict_cli.main, ["model=ok.pt", "inputs=a.png,b.png"], "input file not found: a.png, b.png")
    (tmp_path / "q.csv").write_text("x\n1\n")
    _fails(capsys, predict_cli.main, ["model=ok.pt", "inputs=q.csv"], "takes images (3-channel, 16x16)", "not rows")
    _fails(capsys, predict_cli.main, ["model=ok.pt", f"inputs={query}", "output=ok.pt"], "is the file being read")
    assert not (tmp_path / "predictions.csv").exists()


def test_bad_support_folders(image_task, capsys, tmp_path):
    checkpoint, support, _ = image_task
    argv = [f"checkpoint={checkpoint}", f"support={support}", "output=kept.pt"]
    (tmp_path / "kept.pt").write_text("keep me")
    (support / "empty").mkdir()
    _fails(capsys, adapt_cli.main, argv, "support class folder(s) 'empty'", "hold no images")
    (support / "empty").rmdir()
    (support / "class_00" / "broken.png").write_bytes(b"\x89PNG not really")
    (support / "class_01" / "notes.jpg").write_text("text")
    line = _fails(capsys, adapt_cli.main, argv, "2 of 6 support files cannot be decoded as images", "broken.png")
    assert "notes.jpg" in line and "replace or remove them" in line
    for bad in (support / "class_00" / "broken.png", support / "class_01" / "notes.jpg"):
        bad.unlink()
    shutil.rmtree(support / "class_01")
    _fails(capsys, adapt_cli.main, argv, "at least 2 classes, found only 'class_00'")
    assert (tmp_path / "kept.pt").read_text() == "keep me"  # nothing was written over it


def test_more_classes_than_the_model_takes(image_task, capsys, monkeypatch):
    checkpoint, support, _ = image_task
    monkeypatch.setattr(MetaModel, "any_ways", property(lambda self: False))  # as without a zero head
    _fails(capsys, adapt_cli.main, [f"checkpoint={checkpoint}", f"support={support}"], "meta-trained for 3-way tasks")


def test_inputs_converted_and_undecodable(image_task, capsys, tmp_path):
    checkpoint, support, query = image_task
    assert adapt_cli.main([f"checkpoint={checkpoint}", f"support={support}"]) == 0
    capsys.readouterr()
    write_image(query / "grey.png", colour(3, 0), mode="L", size=(16, 16))
    assert predict_cli.main(["model=adapted.pt", f"inputs={query}", "output=kept.csv"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "note: input images: 2 of 3 resized to 16x16 (from 12x10), 3 of 3 converted to RGB (from L, RGBA), "
        "as the model's training images were"
    ], err
    before = (tmp_path / "kept.csv").read_text()
    (query / "zz.png").write_bytes(b"")
    _fails(capsys, predict_cli.main, ["model=adapted.pt", f"inputs={query}", "output=kept.csv"], "1 of 4 input files")
    assert (tmp_path / "kept.csv").read_text() == before


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("x,z,y\n1,2,3\n", ("has column(s) the model does not take: z", "expected columns x, y, optional id")),
        ("x\n1\n2\n", ("lacks column(s) y",)),
        ("x,y\n1,2\n2,nan\n3,\n4,5\n", ("column y is empty or NaN in row(s) 2, 3",)),
        ("x,y\n1,2\n2,abc\n", ("column y holds values that are not numbers in row(s) 2", "'abc'")),
        ("x,y\n1,inf\n", ("infinite values in row(s) 1",)),
        ("", ("cannot read",)),
    ],
)
def test_bad_csvs(sinusoid_run, tmp_path, capsys, text, fragments):
    (tmp_path / "s.csv").write_text(text)
    _fails(capsys, adapt_cli.main, [f"checkpoint={sinusoid_run}", f"support={tmp_path / 's.csv'}"], *fragments)
    assert not Path("adapted.pt").exists()


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback():
    """``maml-predict --help | head -1``: the command's output meets a closed pipe; it stops quietly."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from maml_cli.cli.predict import main; sys.exit(main(['--help']))"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # before the child, still importing torch, writes a byte
    err = child.stderr.read().decode()
    assert child.wait(60) == 141, err
    assert err == ""
