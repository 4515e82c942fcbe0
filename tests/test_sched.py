"""Schedules: REFERENCE.md golden tables, torch's schedulers as oracles, LR-finder suggestions."""

import math

import numpy as np
import pytest

from tinyconv import sched as S

# --- primitives -----------------------------------------------------------------------------------

PRIMITIVES = [  # (function, start, end, pos, expected) -- formulas of REFERENCE.md by hand
    (S.sched_lin, 2.0, 4.0, 0.25, 2.5),
    (S.sched_cos, 2.0, 4.0, 0.5, 3.0),
    (S.sched_cos, 2.0, 4.0, 0.25, 2.0 + (1 - math.sqrt(0.5))),
    (S.sched_no, 2.0, 4.0, 0.7, 2.0),
    (S.sched_exp, 1e-4, 1.0, 0.5, 1e-2),
    (S.sched_exp, 1e-7, 10.0, 0.25, 1e-5),
]


@pytest.mark.parametrize("f, start, end, pos, expected", PRIMITIVES)
def test_primitive_matches_formula(f, start, end, pos, expected):
    assert f(start, end, pos) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("f", [S.sched_lin, S.sched_cos, S.sched_exp])
def test_primitives_hit_both_endpoints(f):
    assert f(0.3, 7.0, 0.0) == pytest.approx(0.3, rel=1e-12)
    assert f(0.3, 7.0, 1.0) == pytest.approx(7.0, rel=1e-12)


def test_sched_poly_is_fastai_v2_form():
    # start + (end - start) * pos ** power
    assert S.sched_poly(1.0, 0.0, 0.5, 2) == pytest.approx(0.75)
    assert S.SchedPoly(0.0, 8.0, 3)(0.5) == pytest.approx(1.0)


def test_bound_constructors_equal_the_pure_functions():
    for pos in (0.0, 0.3, 1.0):
        assert S.SchedLin(1, 3)(pos) == S.sched_lin(1, 3, pos)
        assert S.SchedCos(1, 3)(pos) == S.sched_cos(1, 3, pos)
        assert S.SchedNo(1, 3)(pos) == 1
        assert S.SchedExp(1, 3)(pos) == S.sched_exp(1, 3, pos)


def test_primitives_broadcast_over_group_arrays():
    lrs = S.sched_cos(np.array([0.01, 0.1]), np.array([0.0, 0.0]), 0.5)
    np.testing.assert_allclose(lrs, [0.005, 0.05])


def test_sched_exp_rejects_non_positive_endpoints():
    with pytest.raises(ValueError, match="sched_exp"):
        S.sched_exp(0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="sched_exp"):
        S.SchedExp(1.0, -1.0)


# --- combine_scheds -------------------------------------------------------------------------------

def test_combine_scheds_golden():
    f = S.combine_scheds([0.3, 0.2, 0.5], [S.SchedLin(0, 1), S.SchedNo(1, 1), S.SchedCos(1, 0)])
    got = [f(p) for p in [0, .15, .3, .4, .5, .7, 1]]
    np.testing.assert_allclose(got, [0, .5, 1, 1, 1, 0.65451, 0], atol=5e-6)


def test_combined_cos_golden():
    f = S.combined_cos(0.25, 0.5, 1.0, 0.0)
    got = [f(p) for p in [0, .1, .25, .5, 1]]
    np.testing.assert_allclose(got, [0.5, 0.67275, 1.0, 0.75, 0.0], atol=5e-6)


def test_combine_scheds_skips_zero_width_pieces():
    f = S.combine_scheds([0.0, 1.0], [S.SchedNo(9, 9), S.SchedLin(1, 2)])
    assert f(0.0) == 1 and f(1.0) == 2
    g = S.combine_scheds([1.0, 0.0], [S.SchedLin(1, 2), S.SchedNo(9, 9)])
    assert g(1.0) == 2


def test_combine_scheds_accepts_float_rounding_in_the_sum():
    f = S.combine_scheds([0.1, 0.2, 0.7], [S.SchedNo(1)] * 3)   # sums to 1.0000000000000002
    assert f(0.5) == 1


@pytest.mark.parametrize("pcts, n, match", [([0.5, 0.4], 2, "sum to 1"),
                                            ([1.5, -0.5], 2, ">= 0"),
                                            ([0.5, 0.5], 3, "3 schedules")])
def test_combine_scheds_rejects_bad_fractions(pcts, n, match):
    with pytest.raises(ValueError, match=match):
        S.combine_scheds(pcts, [S.SchedNo(1)] * n)


# --- one-cycle and flat-cos -----------------------------------------------------------------------

def test_one_cycle_fastai_golden():
    # combined_cos(0.25, 1/25, 1, 1/1e5): cosine midpoints at pos 0.125 and 0.625
    f = S.one_cycle(1.0)
    got = [f(p) for p in [0, .125, .25, .625, 1]]
    np.testing.assert_allclose(got, [0.04, 0.52, 1.0, (1 + 1e-5) / 2, 1e-5], rtol=1e-9)


def test_one_cycle_momentum_is_inverse():
    lr, mom = S.one_cycle(0.1, pct_start=0.3), S.one_cycle_mom(pct_start=0.3)
    assert mom(0) == pytest.approx(0.95) and mom(0.3) == pytest.approx(0.85)
    assert mom(1) == pytest.approx(0.95)
    pos = np.linspace(0, 1, 41)
    # where the lr rises the momentum falls, and the other way round
    lr_steps, mom_steps = np.diff([lr(p) for p in pos]), np.diff([mom(p) for p in pos])
    assert np.all(np.sign(lr_steps) == -np.sign(mom_steps))


TORCH_ONE_CYCLE = [0.004, 0.052, 0.1, 0.0950485, 0.0811746, 0.0611262, 0.0388742, 0.0188258,
                   0.00495194, 4e-07]


def test_one_cycle_torch_convention_golden():
    f = S.one_cycle(0.1, pct_start=0.3, div_final=25 * 1e4, convention="torch", total_steps=10)
    # the table has 6 significant digits
    assert [float(f"{f(i / 10):.6g}") for i in range(10)] == TORCH_ONE_CYCLE
    assert f(1.0) == pytest.approx(4e-7)


def test_one_cycle_rejects_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        S.one_cycle(0.1, convention="torch")
    with pytest.raises(ValueError, match="convention"):
        S.one_cycle(0.1, convention="keras")
    with pytest.raises(ValueError, match="pct_start"):
        S.one_cycle(0.1, pct_start=1.5)


def test_flat_cos_is_flat_then_cosine():
    f = S.flat_cos(0.2)
    assert [f(p) for p in (0, 0.5, 0.75)] == [0.2, 0.2, 0.2]
    assert f(0.875) == pytest.approx((0.2 + 0.2e-5) / 2)
    assert f(1.0) == pytest.approx(0.2e-5)


# --- SGDR -----------------------------------------------------------------------------------------

TORCH_WARM_RESTARTS = [0.5, 0.5, 0.25, 0.5, 0.42677669529663687, 0.25, 0.07322330470336313, 0.5,
                       0.4809698831278217]


def test_sgdr_golden_matches_torch_warm_restarts_table():
    f, n_epochs = S.sgdr(0.5, 4, cycle_len=1, cycle_mult=2)
    assert n_epochs == 15
    np.testing.assert_allclose([f(e / n_epochs) for e in range(9)], TORCH_WARM_RESTARTS,
                               rtol=1e-12)


def test_sgdr_three_cycles_run_seven_epochs_with_restarts_after_1_and_3():
    f, n_epochs = S.sgdr(1.0, 3, cycle_len=1)
    assert n_epochs == 7 and f.cycle_ends == [1, 3, 7]
    assert [f.is_cycle_end(e) for e in range(1, 8)] == [True, False, True, False, False, False,
                                                          True]
    # just before each restart the lr is near 0, at the restart it is back at lr_max
    for end in (1, 3):
        assert f(end / 7 - 1e-6) < 1e-6 and f(end / 7) == 1.0
    assert f(1.0) == pytest.approx(0.0, abs=1e-15)


def test_sgdr_restart_survives_float_rounding_of_pos():
    f, n_epochs = S.sgdr(1.0, 3, cycle_len=1)
    nb = 7   # batches per epoch: pos = i / (7 * 7) lands just below 3/7 for i = 21
    assert f(21 / (n_epochs * nb)) == 1.0


def test_sgdr_cycle_mult_1_and_eta_min():
    f, n_epochs = S.sgdr(0.4, 3, cycle_len=2, cycle_mult=1, eta_min=0.1)
    assert n_epochs == 6 and f.cycle_ends == [2, 4, 6]
    # halfway through a 2-epoch cycle the cosine is at the midpoint of [eta_min, lr_max]
    for e in (1, 3, 5):
        assert f(e / 6) == pytest.approx(0.25)
    assert f(2 / 6) == 0.4 and f(1.0) == pytest.approx(0.1)


def test_sgdr_fastai_07_warmup():
    f, n_epochs = S.sgdr(1.0, 2, cycle_len=2, warmup=True)  # cycles of 2 and 4 epochs
    warm_end = 0.05 * 2 / n_epochs
    assert f(0.0) == 0.01 and f(warm_end * 0.99) == 0.01
    # after the warm-up the cosine resumes where it would be, not from the top
    t = 0.06 * 2
    assert f(t / n_epochs) == pytest.approx((1 + math.cos(math.pi * t / 2)) / 2)
    assert f(2 / n_epochs) == 1.0          # no warm-up in the second cycle


@pytest.mark.parametrize("kwargs", [dict(n_cycles=0), dict(cycle_len=0.5), dict(cycle_mult=0),
                                    dict(eta_min=2.0)])
def test_sgdr_rejects_bad_arguments(kwargs):
    args = dict(lr_max=1.0, n_cycles=2) | kwargs
    with pytest.raises(ValueError, match="sgdr"):
        S.sgdr(**args)


# --- cyclical LR ----------------------------------------------------------------------------------

def test_cyclic_triangular_golden():
    f = S.cyclic(0.01, 0.1, 4)
    got = [f(t) for t in range(9)]
    np.testing.assert_allclose(got, [0.01, 0.0325, 0.055, 0.0775, 0.1, 0.0775, 0.055, 0.0325, 0.01],
                               rtol=1e-12)


def test_cyclic_triangular2_second_cycle_golden():
    f = S.cyclic(0.01, 0.1, 4, mode="triangular2")
    np.testing.assert_allclose([f(t) for t in range(8, 13)],
                               [0.01, 0.02125, 0.0325, 0.04375, 0.055], rtol=1e-12)


def test_cyclic_exp_range_golden():
    f = S.cyclic(0.01, 0.1, 4, mode="exp_range", gamma=0.9)
    np.testing.assert_allclose([f(t) for t in range(9)],
                               [0.01, 0.03025, 0.04645, 0.059208, 0.069049, 0.049858, 0.033915,
                                0.020762, 0.01], atol=5e-7)


def test_cyclic_momentum_runs_inverse():
    mom = S.cyclic_mom(4)
    assert [mom(t) for t in (0, 4, 8)] == pytest.approx([0.9, 0.8, 0.9])
    assert mom(2) == pytest.approx(0.85)


def test_cyclic_rejects_bad_mode_and_step():
    with pytest.raises(ValueError, match="mode"):
        S.cyclic(0.01, 0.1, 4, mode="sawtooth")
    with pytest.raises(ValueError, match="step"):
        S.cyclic(0.01, 0.1, 0)


# --- torch schedulers as oracles ------------------------------------------------------------------

def _torch_opt(torch, momentum=0.9):
    p = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([p], lr=0.1, momentum=momentum)


def _torch_trace(torch, opt, scheduler, n):
    """lr and momentum in force for each of n steps."""
    lrs, moms = [], []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        scheduler.step()
    return lrs, moms


@pytest.mark.parametrize("mode, gamma, down", [("triangular", 1.0, None),
                                               ("triangular2", 1.0, None),
                                               ("exp_range", 0.97, None),
                                               ("triangular", 1.0, 3),
                                               ("triangular2", 1.0, 7)])
def test_cyclic_matches_torch_cycliclr(mode, gamma, down):
    torch = pytest.importorskip("torch")
    opt = _torch_opt(torch)
    sch = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=5,
                                            step_size_down=down, mode=mode, gamma=gamma)
    lrs, moms = _torch_trace(torch, opt, sch, 40)
    f = S.cyclic(0.01, 0.1, 5, mode=mode, gamma=gamma, step_size_down=down)
    m = S.cyclic_mom(5, mode=mode, gamma=gamma, step_size_down=down)
    np.testing.assert_allclose([f(t) for t in range(40)], lrs, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([m(t) for t in range(40)], moms, rtol=1e-12)


@pytest.mark.parametrize("t_mult, eta_min", [(2, 0.0), (1, 0.01), (3, 0.05)])
def test_sgdr_matches_torch_warm_restarts_per_batch(t_mult, eta_min):
    torch = pytest.importorskip("torch")
    opt = _torch_opt(torch)
    sch = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=t_mult,
                                                               eta_min=eta_min)
    f, n_epochs = S.sgdr(0.1, 3, cycle_len=2, cycle_mult=t_mult, eta_min=eta_min)
    nb = 4   # batches per epoch; torch is stepped with fractional epochs
    for i in range(n_epochs * nb):
        sch.step(i / nb)
        assert f(i / (n_epochs * nb)) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), i


@pytest.mark.parametrize("total, pct", [(10, 0.3), (37, 0.3), (100, 0.25), (7, 0.5), (3, 0.3),
                                        (2, 0.3)])
def test_one_cycle_torch_convention_matches_onecyclelr(total, pct):
    torch = pytest.importorskip("torch")
    opt = _torch_opt(torch)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=pct)
    lrs, moms = _torch_trace(torch, opt, sch, total)
    f = S.one_cycle(0.1, pct_start=pct, div_final=25 * 1e4, convention="torch",
                    total_steps=total)
    m = S.one_cycle_mom(pct_start=pct, convention="torch", total_steps=total)
    np.testing.assert_allclose([f(i / total) for i in range(total)], lrs, rtol=1e-9)
    np.testing.assert_allclose([m(i / total) for i in range(total)], moms, rtol=1e-9)


# --- LR finder ramp and suggestions ---------------------------------------------------------------

def test_lr_find_ramp_exponential_and_linear():
    ramp = S.lr_find_ramp()
    assert [ramp(i / 100) for i in (0, 50, 100)] == pytest.approx([1e-7, 1e-3, 10.0], rel=1e-12)
    lin = S.lr_find_ramp(1e-7, 10.0, linear=True)
    assert lin(0.5) == pytest.approx(5.00000005)


def test_lr_find_ramp_keeps_group_ratios():
    ramp = S.lr_find_ramp(np.array([1e-8, 1e-7]), np.array([1.0, 10.0]))
    lrs = ramp(0.37)
    assert lrs[1] / lrs[0] == pytest.approx(10.0)


LRS50 = np.geomspace(1e-5, 1.0, 50)


def test_minimum_is_a_tenth_of_the_best_lr():
    losses = np.abs(np.arange(50) - 31.0)
    assert S.minimum(LRS50, losses) == pytest.approx(LRS50[31] / 10)


def test_steep_finds_the_largest_drop_per_log_lr():
    losses = np.full(50, 2.0)
    losses[20:] -= 0.1       # small drop after 19
    losses[35:] -= 0.5       # the steepest one: between 34 and 35
    assert S.steep(LRS50, losses) == LRS50[34]


def test_valley_two_thirds_down_the_longest_valley():
    # rising 0..9, strictly falling 10..39 (the valley, 30 points), rising again 40..49
    losses = np.concatenate([1.0 + 0.01 * np.arange(10), np.linspace(3.0, 0.1, 30),
                             0.2 + 0.1 * np.arange(10)])
    # max_end = 39, max_start = 39 - 30 = 9, s = 10: idx = 9 + 10 + 5 = 24
    assert S.valley(LRS50, losses) == LRS50[24]


def test_slide_stops_lr_diff_points_before_the_bend():
    # flat until 23, then a parabola: np.gradient is 0 up to 23, 0.01 at 24, 0.04 * (i - 24) after
    losses = np.where(np.arange(50) <= 24, 0.0, 0.02 * (np.arange(50) - 24.0) ** 2)
    # the interval (r, l = r - 15) slides left while |g[r] - g[l]| > 0.005; (24, 9) is the last
    # pair that differs, so the rule returns lrs[9]
    assert S.slide(LRS50, losses) == LRS50[9]


def test_slide_on_a_short_curve_does_not_index_out_of_range():
    assert S.slide(LRS50[:8], np.linspace(1, 0, 8) ** 2) in LRS50[:8]


def test_suggestions_use_the_window_and_stop_at_nan():
    lrs = np.geomspace(1e-7, 10, 100)
    losses = np.linspace(3.0, 1.0, 100)
    losses[2] = 0.0          # inside the first 10 %: ignored
    losses[97] = 0.0         # in the last 5: ignored
    losses[60] = np.nan      # everything from here on is dropped
    wl, wloss = S.lr_find_window(lrs, losses, num_it=100)
    np.testing.assert_array_equal(wl, lrs[10:60])
    sugg = S.suggest_lrs(lrs, losses, num_it=100)
    assert sugg.minimum == pytest.approx(lrs[59] / 10)
    assert set(sugg._fields) == {"valley", "slide", "minimum", "steep"}
    assert all(lrs[10] <= v <= lrs[59] for v in (sugg.valley, sugg.slide, sugg.steep))


def test_suggestions_reject_a_curve_too_short():
    with pytest.raises(ValueError, match="steep"):
        S.steep([1e-3], [1.0])


def test_loss_at_interpolates_in_log_lr():
    assert S.loss_at([1e-3, 1e-1], [2.0, 0.0], 1e-2) == pytest.approx(1.0)


# --- discriminative learning rates ----------------------------------------------------------------

@pytest.mark.parametrize("lr, n, expected", [
    (0.01, 3, [0.01, 0.01, 0.01]),
    ([0.1, 0.2, 0.3], 3, [0.1, 0.2, 0.3]),
    ([0.5], 2, [0.5, 0.5]),
    (slice(1e-4, 1e-2), 3, [1e-4, 1e-3, 1e-2]),
    (slice(1e-5, 1e-2), 4, [1e-5, 1e-4, 1e-3, 1e-2]),
    (slice(1e-2), 3, [1e-3, 1e-3, 1e-2]),
    (slice(1e-4, 1e-2), 1, [1e-2]),
    (slice(None, 1e-2), 1, [1e-2]),
])
def test_spread_lr_fastai_semantics(lr, n, expected):
    got = S.spread_lr(lr, n)
    assert len(got) == n and got == pytest.approx(expected, rel=1e-12)
    assert all(isinstance(v, float) for v in got)


@pytest.mark.parametrize("lr", [[0.1, 0.2], slice(1e-3, 1e-2, 2), slice(0.1, None)])
def test_spread_lr_rejects_mismatches(lr):
    with pytest.raises(ValueError, match="spread_lr"):
        S.spread_lr(lr, 3)


def test_sgdr_cycles_fit_the_epoch_budget_and_refuse_empty_cycles():
    from tinyconv.sched import sgdr_cycles
    assert sgdr_cycles(7, 1, 2) == 3 and sgdr_cycles(6, 1, 2) == 2
    assert sgdr_cycles(5, 1, 1) == 5 and sgdr_cycles(1, 2, 2) == 1
    assert sgdr_cycles(10 ** 12, 1, 2) == 39
    for bad in ((0, 2), (1, 0)):
        with pytest.raises(ValueError):
            sgdr_cycles(8, *bad)
