"""vision_learner: a pre-trained ResNet body, fastai's head, frozen groups, precompute."""
import numpy as np
import pytest

import tinyconv as tc
from tinyconv import models
from tinyconv.data import ArrayDataset, loaders
from tinyconv.transfer_net import TransferNet
from tinyconv.vision_learner import IMAGENET_STATS, ActivationLoader, VisionLearner


def _data(n_train=16, n_valid=8, size=48, seed=0):
    rng = np.random.default_rng(seed)
    def ds(n):
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        images[..., 0] //= (labels[:, None, None] + 1).astype(np.uint8)     # a learnable cue
        return ArrayDataset(images, labels, ["a", "b", "c"])
    return ds(n_train), ds(n_valid)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 'pre-trained' ResNet-18: random weights and batch-norm statistics, saved by tinyconv
    (the torch formats are tested in test_torch_weights.py; any of them loads the same way)."""
    rng = np.random.default_rng(5)
    net = models.resnet18(rng=rng)
    for m in net.modules():
        if hasattr(m, "running_mean"):
            m.running_mean.data[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var.data[...] = rng.uniform(0.5, 1.5, m.running_var.shape)
    path = tmp_path_factory.mktemp("w") / "resnet18.npz"
    tc.save(net, path)
    return path, net


def _learner(weights_path, precompute, batch_size=8, shuffle=True, **kw):
    train, valid = _data()
    dls = loaders(train, valid, batch_size=batch_size, seed=3, prefetch=0)
    dls[0].shuffle = shuffle
    return tc.vision_learner("resnet18", dls, weights=weights_path, precompute=precompute,
                             seed=7, train_bn=False, silent=True,
                             metrics=[tc.metrics.accuracy], **kw)


def test_body_has_the_file_s_weights_and_the_head_fastai_s_layout(weights):
    path, net = weights
    learn = _learner(path, precompute=False)
    body_state = learn.model.body.state_dict()
    theirs = [v for k, v in net.state_dict().items() if not k.startswith("fc.")]
    assert len(body_state) == len(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(body_state.values(), theirs))
    kinds = [type(m).__name__ for m in learn.model.head]
    assert kinds == ["AdaptiveConcatPool2d", "Flatten", "BatchNorm1d", "Dropout", "Linear",
                     "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert learn.model.head[-1].out_features == 3            # the data's classes
    assert learn.train_dl.mean == IMAGENET_STATS[0] and learn.valid_dl.std == IMAGENET_STATS[1]


def test_three_layer_groups_and_only_the_head_trains_at_the_start(weights):
    learn = _learner(weights[0], precompute=False)
    assert learn.n_groups == 3 and learn.frozen_to == 2
    body = learn.model.body
    assert learn.layer_groups[0].layers == body.layers[:6]          # stem, layer1, layer2
    assert learn.layer_groups[1].layers == body.layers[6:]          # layer3, layer4
    assert not any(p.requires_grad for p in body.parameters())     # train_bn=False: all frozen
    assert all(p.requires_grad for p in learn.model.head.parameters())
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


def test_precomputed_head_steps_equal_the_steps_through_the_frozen_body(weights):
    # in order, so that both see the same batches of images: a conv's float32 result for an
    # image may differ in the last bit with the batch around it, and the head's BatchNorm1d
    # magnifies that for features that hardly vary within a batch
    cached, full = _learner(weights[0], True, shuffle=False), _learner(weights[0], False,
                                                                       shuffle=False)
    start = full.net.head.state_dict()
    assert isinstance(cached.train_dl, ActivationLoader) and cached.model is not cached.net
    cached.fit(1, 0.05)
    full.fit(1, 0.05)
    for (k, a), b in zip(cached.net.state_dict().items(), full.net.state_dict().values()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(cached.recorder.values[-1], full.recorder.values[-1], rtol=1e-6)
    moved = np.abs(cached.net.head.state_dict()["8.weight"] - start["8.weight"]).max()
    assert moved > 1e-3                                            # the steps did something


def test_cached_batches_come_in_the_image_loader_s_shuffled_order(weights):
    cached, full = _learner(weights[0], True), _learner(weights[0], False)
    for _ in range(2):                                             # two epochs, two orders
        got = [y for _, y in cached.train_dl]
        want = [y for _, y in full.train_dl]
        assert len(got) == len(want) == 2
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    feats = {tuple(f[0, :4]) for f, _ in cached.train_dl}
    assert len(feats) == 2                                         # distinct batches


def test_precompute_false_goes_back_to_images_and_true_reuses_the_cache(weights):
    learn = _learner(weights[0], True)
    feats = learn.train_dl.features
    assert feats.shape == (16, 1024) and feats.dtype == np.float32
    learn.precompute = False
    assert learn.model is learn.net and learn.train_dl is learn.image_dls[0]
    x, _ = next(iter(learn.train_dl))
    assert x.shape == (8, 3, 48, 48)
    learn.precompute = True
    assert learn.train_dl.features is feats                        # not computed again


def test_unfreezing_under_precompute_is_refused_and_precompute_needs_a_frozen_body(weights):
    learn = _learner(weights[0], True)
    with pytest.raises(ValueError, match="set learn.precompute = False first"):
        learn.unfreeze()
    learn.precompute = False
    learn.unfreeze()
    with pytest.raises(ValueError, match=r"the body must be frozen \(learn.freeze\(\)\)"):
        learn.precompute = True


def test_large_activation_sets_go_to_a_memory_mapped_file_keyed_by_weights_and_data(
        weights, tmp_path, monkeypatch):
    learn = _learner(weights[0], True, cache_dir=tmp_path, precompute_memory=0)
    files = sorted((tmp_path / "activations").glob("*.npy"))
    assert len(files) == 2                                          # training and validation
    assert isinstance(learn.train_dl.features, np.memmap)
    in_memory = _learner(weights[0], True).train_dl.features
    np.testing.assert_array_equal(learn.train_dl.features, in_memory)

    def fail(*args):
        raise AssertionError("recomputed instead of read from the cache file")
    monkeypatch.setattr(VisionLearner, "_compute_into", fail)
    again = _learner(weights[0], True, cache_dir=tmp_path, precompute_memory=0)
    np.testing.assert_array_equal(again.train_dl.features, in_memory)


def test_predictions_tta_and_save_use_the_full_net_under_precompute(weights, tmp_path):
    learn = _learner(weights[0], True)
    probs, targets = learn.get_preds()                               # on cached activations
    with learn.full_net():
        full_probs, _ = learn.get_preds()                            # through the body
    np.testing.assert_allclose(probs, full_probs, atol=1e-5)
    x = learn.image_dls[1].one_batch()[0][0]
    assert learn.predict(x)[0] == int(full_probs[0].argmax())
    learn.save(tmp_path / "learn.npz")
    back = tc.load(tmp_path / "learn.npz")
    assert isinstance(back, TransferNet) and back.arch_args["arch"] == "resnet18"
    with tc.no_grad():
        again = tc.nn.functional.softmax(back(tc.Tensor(x[None])), dim=-1).data[0]
    np.testing.assert_allclose(again, full_probs[0], atol=1e-5)
    assert back.meta["classes"] == ["a", "b", "c"]
    interp = tc.ClassificationInterpretation.from_learner(learn)      # on the cached features
    assert interp.classes == ["a", "b", "c"] and interp.images.shape == (8, 48, 48, 3)
    np.testing.assert_allclose(interp.probs, probs)


def test_a_random_body_keeps_the_data_s_statistics_and_bad_archs_are_named():
    train, valid = _data(8, 4, size=32)
    dls = loaders(train, valid, batch_size=4, seed=0, prefetch=0)
    learn = tc.vision_learner(tc.models.resnet18, dls, silent=True)
    assert learn.train_dl.mean == dls[0].mean and isinstance(learn, VisionLearner)
    with pytest.raises(ValueError, match="arch must be one of resnet18, resnet34, resnet50"):
        tc.vision_learner("resnet9", dls)
