"""train --checkpoint / --resume: an interrupted run continues bit-identically; Ctrl-C says how;
a second run into the same --out is refused."""
import json

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import callbacks
from tinyconv.cli import main
from tinyconv.learner import Learner

from test_datasets import write_mnist


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    write_mnist(root, n_train=48, n_test=5, gz=True)
    return root


def argv(idx, out, *extra):
    return ["train", "--data", str(idx), "--arch", "mnist_cnn", "--epochs", "3", "--lr", "0.05",
            "--batch-size", "16", "--aug", "shift", "--quiet", "--out", str(out), *extra]


def weights(out):
    return tc.load(out / "model.npz").state_dict()


def test_an_interrupted_run_resumes_bit_identically(idx, tmp_path, capsys, monkeypatch):
    assert main(argv(idx, tmp_path / "whole", "--checkpoint")) == 0
    capsys.readouterr()

    real_after_epoch = callbacks.Checkpoint.after_epoch

    def ctrl_c_after_epoch_2(self):
        real_after_epoch(self)
        if self.learn.epoch + 1 == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(callbacks.Checkpoint, "after_epoch", ctrl_c_after_epoch_2)
    cut = tmp_path / "cut"
    assert main(argv(idx, cut, "--checkpoint")) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"continue with: tinyconv train --resume {cut}" in err, err
    assert not (cut / "model.npz").exists()
    monkeypatch.setattr(callbacks.Checkpoint, "after_epoch", real_after_epoch)

    # options on the command line are the stored ones: --resume alone is enough
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    whole, resumed = weights(tmp_path / "whole"), weights(cut)
    assert list(whole) == list(resumed)
    for k in whole:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", cut))
    assert a["test_accuracy"] == b["test_accuracy"] and a["lr"] == b["lr"]


def test_ctrl_c_without_a_checkpoint_says_so(idx, tmp_path, capsys, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Learner, "fit", ctrl_c)
    assert main(argv(idx, tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "started with --checkpoint can be continued" in err, err


def test_resume_needs_a_checkpoint_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run.json and checkpoint.npz" in err


def test_a_second_run_into_the_same_out_is_refused(idx, tmp_path, capsys):
    assert main(argv(idx, tmp_path / "run", "--epochs", "1")) == 0
    before = (tmp_path / "run" / "model.npz").read_bytes()
    capsys.readouterr()
    assert main(argv(idx, tmp_path / "run", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run (metrics.json, model.npz)" in err, err
    assert (tmp_path / "run" / "model.npz").read_bytes() == before


def test_default_run_folders_never_collide(idx, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20260101-000000")
    from tinyconv import cli
    first, second = cli._new_run_dir(None), cli._new_run_dir(None)
    assert first.endswith("20260101-000000") and second.endswith("20260101-000000-2")


def test_a_diverged_checkpoint_run_keeps_its_last_finite_checkpoint(idx, tmp_path, capsys,
                                                                    monkeypatch):
    """Weights turned inf by the last step of epoch 2: the checkpoint stays that of epoch 1."""
    real_step = tc.optim.SGD.step
    steps = []

    def step_then_poison(self, *args, **kwargs):
        real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 6:                           # 48 images / 16: 3 steps per epoch
            self.param_groups[0]["params"][0].data[...] = np.inf
    monkeypatch.setattr(tc.optim.SGD, "step", step_then_poison)
    out = tmp_path / "run"
    assert main(argv(idx, out, "--checkpoint")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "last finite checkpoint" in err, err
    learn_state, header = tc.serialize.read_model_file(out / "checkpoint.npz")
    assert header["learner"]["epoch"] == 1
    assert all(np.isfinite(a).all() for a in learn_state.values())
    assert not (out / "model.npz").exists()
    assert json.loads((out / "metrics.json").read_text())["checkpoint"].endswith("checkpoint.npz")
