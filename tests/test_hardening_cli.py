"""The command line under misuse: a diverged run fails loudly, nonsense arguments are refused while
parsing, refused input is one line and exit code 2."""
import json

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import cli
from tinyconv.cli import main

TINY = ["--limit", "256", "--epochs", "1", "--batch-size", "64", "--lr", "0.01", "--quiet"]


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


def test_a_run_that_hits_a_nan_loss_exits_1_and_records_the_stop(tmp_path, capsys, monkeypatch):
    nan_loss_after(2, monkeypatch)
    code, out, err = run(capsys, "train", *TINY, "--out", tmp_path)
    assert code == 1
    assert err.count("\n") == 1 and "epoch 0 batch 2" in err and "metrics.json" in err, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["diverged"] is True and "epoch 0 batch 2" in metrics["stopped"]
    assert metrics["epoch"] == 0 and metrics["batch"] == 2
    # TerminateOnNaN stops before the bad step: the weights are the finite ones of batch 1
    model = tc.load(metrics["model"])
    assert all(np.isfinite(a).all() for a in model.state_dict().values())


def test_non_finite_weights_are_never_written_as_the_result(tmp_path, capsys, monkeypatch):
    real_fit = cli._fit

    def fit_then_poison(args, learn, lr):
        real_fit(args, learn, lr)
        next(iter(learn.model.parameters())).data[...] = np.inf
    monkeypatch.setattr(cli, "_fit", fit_then_poison)
    code, out, err = run(capsys, "train", *TINY, "--out", tmp_path)
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
