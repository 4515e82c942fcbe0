"""airbench94: the net (structure, parameter count, torch twin), its schedule, the stem's bias
freeze, and the recipe end to end on a few generated images."""
import numpy as np
import pytest

import tinyconv as tc
from tinyconv import recipes, sched
from tinyconv.airbench import WhiteningBiasFreeze, airbench94
from tinyconv.data import ArrayDataset
from tinyconv.tensor import Tensor

try:
    import torch
except ImportError:          # the oracle tests skip
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def test_airbench94_counts_1_97m_parameters_and_freezes_stem_and_bn_scales():
    model = airbench94()
    assert model.num_parameters() == 1_972_792
    frozen = {name for name, p in model.named_parameters() if p.frozen}
    assert "0.weight" in frozen and "0.bias" not in frozen
    assert {"2.norm1.weight", "4.norm2.weight"} <= frozen
    trainable = sum(p.data.size for p in model.parameters() if not p.frozen)
    assert trainable == 1_972_792 - 3 * 24 * 4 - 2 * (64 + 256 + 256)


def test_airbench94_maps_cifar_images_to_logits_through_the_documented_shapes():
    model = airbench94(num_classes=7)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    shapes = []
    h = x
    for layer in model:
        h = layer(h)
        shapes.append(h.shape)
    assert shapes[0] == (2, 24, 31, 31)
    assert shapes[2:5] == [(2, 64, 15, 15), (2, 256, 7, 7), (2, 256, 3, 3)]
    assert shapes[-1] == (2, 7)


def test_airbench94_convs_start_with_identity_filters():
    model = airbench94()
    w = model[3].conv1.weight.data                   # 64 -> 256: first 64 filters identities
    for d in (0, 17, 63):
        expected = np.zeros((64, 3, 3), np.float32)
        expected[d, 1, 1] = 1
        np.testing.assert_array_equal(w[d], expected)
    assert np.abs(w[64:]).sum() > 0                  # the rest keep torch's random init


def test_init_whitening_gives_uncorrelated_unit_variance_stem_outputs():
    rng = np.random.default_rng(1)
    images = rng.standard_normal((64, 3, 12, 12)).astype(np.float32)
    images[:, 1] += 0.8 * images[:, 0]                   # correlated channels
    model = airbench94().init_whitening(images, eps=0.0)
    with tc.no_grad():
        out = model[0](Tensor(images)).data[:, :12]      # the 12 eigen-directions
    flat = out.transpose(1, 0, 2, 3).reshape(12, -1)
    second_moment = flat @ flat.T / flat.shape[1]        # uncentred, as the whitening is
    np.testing.assert_allclose(second_moment, np.eye(12), atol=0.05)
    np.testing.assert_array_equal(model[0].bias.data, 0)


def test_airbench_schedule_is_0_2_to_1_over_23_percent_then_down_to_0_07():
    f = sched.airbench(2.0)
    np.testing.assert_allclose([f(p) for p in (0.0, 0.115, 0.23, 0.615, 1.0)],
                               [0.4, 1.2, 2.0, 1.07, 0.14], rtol=1e-9)


def _tiny_data(n=96, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    images[..., 0] = np.clip(images[..., 0] // 2 + 80 * labels[:, None, None], 0, 255)
    return ArrayDataset(images, labels.astype(np.int64), [str(c) for c in range(classes)])


def test_whitening_bias_trains_for_its_epochs_then_stays_fixed():
    train = _tiny_data()
    learn = recipes.airbench94_learner(train, None, batch_size=32, whiten_images=32,
                                       whiten_bias_epochs=1, lookahead_every=0, silent=True)
    bias = learn.model[0].bias
    seen = []
    freeze = WhiteningBiasFreeze(bias, epochs=1)

    class Watch(tc.callbacks.Callback):
        order = 100

        def after_epoch(self):
            seen.append(bias.data.copy())
    learn.fit_airbench(3, 0.1, cbs=[freeze, Watch()])
    assert np.abs(seen[0]).sum() > 0                    # trained in epoch 0
    np.testing.assert_array_equal(seen[1], seen[0])     # frozen from epoch 1 on
    np.testing.assert_array_equal(seen[2], seen[0])


def test_fit_policy_runs_the_named_schedule():
    train = _tiny_data(64)
    learn = recipes.airbench94_learner(train, None, batch_size=32, whiten_images=32,
                                       lookahead_every=0, silent=True)
    learn.fit_policy("airbench", 2, 0.5)
    lrs = np.array(learn.recorder.lrs)
    np.testing.assert_allclose(lrs[0], 0.1)               # 0.2 * lr at pos 0
    assert lrs.max() <= 0.5 + 1e-12 and lrs[-1] < 0.5
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        learn.fit_policy("nope", 1, 0.1)


def test_recipe_hyper_parameters_translate_airbench_units():
    lr, wd = recipes.AirBenchHyper().step_sizes()
    np.testing.assert_allclose(lr, 11.5 / (1 + 1 / 0.15), rtol=1e-12)     # 1.5 at batch 1024
    np.testing.assert_allclose(lr * wd, 0.0153 / (1 + 1 / 0.15), rtol=1e-12)
    with pytest.raises(TypeError, match="unknown hyper-parameter 'lrr'"):
        recipes.airbench94_learner(_tiny_data(32), None, lrr=1.0)


def test_recipe_learns_a_separable_toy_problem():
    train, valid = _tiny_data(192, seed=0), _tiny_data(60, seed=1)
    learn = recipes.airbench94_learner(train, valid, batch_size=32, whiten_images=64,
                                       silent=True, seed=0)
    recipes.fit_airbench94(learn, epochs=3)
    probs, targets = learn.tta(mode="shift")
    assert (probs.argmax(1) == targets).mean() > 0.9


@needs_torch
def test_airbench94_matches_a_torch_twin_forward_and_backward():
    from torch_nets import airbench94 as torch_airbench94
    model = airbench94()
    twin = torch_airbench94()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 3, 5, 9])
    loss = tc.nn.functional.cross_entropy(model(Tensor(x)), y, label_smoothing=0.2)
    loss.backward()
    xt = torch.from_numpy(x)
    t_loss = torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(y), label_smoothing=0.2)
    t_loss.backward()
    np.testing.assert_allclose(loss.item(), t_loss.item(), rtol=1e-4)
    grads = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        if p.frozen:
            continue
        np.testing.assert_allclose(p.grad, grads[name].grad.numpy(), rtol=2e-3, atol=2e-5,
                                   err_msg=name)
    for name, buf in model.named_buffers():                 # BN momentum 0.4 in torch's sense
        np.testing.assert_allclose(buf.data, twin.state_dict()[name].numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def _write_cifar_like_folder(root, n=40, classes=("a", "b")):
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            image[..., k] = 255                                   # a colour per class
            Image.fromarray(image).save(root / c / f"{i}.png")


def test_cli_recipe_trains_saves_and_scores_with_shift_tta(tmp_path, capsys):
    import json

    from tinyconv.cli import main
    _write_cifar_like_folder(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "data"), "--recipe", "airbench94",
                 "--valid-pct", "0.25", "--epochs", "2", "--batch-size", "16", "--quiet",
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "airbench94" and metrics["tta"] == "shift"
    assert metrics["hyper"]["epochs"] == 2 and metrics["hyper"]["batch_size"] == 16
    assert metrics["n_train"] == 60 and 0 <= metrics["valid_accuracy_tta"] <= 1
    assert {"model.npz", "losses.png", "schedule.png", "confusion.png"} <= set(
        p.name for p in out.iterdir())
    model = tc.load(str(out / "model.npz"))
    assert type(model).__name__ == "AirBench94"


def test_cli_recipe_refuses_images_that_are_not_32x32_colour_in_one_line(tmp_path, capsys):
    from PIL import Image

    from tinyconv.cli import main
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / c / f"{i}.png")
    code = main(["train", "--data", str(tmp_path), "--recipe", "airbench94", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "32x32" in err and "Traceback" not in err


def test_ablation_switches_change_what_they_name():
    train = _tiny_data(64)
    plain = recipes.airbench94_learner(train, None, batch_size=32, whiten_images=32, silent=True)
    ablated = recipes.airbench94_learner(train, None, batch_size=32, whiten=False, dirac=False,
                                         silent=True)
    assert plain.model[0].weight.frozen and not ablated.model[0].weight.frozen
    w = ablated.model[2].conv1.weight.data
    assert not np.array_equal(w[0, :, 1, 1], np.eye(24, dtype=np.float32)[0])   # no identities
    np.testing.assert_array_equal(plain.model[2].conv1.weight.data[0, :, 1, 1],
                                  np.eye(24, dtype=np.float32)[0])


def test_cli_recipe_with_valid_pct_0_trains_on_every_image_of_a_folder(tmp_path, capsys):
    import json

    from tinyconv.cli import main
    _write_cifar_like_folder(tmp_path / "data", n=12)
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "data"), "--recipe", "airbench94",
                 "--valid-pct", "0", "--epochs", "1", "--batch-size", "8", "--quiet",
                 "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and metrics["n_train"] == 24 and "valid_accuracy" not in metrics
