"""No hangs: every loop whose length a user number decides either ends quickly or is refused.

Each call runs under `deadline(seconds)`, which turns a hang into a test failure (SIGALRM) rather
than a stuck suite.
"""
import contextlib
import signal

import pytest

from tinyconv import sched
from tinyconv.cli import UsageError, main, sgdr_cycles


@contextlib.contextmanager
def deadline(seconds):
    def give_up(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a loop that does not end")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("cycle_len, cycle_mult", [(0, 2), (-1, 2), (1, 0), (1, -3), (0, 1)])
def test_sgdr_cycles_refuses_cycles_that_never_fill_the_budget(cycle_len, cycle_mult):
    with deadline(2), pytest.raises(UsageError, match="cycle-len and --cycle-mult"):
        sgdr_cycles(8, cycle_len, cycle_mult)


def test_sgdr_cycles_with_mult_1_is_closed_form():
    with deadline(2):
        assert sgdr_cycles(10 ** 12, 1, 1) == 10 ** 12
        assert sgdr_cycles(10, 3, 1) == 3 and sgdr_cycles(2, 3, 1) == 1
        assert sgdr_cycles(10 ** 12, 1, 2) == 39      # 2**39 - 1 <= 10**12 < 2**40 - 1


@pytest.mark.parametrize("command", ["train", "plot-schedule"])
@pytest.mark.parametrize("option, value", [("--cycle-len", "0"), ("--cycle-mult", "0"),
                                           ("--cycle-len", "-2"), ("--epochs", "0")])
def test_sgdr_options_are_refused_while_parsing(tmp_path, capsys, command, option, value):
    with deadline(5):
        code = main([command, "--policy", "sgdr", option, value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and option in err and ">= 1" in err, err


def test_plot_schedule_refuses_more_points_than_it_can_draw(tmp_path, capsys):
    with deadline(5):
        code = main(["plot-schedule", "--epochs", "100000", "--iters", "100000",
                     "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "lower --iters" in err and err.count("\n") == 1


@pytest.mark.parametrize("n_cycles, cycle_mult", [(10 ** 7, 1), (10 ** 6, 2), (200, 2)])
def test_sgdr_schedule_refuses_a_run_longer_than_its_cap(n_cycles, cycle_mult):
    with deadline(3), pytest.raises(ValueError, match="more than 1,000,000 epochs"):
        sched.sgdr(0.1, n_cycles, cycle_len=1, cycle_mult=cycle_mult)


def test_sgdr_schedule_of_many_short_cycles_is_built_in_linear_time():
    with deadline(3):
        f, n_epochs = sched.sgdr(0.1, 200_000, cycle_len=1, cycle_mult=1)
    assert n_epochs == 200_000 and f.cycle_ends[:3] == [1, 2, 3] and f.cycle_ends[-1] == 200_000


def test_show_aug_refuses_a_picture_of_a_billion_variations(capsys):
    with deadline(5):
        code = main(["show-aug", "--n", "1000000000"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--n: must be an integer from 1 to 64" in err
