"""The `tinyconv` command: a quick training run writes every promised file; bad input is one line
and exit code 2; the data detection; evaluate/predict on the trained model; the schedule preview."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinyconv.cli import main, sgdr_cycles

QUICK = ["--limit", "3000", "--epochs", "1", "--batch-size", "64", "--quiet"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quick default-style run (LR finder included) shared by the tests that need a model."""
    out = tmp_path_factory.mktemp("run")
    code = main(["train", *QUICK, "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_model_pictures_and_metrics(trained):
    for name in ("model.npz", "lr_find.png", "losses.png", "schedule.png", "confusion.png",
                 "metrics.json"):
        assert (trained / name).stat().st_size > 0, name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["epochs"] == 1 and metrics["lr"] > 0 and metrics["seconds"] > 0
    assert metrics["options"]["epochs"] == 1 and metrics["options"]["cutout"] is None
    # 3,000 images and one epoch: far from the full result, but it has learned something
    assert metrics["test_accuracy"] > 0.7          # chance is 0.1


def test_evaluate_json_matches_the_training_run(trained, capsys):
    code, out, _ = run(capsys, "evaluate", trained / "model.npz", "--data", "mnist", "--json")
    assert code == 0
    result = json.loads(out)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == result["n"] == 10_000
    assert set(result["per_class_accuracy"]) == {str(i) for i in range(10)}


def test_evaluate_flip_tta_averages_each_image_with_its_mirror(trained, capsys):
    import tinyconv as tc
    code, out, _ = run(capsys, "evaluate", trained / "model.npz", "--data", "mnist", "--json",
                       "--tta", "flip")
    assert code == 0
    result = json.loads(out)
    model = tc.load(trained / "model.npz")
    test = tc.data.MNIST(train=False)
    mean, std = (np.asarray(model.meta[k], np.float32) for k in ("mean", "std"))
    x = ((test.images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    with tc.no_grad():
        model.eval()
        logits = sum(model(tc.Tensor(np.ascontiguousarray(v))).data     # airbench: logits
                     for v in (x, x[..., ::-1]))
    assert result["tta"] == "flip"
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == test.labels).mean(), abs=2e-4)


def test_evaluate_shift_tta_weights_flip_and_shifted_flips(trained, capsys):
    import tinyconv as tc
    from tinyconv import augment as A
    code, out, _ = run(capsys, "evaluate", trained / "model.npz", "--data", "mnist", "--json",
                       "--tta", "shift")
    assert code == 0
    model = tc.load(trained / "model.npz")
    test = tc.data.MNIST(train=False)
    mean, std = model.meta["mean"], model.meta["std"]

    def flip_logits(dx, dy):
        shifted = A.Compose([A.Shift(dx, dy)])(test.images, np.random.default_rng(0))
        x = A.normalize(shifted, mean, std)
        with tc.no_grad():
            model.eval()
            return sum(model(tc.Tensor(np.ascontiguousarray(v))).data      # airbench: logits
                       for v in (x, x[..., ::-1])) / 2

    logits = 0.5 * flip_logits(0, 0) + 0.25 * (flip_logits(-1, -1) + flip_logits(1, 1))
    result = json.loads(out)
    assert result["tta"] == "shift"
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == test.labels).mean(), abs=2e-4)


def test_predict_prints_top_k(trained, tmp_path, capsys):
    import tinyconv as tc
    digit = tc.data.MNIST(train=False)
    path = tmp_path / "digit.png"
    Image.fromarray(digit.images[0][:, :, 0]).save(path)
    code, out, _ = run(capsys, "predict", trained / "model.npz", path, "--top-k", "2")
    assert code == 0
    assert out.startswith(f"{path}: ") and out.count(",") == 1


def test_predict_refuses_a_wrong_size_image_in_one_line(trained, tmp_path, capsys):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(path)
    code, out, err = run(capsys, "predict", trained / "model.npz", path)
    assert code == 2 and "40x30" in err and "28x28" in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, words", [
    (["train", "--data", "/no/such/folder"], ["/no/such/folder", "no such"]),
    (["train", "--epochs", "many"], ["--epochs", "many"]),
    (["train", "--lr", "-1"], ["--lr", "positive"]),
    (["train", "--policy", "magic"], ["--policy", "magic"]),
    (["train", "--moms", "0.9,0.8"], ["--moms", "0.9,0.8"]),
    (["train", "--arch", "resnet9", "--logit-scale", "0"], ["--logit-scale", "positive"]),
    (["train", "--whiten"], ["--whiten", "C_out must be even and at most 2 * 9", "(32, 1, 3, 3)"]),
    (["train", "--ghost-bn", "1"], ["--ghost-bn", "at least 2", "got 1"]),
    (["train", "--ghost-bn", "0"], ["--ghost-bn", "at least 2", "got 0"]),
    (["train", "--cutout", "29"], ["--cutout", "image size 28", "got 29"]),
    (["evaluate", "missing.npz", "--data", "mnist"], ["missing.npz"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, words):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err


def test_whiten_initialises_the_first_conv_with_whitening_filter_pairs():
    from types import SimpleNamespace

    from tinyconv import models
    from tinyconv.cli import whiten_first_conv
    model = models.resnet9(num_classes=2, width=4, rng=np.random.default_rng(0))
    train = SimpleNamespace(images=np.random.default_rng(1).integers(0, 256, (50, 32, 32, 3),
                                                                     dtype=np.uint8))
    before = model[0][0].weight.data.copy()
    whiten_first_conv(model, train, SimpleNamespace(mean=0.5, std=0.25), seed=0)
    w = model[0][0].weight.data
    assert w.shape == before.shape and not np.allclose(w, before)
    np.testing.assert_array_equal(w[2:], -w[:2])      # the +/- pairs of the 2 leading components


def test_cutout_erases_one_square_of_the_mean_colour_after_the_preset():
    from tinyconv.cli import augmentation
    images = np.full((6, 32, 32, 3), 200, np.uint8)
    transform = augmentation("cifar", "cifar10", 32, cutout=8, fill=np.array([1, 2, 3], np.uint8))
    assert [type(t).__name__ for t in transform.tfms] == ["RandomCrop", "FlipLR", "Cutout"]
    out = transform(images, np.random.default_rng(0))
    for image in out:                              # one square (clipped at the edges) per image
        erased = np.all(image == [1, 2, 3], axis=-1)
        rows, cols = np.nonzero(erased)
        assert 0 < erased.sum() <= 64
        assert erased.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert augmentation("none", "cifar10", 32) is None
    assert [type(t).__name__ for t in augmentation("none", "cifar10", 32, cutout=4).tfms] == \
        ["Cutout"]


def test_ghost_bn_sets_every_batch_norm_and_leaves_the_state_dict_alone():
    from tinyconv import models, nn
    from tinyconv.cli import use_ghost_batch_norm
    model = models.resnet9(num_classes=2, width=4, rng=np.random.default_rng(0))
    keys = list(model.state_dict())
    use_ghost_batch_norm(model, 32)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 8 and all(bn.ghost_batch_size == 32 for bn in bns)
    assert list(model.state_dict()) == keys


def _write_folder(root, classes, n=4, size=(12, 10), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / c / f"{i}.png")


def test_empty_class_folder_is_one_line(tmp_path, capsys):
    _write_folder(tmp_path, ["cat"], size=(28, 28), mode="L")
    (tmp_path / "dog").mkdir()
    code, _, err = run(capsys, "train", "--data", tmp_path, "--quiet")
    assert code == 2 and "dog" in err and "Traceback" not in err


def test_image_folder_of_the_wrong_size_for_resnet9_is_one_line(tmp_path, capsys):
    _write_folder(tmp_path, ["a", "b"], size=(12, 10))
    code, _, err = run(capsys, "train", "--data", tmp_path, "--arch", "resnet9", "--quiet")
    assert code == 2 and "resnet9" in err and "10x12x3" in err and "Traceback" not in err


def test_grey_image_folder_trains_mnist_cnn_with_train_and_valid_subfolders(tmp_path, capsys):
    _write_folder(tmp_path / "train", ["a", "b"], n=8, size=(28, 28), mode="L")
    _write_folder(tmp_path / "valid", ["a", "b"], n=4, size=(28, 28), mode="L")
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--data", tmp_path, "--lr", "0.01", "--epochs", "1",
                       "--batch-size", "4", "--quiet", "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "valid_accuracy" in metrics and "test_accuracy" not in metrics
    assert metrics["arch"] == "mnist_cnn"


def test_plot_schedule_draws_png_and_ascii(tmp_path, capsys):
    code, out, _ = run(capsys, "plot-schedule", "--policy", "sgdr", "--epochs", "7",
                       "--out", tmp_path)
    assert code == 0 and (tmp_path / "schedule.png").stat().st_size > 0
    assert "lr (sgdr, 7 epochs)" in out and "*" in out


def test_sgdr_cycles_fit_the_epoch_budget():
    assert sgdr_cycles(7, 1, 2) == 3          # 1 + 2 + 4
    assert sgdr_cycles(6, 1, 2) == 2          # 1 + 2 (a third cycle would need 7)
    assert sgdr_cycles(5, 1, 1) == 5
    assert sgdr_cycles(1, 2, 2) == 1          # always at least one cycle


def test_show_aug_writes_pictures(tmp_path, capsys):
    code, out, _ = run(capsys, "show-aug", "--aug", "basic", "--out", tmp_path)
    assert code == 0
    assert (tmp_path / "augmentations.png").stat().st_size > 0
    assert (tmp_path / "batch.png").stat().st_size > 0


def test_python_dash_m_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "tinyconv", "--help"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.slow
def test_default_train_on_a_6000_image_slice_passes_95_percent(tmp_path):
    code = main(["train", "--limit", "6000", "--epochs", "1", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.95, metrics
