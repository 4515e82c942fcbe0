"""`tinyconv train --arch resnet18 --weights FILE --precompute`: the eight steps on a small
generated photo folder, then evaluate and predict on the result; the --weights errors."""
import json

import numpy as np
import pytest
from PIL import Image

import tinyconv as tc
from test_cli import run
from tinyconv.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """PATH/<class>/*.png: 3 classes x 8 'photos' of 40x52 pixels, told apart by colour."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, name in enumerate(["cats", "dogs", "owls"]):
        (root / name).mkdir()
        for i in range(8):
            image = rng.integers(0, 120, (40, 52, 3), dtype=np.uint8)
            image[..., k] += 120
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "resnet18.npz"
    tc.save(tc.models.resnet18(rng=np.random.default_rng(1)), path)
    return path


@pytest.fixture(scope="module")
def recipe_run(photos, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--data", str(photos), "--arch", "resnet18", "--weights", str(weights),
                 "--precompute", "--size", "32", "--lr", "0.01", "--cycles", "1",
                 "--batch-size", "8", "--valid-pct", "0.25", "--quiet", "--out", str(out)])
    assert code == 0
    return out


def test_the_eight_steps_run_and_report_an_accuracy_each(recipe_run):
    metrics = json.loads((recipe_run / "metrics.json").read_text())
    assert [s["step"] for s in metrics["steps"]] == list(range(1, 9))
    assert all(0 <= s["valid_accuracy"] <= 1 for s in metrics["steps"])
    assert metrics["lrs"] == pytest.approx([0.01 / 9, 0.01 / 3, 0.01])
    assert "valid_accuracy_tta" in metrics and metrics["weights"].endswith("resnet18.npz")
    model = tc.load(recipe_run / "model.npz")
    assert model.arch_args["arch"] == "resnet18" and model.meta["image_shape"] == [32, 32, 3]
    assert model.meta["mean"] == pytest.approx([0.485, 0.456, 0.406])     # ImageNet's
    assert model.meta["crop"] is True                                    # centre squares


def test_evaluate_and_predict_work_on_the_result(recipe_run, photos, capsys):
    code, out, err = run(capsys, "evaluate", recipe_run / "model.npz", "--data", photos,
                         "--size", "32", "--json")
    assert code == 0, err
    assert json.loads(out)["classes"] == ["cats", "dogs", "owls"]
    code, out, err = run(capsys, "predict", recipe_run / "model.npz", photos / "owls" / "0.png",
                         "--resize")
    assert code == 0, err
    assert out.startswith(str(photos / "owls" / "0.png"))
    # predict sees the photo as training did: the centre square, resized
    model = tc.load(recipe_run / "model.npz")
    with Image.open(photos / "owls" / "0.png") as im:
        x = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR, box=(6, 0, 46, 40)),
                       np.float32) / 255.0
    x = ((x - model.meta["mean"]) / model.meta["std"]).transpose(2, 0, 1)[None]
    with tc.no_grad():
        p = tc.nn.functional.softmax(model(tc.Tensor(x.astype(np.float32))), dim=-1).data[0]
    top = int(p.argmax())
    assert f": {model.meta['classes'][top]} {p[top]:.3f}" in out


def test_weights_without_a_file_says_how_to_get_one(photos, capsys):
    code, _, err = run(capsys, "train", "--data", photos, "--arch", "resnet34", "--weights")
    assert code == 2
    assert "--weights needs a file: download torchvision's ImageNet weights for resnet34" in err
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in err
    code, _, err = run(capsys, "train", "--data", photos, "--arch", "resnet18", "--weights",
                       photos / "nope.pth")
    assert code == 2 and "nope.pth: no such file; download" in err


def test_weights_need_a_resnet_arch(photos, weights, capsys):
    code, _, err = run(capsys, "train", "--data", photos, "--arch", "resnet9", "--weights",
                       weights)
    assert code == 2 and "--weights and --precompute need --arch resnet18/resnet34/resnet50" in err


def test_a_weight_file_of_another_arch_is_a_clear_error(photos, weights, capsys):
    code, _, err = run(capsys, "train", "--data", photos, "--arch", "resnet34", "--weights",
                       weights, "--size", "32", "--quiet")
    assert code == 2 and "does not fit ResNet" in err and "missing keys: layer1.2" in err


def test_without_weights_the_random_body_is_a_warning_even_when_quiet(photos, tmp_path, capsys):
    code, out, err = run(capsys, "train", "--data", photos, "--arch", "resnet18", "--size", 32,
                         "--cycles", 1, "--lr", 0.01, "--batch-size", 8, "--quiet",
                         "--out", tmp_path)
    assert code == 0 and out.count("valid accuracy") == 9         # the eight steps and TTA
    assert "tinyconv: warning: no --weights: the resnet18 body is random" in err
    assert "resnet18-f37072fd.pth" in err
