"""The command line under misuse: a diverged run fails loudly, nonsense arguments are refused while
parsing, refused input is one line and exit code 2."""
import json

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import cli
from tinyconv.cli import main

TINY = ["--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--arch", "mnist_cnn", "--quiet"]


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    """A small MNIST IDX folder: 64 training and 5 test images (validation stays quick)."""
    from test_datasets import write_mnist
    root = tmp_path_factory.mktemp("idx")
    write_mnist(root, n_train=64, n_test=5, gz=True)
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- item 4: a diverged run is a failure ----------------------------------------------------------

def nan_loss_after(n_good, monkeypatch):
    """Make cross-entropy return NaN from its (n_good + 1)-th call on."""
    real = tc.nn.functional.cross_entropy
    calls = []

    def loss(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out * float("nan") if len(calls) > n_good else out
    monkeypatch.setattr(tc.nn.functional, "cross_entropy", loss)


def test_a_run_that_hits_a_nan_loss_exits_1_and_records_the_stop(idx, tmp_path, capsys,
                                                                  monkeypatch):
    nan_loss_after(2, monkeypatch)
    code, out, err = run(capsys, "train", "--data", idx, *TINY, "--out", tmp_path)
    assert code == 1
    assert err.count("\n") == 1 and "epoch 0 batch 2" in err and "metrics.json" in err, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["diverged"] is True and "epoch 0 batch 2" in metrics["stopped"]
    assert metrics["epoch"] == 0 and metrics["batch"] == 2
    # TerminateOnNaN stops before the bad step: the weights are the finite ones of batch 1
    model = tc.load(metrics["model"])
    assert all(np.isfinite(a).all() for a in model.state_dict().values())


def test_non_finite_weights_are_never_written_as_the_result(idx, tmp_path, capsys, monkeypatch):
    real_fit = cli._fit

    def fit_then_poison(args, learn, lr, *rest):
        real_fit(args, learn, lr, *rest)
        next(iter(learn.model.parameters())).data[...] = np.inf
    monkeypatch.setattr(cli, "_fit", fit_then_poison)
    code, out, err = run(capsys, "train", "--data", idx, *TINY, "--out", tmp_path)
    assert code == 1 and err.count("\n") == 1 and "no model written" in err, err
    assert not (tmp_path / "model.npz").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["model"] is None


@pytest.mark.parametrize("argv, option", [
    (["train", "--lr", "nan"], "--lr"), (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "-0.1"], "--lr"), (["train", "--wd", "nan"], "--wd"),
    (["train", "--logit-scale", "inf"], "--logit-scale"),
    (["train", "--label-smoothing", "nan"], "--label-smoothing"),
    (["train", "--valid-pct", "nan"], "--valid-pct"),
    (["lr-find", "--start-lr", "nan"], "--start-lr"), (["lr-find", "--end-lr", "inf"], "--end-lr"),
    (["plot-schedule", "--lr", "nan"], "--lr"),
])
def test_non_finite_numbers_are_refused_while_parsing(tmp_path, capsys, monkeypatch, argv,
                                                      option):
    monkeypatch.setattr(cli, "load_data", lambda *a: pytest.fail("parsed past a bad number"))
    code, out, err = run(capsys, *argv, "--out", tmp_path)
    assert code == 2 and err.count("\n") == 1 and option in err, err


# --- item 6: refused or malformed input is one line and exit code 2 -----------------------------

@pytest.mark.parametrize("argv, option", [
    (["train", "--width", "0"], "--width"), (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--seed", "-1"], "--seed"), (["train", "--limit", "0"], "--limit"),
    (["train", "--size", "0"], "--size"), (["train", "--cutout", "0"], "--cutout"),
    (["train", "--valid-pct", "1"], "--valid-pct"),
    (["train", "--valid-pct", "-0.1"], "--valid-pct"),
    (["predict", "m.npz", "x.png", "--top-k", "0"], "--top-k"),
    (["show-aug", "--n", "0"], "--n"), (["show-aug", "--index", "-1"], "--index"),
    (["lr-find", "--num-it", "0"], "--num-it"), (["plot-schedule", "--epochs", "0"], "--epochs"),
])
def test_nonsense_values_are_refused_while_parsing(capsys, monkeypatch, argv, option):
    monkeypatch.setattr(cli, "load_data", lambda *a: pytest.fail("parsed past a bad value"))
    code, out, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and f"argument {option}" in err, err


def test_an_inverted_lr_find_range_is_refused_before_loading_data(capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_data", lambda *a: pytest.fail("loaded data"))
    code, out, err = run(capsys, "lr-find", "--start-lr", "1", "--end-lr", "0.1")
    assert code == 2 and err.count("\n") == 1 and "must be below --end-lr" in err, err


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    def no_memory(*args):
        raise MemoryError()
    monkeypatch.setattr(cli, "load_data", no_memory)
    code, out, err = run(capsys, "train", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "out of memory" in err and "--batch-size" in err


def test_a_refused_cifar_pickle_is_one_line(tmp_path, capsys):
    from test_datasets import write_cifar_py
    from test_hardening_pickle import batch_program, call, glob, lit
    root = tmp_path / "cifar-10-batches-py"
    write_cifar_py(root)
    (root / "data_batch_3").write_bytes(batch_program(call(glob("os", "system"), lit("true"))))
    code, out, err = run(capsys, "train", "--data", root, "--quiet", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "data_batch_3" in err and "os.system" in err


def grey_folder(root, classes=("a", "b"), n=5, size=28, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def saved_mnist_cnn(path, num_classes=2, **meta):
    net = tc.models.mnist_cnn(num_classes=num_classes, rng=np.random.default_rng(0))
    return tc.save(net, path, **meta)


def test_a_model_saved_without_statistics_is_one_clear_line(tmp_path, capsys):
    folder = grey_folder(tmp_path / "digits")
    model = saved_mnist_cnn(tmp_path / "bare.npz", classes=["a", "b"], image_shape=[28, 28, 1])
    for argv in (["evaluate", model, "--data", folder],
                 ["predict", model, folder / "a" / "0.png"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, err
        assert "records no normalisation statistics (mean, std)" in err and "tc.save" in err


def test_a_head_with_more_outputs_than_class_names_is_one_line(tmp_path, capsys):
    folder = grey_folder(tmp_path / "digits")
    model = saved_mnist_cnn(tmp_path / "m.npz", num_classes=5, classes=["a", "b"], mean=[0.5],
                            std=[0.25], image_shape=[28, 28, 1])
    for argv in (["evaluate", model, "--data", folder],
                 ["predict", model, folder / "a" / "0.png"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, err
        assert "outputs 5 scores per image but names 2 classes" in err


@pytest.mark.parametrize("meta, words", [
    ({"mean": "x", "std": [0.25]}, "must be lists of finite numbers"),
    ({"mean": [0.5], "std": [0.0]}, "std > 0"),
    ({"mean": [0.5], "std": [0.25], "classes": "ab"}, "'classes' must be a list of names"),
    ({"mean": [0.5], "std": [0.25], "image_shape": [28, 28]}, "'image_shape' must be [H, W, C]"),
])
def test_bad_metadata_is_one_line(tmp_path, capsys, meta, words):
    folder = grey_folder(tmp_path / "digits")
    model = saved_mnist_cnn(tmp_path / "m.npz", **meta)
    code, out, err = run(capsys, "predict", model, folder / "a" / "0.png")
    assert code == 2 and err.count("\n") == 1 and words in err, err


def test_show_aug_on_few_images_and_a_bad_index(tmp_path, capsys):
    folder = grey_folder(tmp_path / "few", n=3)
    code, out, err = run(capsys, "show-aug", "--data", folder, "--index", "100",
                         "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and "--index 100 is out of range" in err, err
    code, out, err = run(capsys, "show-aug", "--data", folder, "--aug", "shift",
                         "--out", tmp_path / "o")
    assert code == 0, err
    assert (tmp_path / "o" / "batch.png").exists()


def test_training_on_a_single_class_warns(tmp_path, capsys):
    folder = grey_folder(tmp_path / "one", classes=("only",), n=10)
    args = cli.build_parser().parse_args(["train", "--data", str(folder), "--arch", "mnist_cnn",
                                          "--batch-size", "16", "--quiet"])
    cli.setup_learner(args)
    err = capsys.readouterr().err
    assert "warning" in err and "single class (only)" in err


# --- item 7: evaluate scores every image of a plain folder, and decodes only what it scores -----

def test_evaluate_on_a_plain_class_folder_scores_every_image(tmp_path, capsys):
    folder = grey_folder(tmp_path / "digits", n=5)
    model = saved_mnist_cnn(tmp_path / "m.npz", classes=["a", "b"], mean=[0.5], std=[0.25],
                            image_shape=[28, 28, 1])
    code, out, err = run(capsys, "evaluate", model, "--data", folder, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 10 and result["scored"] == f"every image of {folder}"
    code, out, err = run(capsys, "evaluate", model, "--data", folder)
    assert "on 10 images (every image of" in out


def test_evaluate_decodes_only_the_test_split(tmp_path, capsys):
    from test_datasets import write_mnist
    (tmp_path / "idx").mkdir()
    write_mnist(tmp_path / "idx", n_train=12, n_test=5, gz=True)
    (tmp_path / "idx" / "train-images-idx3-ubyte.gz").write_bytes(b"not read by evaluate")
    model = saved_mnist_cnn(tmp_path / "m.npz", num_classes=10,
                            classes=[str(d) for d in range(10)], mean=[0.5], std=[0.25],
                            image_shape=[28, 28, 1])
    code, out, err = run(capsys, "evaluate", model, "--data", tmp_path / "idx", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 5


def test_the_folder_holding_cifar_10_batches_py_is_recognised(tmp_path, capsys):
    from test_datasets import write_cifar_py
    write_cifar_py(tmp_path / "downloads" / "cifar-10-batches-py", n=4)
    net = tc.models.resnet9(num_classes=10, width=4, rng=np.random.default_rng(0))
    model = tc.save(net, tmp_path / "m.npz", classes=[f"class{k}" for k in range(10)],
                    mean=[0.5] * 3, std=[0.25] * 3, image_shape=[32, 32, 3])
    code, out, err = run(capsys, "evaluate", model, "--data", tmp_path / "downloads", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 4
