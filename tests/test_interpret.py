"""ClassificationInterpretation: confusion matrix, most confused pairs, top losses, plots."""
import numpy as np
import pytest

from tinyconv.interpret import ClassificationInterpretation
from tinyconv.learner import Learner

from test_learner import MLP, Loader, data


def one_hot_probs(preds, K):
    probs = np.full((len(preds), K), 0.1 / (K - 1))
    probs[np.arange(len(preds)), preds] = 0.9
    return probs


def interp_of(targets, preds, K=3, **kwargs):
    probs = one_hot_probs(np.array(preds), K)
    losses = -np.log(probs[np.arange(len(targets)), targets])
    return ClassificationInterpretation(probs, np.array(targets), losses, **kwargs)


def test_confusion_matrix_counts_actual_by_predicted():
    interp = interp_of([0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 1, 0, 0, 2, 2, 1])
    np.testing.assert_array_equal(interp.confusion_matrix(), [[1, 1, 0], [2, 1, 0], [0, 1, 2]])
    assert interp.confusion_matrix().sum() == 8


def test_most_confused_largest_first_with_threshold():
    interp = interp_of([0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 1, 0, 0, 2, 2, 1],
                       classes=["cat", "dog", "fox"])
    assert interp.most_confused() == [("dog", "cat", 2), ("cat", "dog", 1), ("fox", "dog", 1)]
    assert interp.most_confused(min_val=2) == [("dog", "cat", 2)]


def test_top_losses_are_the_wrong_predictions_first():
    targets, preds = [0, 1, 2, 0], [0, 2, 2, 1]
    interp = interp_of(targets, preds)
    losses, idxs = interp.top_losses(2)
    assert sorted(idxs.tolist()) == [1, 3]
    assert np.all(losses == pytest.approx(-np.log(0.05)))
    losses, idxs = interp.top_losses()
    assert len(idxs) == 4 and np.all(np.diff(losses) <= 0)
    _, idxs = interp.top_losses(1, largest=False)
    assert idxs[0] in (0, 2)


def test_mismatched_shapes_and_class_names_are_errors():
    with pytest.raises(ValueError, match=r"targets and losses of shape \(2,\)"):
        ClassificationInterpretation(np.ones((2, 3)), [0], [0.1, 0.2])
    with pytest.raises(ValueError, match="2 class names for 3"):
        interp_of([0], [0], classes=["a", "b"])


class Dataset:
    """What plot_top_losses needs from a loader's dataset."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, 4, 2, 1), dtype=np.uint8)
        self.classes = ["a", "b", "c"]


def test_from_learner_uses_the_validation_predictions_and_dataset(tmp_path):
    x, y = data(16, seed=3)
    valid = Loader(x, y, 8)
    valid.dataset = Dataset(16)
    learn = Learner(MLP(), Loader(*data(40), 8), valid, silent=True)
    learn.fit(1, 0.1)
    interp = ClassificationInterpretation.from_learner(learn)
    probs, targets, losses = learn.get_preds(with_loss=True)
    np.testing.assert_array_equal(interp.preds, probs.argmax(1))
    np.testing.assert_array_equal(interp.targets, y)
    assert interp.classes == ["a", "b", "c"]
    assert interp.confusion_matrix().sum() == 16
    fig = interp.plot_confusion_matrix(path=tmp_path / "cm.png")
    assert fig.axes[0].get_xlabel() == "Predicted"
    fig = interp.plot_top_losses(4, path=tmp_path / "top.png")
    worst = interp.top_losses(1)[1][0]
    assert fig.axes[0].get_title().startswith(f"{interp.classes[interp.preds[worst]]} / "
                                              f"{interp.classes[y[worst]]} / ")
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "top.png").stat().st_size > 0


def test_from_learner_refuses_a_shuffling_loader():
    learn = Learner(MLP(), Loader(*data(40), 8), Loader(*data(16), 8, shuffle=True,
                                                        rng=np.random.default_rng(0)),
                    silent=True)
    with pytest.raises(ValueError, match="shuffles"):
        ClassificationInterpretation.from_learner(learn)


def test_plot_top_losses_needs_images():
    with pytest.raises(ValueError, match="no images"):
        interp_of([0, 1], [1, 1]).plot_top_losses(1)
