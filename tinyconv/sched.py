"""Learning-rate and momentum schedules: pure functions of training progress.

A schedule is a function `f(pos) -> value` of the fraction of training done, `pos` in [0, 1]. The
Learner's ParamScheduler callback sets `group["lr"] = f(i / total_iters)` before batch `i`, so the
same function drives a 3-batch test and a 30-epoch run, and can be plotted before training.
(`cyclic` is the one exception: Smith's cyclical LR is defined per iteration, so it is `f(t)`.)

Everything is built from five primitives (fastai's names and formulas, REFERENCE.md):

    sched_lin(s, e, pos) = s + pos * (e - s)
    sched_cos(s, e, pos) = s + (1 + cos(pi * (1 - pos))) * (e - s) / 2
    sched_no(s, e, pos)  = s
    sched_exp(s, e, pos) = s * (e / s) ** pos
    sched_poly(s, e, pos, power) = s + (e - s) * pos ** power

`SchedLin(s, e)` etc. bind the endpoints and give back `f(pos)`; `combine_scheds` glues pieces
together. The endpoints may be NumPy arrays (one value per parameter group): the formulas broadcast.

The training policies:
    one_cycle   warm up from lr_max/div to lr_max, anneal to lr_max/div_final (Smith; fastai v2)
    sgdr        cosine annealing with warm restarts (Loshchilov & Hutter), cycles x cycle_mult
    cyclic      triangular / triangular2 / exp_range cycles per iteration (Smith; torch CyclicLR)
    flat_cos    flat, then cosine annealing (fastai's fit_flat_cos)
    airbench    linear warm-up then linear decay (Jordan's CIFAR-10 speed runs)
    lr_find_ramp  the LR finder's exponential (or linear) sweep

and the pieces around them: momentum schedules that run inverse to the LR, the LR finder's
suggestions (valley, slide, minimum, steep) as functions of the recorded (lrs, losses), and
`spread_lr` for discriminative learning rates over layer groups.
"""

import bisect
import math
from collections import namedtuple
from functools import partial

import numpy as np

__all__ = [
    "sched_lin", "sched_cos", "sched_no", "sched_exp", "sched_poly",
    "SchedLin", "SchedCos", "SchedNo", "SchedExp", "SchedPoly",
    "combine_scheds", "combined_cos",
    "one_cycle", "one_cycle_mom", "SGDR", "sgdr", "cyclic", "cyclic_mom", "flat_cos", "airbench",
    "lr_find_ramp", "lr_find_window", "valley", "slide", "minimum", "steep",
    "SuggestedLRs", "suggest_lrs", "loss_at",
    "even_mults", "spread_lr",
    "POLICIES", "policy", "policy_scheds", "sgdr_cycles",
]


# --- primitives -----------------------------------------------------------------------------------

def sched_lin(start, end, pos):
    """Linear from `start` (pos=0) to `end` (pos=1)."""
    return start + pos * (end - start)


def sched_cos(start, end, pos):
    """Cosine from `start` (pos=0) to `end` (pos=1): flat at both ends, steepest in the middle."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def sched_no(start, end, pos):
    """Constant `start` (`end` is ignored; kept so every primitive has the same signature)."""
    return start


def sched_exp(start, end, pos):
    """Exponential (linear in log space) from `start` to `end`; both must be positive."""
    if np.any(np.asarray(start) <= 0) or np.any(np.asarray(end) <= 0):
        raise ValueError(f"sched_exp: start and end must be > 0 (got start={start}, end={end})")
    return start * (end / start) ** pos


def sched_poly(start, end, pos, power):
    """Polynomial from `start` to `end`: start + (end - start) * pos**power (fastai v2)."""
    return start + (end - start) * pos ** power


def SchedLin(start, end):
    """`sched_lin` with its endpoints bound: returns f(pos)."""
    return partial(sched_lin, start, end)


def SchedCos(start, end):
    """`sched_cos` with its endpoints bound: returns f(pos)."""
    return partial(sched_cos, start, end)


def SchedNo(start, end=None):
    """`sched_no` with its endpoints bound: returns f(pos) = start."""
    return partial(sched_no, start, end)


def SchedExp(start, end):
    """`sched_exp` with its endpoints bound: returns f(pos)."""
    sched_exp(start, end, 0.0)  # validate now, not at the first batch
    return partial(sched_exp, start, end)


def SchedPoly(start, end, power):
    """`sched_poly` with its endpoints and power bound: returns f(pos)."""
    return partial(sched_poly, start, end, power=power)


def combine_scheds(pcts, scheds):
    """Glue schedules end to end: piece k runs over a fraction `pcts[k]` of training.

    Each piece sees its own local position in [0, 1]. `pcts` are >= 0 and sum to 1; a piece of
    width 0 is never used. Returns f(pos).
    """
    pcts, scheds = list(pcts), list(scheds)
    if len(pcts) != len(scheds) or not pcts:
        raise ValueError(f"combine_scheds: {len(pcts)} pcts for {len(scheds)} schedules "
                         "(need one fraction per schedule, at least one)")
    if any(p < 0 for p in pcts):
        raise ValueError(f"combine_scheds: fractions must be >= 0, got {pcts}")
    # isclose, not ==: [0.1, 0.2, 0.7] sums to 1.0000000000000002 in floating point
    if not math.isclose(sum(pcts), 1.0, abs_tol=1e-9):
        raise ValueError(f"combine_scheds: fractions must sum to 1, got {pcts} (sum {sum(pcts)})")
    starts = [sum(pcts[:k]) for k in range(len(pcts))]
    used = [k for k, p in enumerate(pcts) if p > 0]

    def combined(pos):
        # the last non-empty piece that starts at or before pos (the first one for pos < 0)
        k = next((k for k in reversed(used) if pos >= starts[k]), used[0])
        return scheds[k]((pos - starts[k]) / pcts[k])

    return combined


def combined_cos(pct, start, middle, end):
    """Cosine from `start` to `middle` over the first `pct` of training, then to `end`."""
    return combine_scheds([pct, 1 - pct], [SchedCos(start, middle), SchedCos(middle, end)])


# --- one-cycle ------------------------------------------------------------------------------------

def _torch_one_cycle(start, peak, end, pct_start, total_steps):
    """PyTorch OneCycleLR's two cosine phases as f(pos), pos = step / total_steps.

    torch reaches `peak` exactly at step pct_start * total_steps - 1 and `end` at the last step,
    total_steps - 1 (fastai reaches them at pos = pct_start and pos = 1).
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"one_cycle: convention='torch' needs total_steps, a positive int "
                         f"(got {total_steps!r})")
    peak_step = float(pct_start * total_steps) - 1
    last_step = total_steps - 1

    def f(pos):
        step = min(max(pos, 0.0), 1.0) * total_steps
        step = min(step, last_step)   # f(1) is the final value, as in the fastai convention
        if step <= peak_step and peak_step > 0:
            return sched_cos(start, peak, step / peak_step)
        # phase 2 starts where phase 1 ends, even when that is before step 0 (as torch)
        if last_step <= peak_step:    # one step in total: nothing left to anneal
            return peak
        return sched_cos(peak, end, (step - peak_step) / (last_step - peak_step))

    return f


def _check_pct_start(name, pct_start):
    if not 0.0 <= pct_start <= 1.0:
        raise ValueError(f"{name}: pct_start must be in [0, 1], got {pct_start}")


def one_cycle(lr_max, pct_start=0.25, div=25.0, div_final=1e5, *, convention="fastai",
              total_steps=None):
    """One-cycle learning rate: lr_max/div -> lr_max -> lr_max/div_final, two cosines. f(pos).

    convention="fastai" (default, fastai v2's fit_one_cycle): the peak is at pos = pct_start and
    the end at pos = 1, i.e. `combined_cos(pct_start, lr_max/div, lr_max, lr_max/div_final)`.

    convention="torch" (torch.optim.lr_scheduler.OneCycleLR, cos annealing, two phases): needs
    `total_steps`; the peak is at step pct_start*total_steps - 1 and the end at step
    total_steps - 1. `div_final` keeps its meaning here (final lr = lr_max / div_final), so torch's
    defaults (pct_start 0.3, div_factor 25, final_div_factor 1e4) are
    `one_cycle(lr_max, pct_start=0.3, div=25, div_final=25 * 1e4, convention="torch",
    total_steps=n)`, evaluated at pos = step / n.
    """
    _check_pct_start("one_cycle", pct_start)
    start, end = lr_max / div, lr_max / div_final
    if convention == "fastai":
        return combined_cos(pct_start, start, lr_max, end)
    if convention == "torch":
        return _torch_one_cycle(start, lr_max, end, pct_start, total_steps)
    raise ValueError(f"one_cycle: convention must be 'fastai' or 'torch', got {convention!r}")


def one_cycle_mom(pct_start=0.25, moms=(0.95, 0.85, 0.95), *, convention="fastai",
                  total_steps=None):
    """Momentum for one-cycle, inverse to the lr: moms[0] -> moms[1] (at the lr peak) -> moms[2].

    Same shape and conventions as `one_cycle`; torch's defaults are max_momentum 0.95 and
    base_momentum 0.85, i.e. moms=(0.95, 0.85, 0.95). Returns f(pos).
    """
    _check_pct_start("one_cycle_mom", pct_start)
    if len(moms) != 3:
        raise ValueError(f"one_cycle_mom: moms must be (start, middle, end), got {moms}")
    if convention == "fastai":
        return combined_cos(pct_start, *moms)
    if convention == "torch":
        return _torch_one_cycle(*moms, pct_start, total_steps)
    raise ValueError(f"one_cycle_mom: convention must be 'fastai' or 'torch', got {convention!r}")


def flat_cos(lr, pct_start=0.75, div_final=1e5):
    """Flat at `lr` for `pct_start` of training, then cosine down to lr/div_final. f(pos).

    fastai's fit_flat_cos: `combined_cos(pct_start, lr, lr, lr / div_final)`.
    """
    _check_pct_start("flat_cos", pct_start)
    return combined_cos(pct_start, lr, lr, lr / div_final)


def airbench(lr, pct_start=0.23, start=0.2, end=0.07):
    """Linear from lr*start up to lr over `pct_start` of training, then linear down to lr*end.
    f(pos).

    airbench94's schedule (0.2 -> 1.0 over the first 23 % of the steps, then -> 0.07): a short
    warm-up lets batch norm and the large learning rate settle; the long linear decay does most
    of the work, as the end of a one-cycle does.
    """
    _check_pct_start("airbench", pct_start)
    return combine_scheds([pct_start, 1 - pct_start],
                          [SchedLin(lr * start, lr), SchedLin(lr, lr * end)])


# --- SGDR -----------------------------------------------------------------------------------------

SGDR_MAX_EPOCHS = 1_000_000   # far beyond any real run; bounds the cycle table SGDR builds


class SGDR:
    """Cosine annealing with warm restarts (Loshchilov & Hutter 2017) as f(pos) over the whole run.

    Cycle i lasts T_i = cycle_len * cycle_mult**i epochs; within it, with T_cur the fractional
    epochs since the last restart,
        lr = eta_min + (lr_max - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2.
    pos in [0, 1] maps to epochs as pos * n_epochs. `cycle_ends` lists the epoch at which each cycle
    ends (e.g. [1, 3, 7] for 3 cycles of 1 epoch, cycle_mult 2): the Learner snapshots there.

    warmup=True is fastai 0.7's variant: lr_max / 100 for the first 5 % of the first cycle.
    """

    def __init__(self, lr_max, n_cycles, cycle_len=1, cycle_mult=2, eta_min=0.0, warmup=False):
        for name, value, low in (("n_cycles", n_cycles, 1), ("cycle_len", cycle_len, 1),
                                 ("cycle_mult", cycle_mult, 1)):
            # whole epochs, so that each restart falls on an epoch boundary
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"sgdr: {name} must be an int >= {low}, got {value!r}")
        if np.any(np.asarray(eta_min) < 0) or np.any(np.asarray(lr_max) < np.asarray(eta_min)):
            raise ValueError(f"sgdr: need 0 <= eta_min <= lr_max (got eta_min={eta_min}, "
                             f"lr_max={lr_max})")
        self.lr_max, self.eta_min, self.warmup = lr_max, eta_min, warmup
        # cycle_len * (mult**n - 1) / (mult - 1) epochs in all; summing also covers mult == 1.
        # Every cycle lasts >= 1 epoch, so the cap bounds this loop whatever n_cycles says.
        self.cycle_lens, self.cycle_ends, total = [], [], 0
        for i in range(int(n_cycles)):
            self.cycle_lens.append(int(cycle_len) * int(cycle_mult) ** i)
            total += self.cycle_lens[-1]
            self.cycle_ends.append(total)
            if total > SGDR_MAX_EPOCHS:
                raise ValueError(f"sgdr: {n_cycles} cycles of cycle_len={cycle_len} x "
                                 f"cycle_mult={cycle_mult}**i epochs last more than "
                                 f"{SGDR_MAX_EPOCHS:,} epochs")
        self.cycle_starts = [0] + self.cycle_ends[:-1]
        self.n_epochs = self.cycle_ends[-1]

    def cycle(self, pos):
        """(cycle index, T_cur, T_i) at `pos`, T_cur and T_i in epochs."""
        t = pos * self.n_epochs
        # A restart is a jump from eta_min to lr_max: pos = i / total can land a hair below the
        # boundary in floating point, which would give eta_min instead of lr_max. Snap to it.
        i = bisect.bisect_right(self.cycle_ends, t + 1e-9 * self.n_epochs)
        i = min(i, len(self.cycle_lens) - 1)   # pos >= 1 stays at the end of the last cycle
        t_cur = min(max(t - self.cycle_starts[i], 0.0), self.cycle_lens[i])
        return i, t_cur, self.cycle_lens[i]

    def __call__(self, pos):
        i, t_cur, t_i = self.cycle(pos)
        if self.warmup and i == 0 and t_cur < 0.05 * t_i:
            return self.lr_max / 100
        cos_out = 1 + math.cos(math.pi * t_cur / t_i)
        return self.eta_min + (self.lr_max - self.eta_min) * cos_out / 2

    def is_cycle_end(self, epoch):
        """True if a cycle ends after `epoch` completed epochs (counting from 1)."""
        return epoch in self.cycle_ends

    def __repr__(self):
        return (f"SGDR(lr_max={self.lr_max}, cycle_lens={self.cycle_lens}, eta_min={self.eta_min}, "
                f"warmup={self.warmup})")


def sgdr(lr_max, n_cycles, cycle_len=1, cycle_mult=2, eta_min=0.0, warmup=False):
    """SGDR schedule and its length: returns (f(pos), n_epochs).

    n_epochs = cycle_len * (cycle_mult**n_cycles - 1) / (cycle_mult - 1), or cycle_len * n_cycles
    when cycle_mult == 1. f is an `SGDR`: f.cycle_ends gives the epochs that end a cycle.
    """
    f = SGDR(lr_max, n_cycles, cycle_len, cycle_mult, eta_min, warmup)
    return f, f.n_epochs


# --- cyclical learning rates ----------------------------------------------------------------------

_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def _cyclic_height(step_size, mode, gamma, step_size_down, name):
    """h(t) in [0, 1]: the fraction of the way from the base to the peak at iteration t."""
    if mode not in _CYCLIC_MODES:
        raise ValueError(f"{name}: mode must be one of {_CYCLIC_MODES}, got {mode!r}")
    up = float(step_size)
    down = up if step_size_down is None else float(step_size_down)
    if up <= 0 or down < 0:
        raise ValueError(f"{name}: step sizes must be positive (step_size={step_size}, "
                         f"step_size_down={step_size_down})")
    total, ratio = up + down, up / (up + down)

    def height(t):
        # torch CyclicLR's form, which also allows step_size_down != step_size; with equal
        # halves it is Smith's:  cycle = floor(1 + t/(2s)),  x = |t/s - 2*cycle + 1|,  1 - x
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        h = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if mode == "triangular2":
            h *= 1 / 2.0 ** (cycle - 1)     # halve the amplitude every cycle
        elif mode == "exp_range":
            h *= gamma ** t                 # decay the amplitude every iteration
        return h

    return height


def cyclic(base_lr, max_lr, step_size, mode="triangular", gamma=1.0, *, step_size_down=None):
    """Cyclical learning rate (Smith 2015; torch CyclicLR) as f(iteration).

    lr = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale, rising for `step_size` iterations
    and falling for `step_size_down` (default: the same); scale is 1 (triangular),
    1 / 2**(cycle - 1) (triangular2) or gamma**t (exp_range).
    """
    height = _cyclic_height(step_size, mode, gamma, step_size_down, "cyclic")
    return lambda t: base_lr + (max_lr - base_lr) * height(t)


def cyclic_mom(step_size, base_momentum=0.8, max_momentum=0.9, mode="triangular", gamma=1.0, *,
               step_size_down=None):
    """Cyclical momentum, inverse to `cyclic`: max_momentum at base_lr, base_momentum at max_lr.

    torch CyclicLR's cycle_momentum (defaults 0.8 / 0.9). Returns f(iteration).
    """
    height = _cyclic_height(step_size, mode, gamma, step_size_down, "cyclic_mom")
    return lambda t: max_momentum - (max_momentum - base_momentum) * height(t)


# --- LR finder ------------------------------------------------------------------------------------

def lr_find_ramp(start_lr=1e-7, end_lr=10.0, linear=False):
    """The LR finder's sweep as f(pos), pos = i / num_it for batch i.

    Exponential: start_lr * (end_lr / start_lr) ** pos; linear: start_lr + pos * (end_lr -
    start_lr).
    start_lr / end_lr may be arrays (one per parameter group) to keep the groups' ratios.
    """
    return SchedLin(start_lr, end_lr) if linear else SchedExp(start_lr, end_lr)


def lr_find_window(lrs, losses, num_it=None):
    """The points the suggestions look at: after the first 10 % and before the last 5.

    `num_it` is the sweep length that was asked for (fastai skips num_it // 10 points even when
    the sweep stopped early); default len(lrs). The window is cut at the first non-finite loss.
    Returns (lrs, losses) as float64 arrays.
    """
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape or lrs.ndim != 1:
        raise ValueError(f"lr_find: lrs {lrs.shape} and losses {losses.shape} must be 1-D and "
                         "of the same length")
    num_it = len(lrs) if num_it is None else num_it
    lrs, losses = lrs[num_it // 10:-5], losses[num_it // 10:-5]
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        lrs, losses = lrs[:bad[0]], losses[:bad[0]]
    return lrs, losses


def _check_curve(name, lrs, losses, least=2):
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape or lrs.ndim != 1 or len(lrs) < least:
        raise ValueError(f"{name}: need two 1-D arrays of the same length >= {least}, got lrs "
                         f"{lrs.shape} and losses {losses.shape} (sweep too short or diverged "
                         "at once?)")
    return lrs, losses


def valley(lrs, losses):
    """fastai's 'valley': the lr two thirds of the way down the longest valley of the loss curve.

    The valley is the longest strictly decreasing subsequence of `losses` (O(n^2) dynamic
    programming), from max_start to max_end; with s = (max_end - max_start) / 3 the suggestion is
    lrs[max_start + int(s) + int(s / 2)]. The loop is fastai v2's, line for line, so the indices
    (including max_start = max_end - length, one before the first point) match it exactly.
    """
    lrs, losses = _check_curve("valley", lrs, losses, least=1)
    n = len(losses)
    lds = [1] * n
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max(max_start + int(sections) + int(sections / 2), 0)  # -1 only for 1-2 point curves
    return float(lrs[idx])


def slide(lrs, losses, lr_diff=15, thresh=0.005, adjust_value=1.0):
    """fastai's 'slide' rule: slide an interval of `lr_diff` points left from the end of the curve
    until the loss gradient (np.gradient, per point) at its two ends differs by <= `thresh`.

    Returns adjust_value * lrs[l] for the last left end l at which they still differed by more
    (fastai v2's loop; lrs[-1 - lr_diff] if they never did). `lr_diff` is shortened to fit a
    curve of fewer than lr_diff + 1 points.
    """
    lrs, losses = _check_curve("slide", lrs, losses)
    grad = np.gradient(losses)
    n = len(losses)
    r = -1
    l = r - min(lr_diff, n - 1)
    local_min_lr = lrs[l]
    while l >= -n and abs(grad[r] - grad[l]) > thresh:
        local_min_lr = lrs[l]
        r -= 1
        l -= 1
    return float(local_min_lr) * adjust_value


def minimum(lrs, losses):
    """One tenth of the lr with the lowest loss: lrs[argmin(losses)] / 10."""
    lrs, losses = _check_curve("minimum", lrs, losses, least=1)
    return float(lrs[np.argmin(losses)]) / 10


def steep(lrs, losses):
    """The lr where the loss falls fastest: argmin of d(loss)/d(log lr), forward differences."""
    lrs, losses = _check_curve("steep", lrs, losses)
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[np.argmin(slopes)])


SuggestedLRs = namedtuple("SuggestedLRs", ["valley", "slide", "minimum", "steep"])


def suggest_lrs(lrs, losses, num_it=None):
    """All four suggestions on the window `lr_find_window` selects: a SuggestedLRs of floats.

    `lrs`, `losses` are the full recorded sweep (smoothed losses), `num_it` the sweep length asked.
    """
    lrs, losses = lr_find_window(lrs, losses, num_it)
    return SuggestedLRs(valley(lrs, losses), slide(lrs, losses), minimum(lrs, losses),
                        steep(lrs, losses))


def loss_at(lrs, losses, lr):
    """The loss curve at `lr`, interpolated in log lr (where to draw a suggestion's marker)."""
    lrs, losses = _check_curve("loss_at", lrs, losses, least=1)
    return float(np.interp(np.log10(lr), np.log10(lrs), losses))


# --- discriminative learning rates ----------------------------------------------------------------

def even_mults(start, stop, n):
    """n values from `start` to `stop`, evenly spaced in log space (fastai's even_mults)."""
    if n == 1:
        return [float(stop)]
    step = (stop / start) ** (1 / (n - 1))
    return [float(start * step ** i) for i in range(n)]


def spread_lr(lr, n_groups):
    """One learning rate per layer group, as fastai reads `lr` (earliest group first).

    - a number: the same lr for every group;
    - a list/tuple/array of n_groups numbers: taken as is;
    - slice(lo, hi): geometric from lo (first group) to hi (last group);
    - slice(hi): hi / 10 for every group but the last, which gets hi.
    Returns a list of n_groups floats.
    """
    if n_groups < 1:
        raise ValueError(f"spread_lr: need at least one parameter group, got {n_groups}")
    if isinstance(lr, slice):
        if lr.step is not None or lr.stop is None:
            raise ValueError(f"spread_lr: use slice(hi) or slice(lo, hi), got {lr}")
        if lr.start:
            if lr.start <= 0 or lr.stop <= 0:
                raise ValueError(f"spread_lr: slice bounds must be > 0, got {lr}")
            return even_mults(lr.start, lr.stop, n_groups)
        return [lr.stop / 10] * (n_groups - 1) + [float(lr.stop)]
    if np.ndim(lr) == 0:
        return [float(lr)] * n_groups
    lrs = [float(v) for v in np.asarray(lr).ravel()]
    if len(lrs) == 1:
        return lrs * n_groups
    if len(lrs) != n_groups:
        raise ValueError(f"spread_lr: got {len(lrs)} learning rates for {n_groups} parameter "
                         "groups (give one per group, a single number, or a slice)")
    return lrs


# --- training policies by name --------------------------------------------------------------------

POLICIES = ("one_cycle", "sgdr", "cyclic", "flat_cos", "constant", "airbench")


def _per_iteration(f, total_iters):
    """f(iteration) as f(pos), pos = i / total_iters (snapping i back to an integer)."""
    def g(pos):
        t = pos * total_iters
        return f(round(t) if abs(t - round(t)) < 1e-6 else t)
    return g


def policy(name: str, n_epoch: int = 1, n_iter: int = 100, **kwargs):
    """The schedules of a named training policy: ({"lr": f, ...}, n_epoch).

    Every f maps pos in [0, 1] to a value (a number, or an array with one value per group when the
    learning rates are). n_iter (batches per epoch) matters for `cyclic`, defined per iteration;
    `sgdr` decides n_epoch itself. kwargs are those of the Learner method fit_<name>:
        one_cycle   lr_max, pct_start=0.25, div=25, div_final=1e5, moms=(0.95, 0.85, 0.95)
        sgdr        lr_max, n_cycles, cycle_len=1, cycle_mult=2, eta_min=0, warmup=False
        cyclic      base_lr, max_lr, step_size, mode="triangular", gamma=1, cycle_momentum=True,
                    base_momentum=0.8, max_momentum=0.9
        flat_cos    lr, pct_start=0.75, div_final=1e5
        constant    lr
        airbench    lr, pct_start=0.23, start=0.2, end=0.07 (momentum left as it is)
    """
    if name == "one_cycle":
        pct_start = kwargs.get("pct_start", 0.25)
        return {"lr": one_cycle(kwargs["lr_max"], pct_start, kwargs.get("div", 25.0),
                                kwargs.get("div_final", 1e5)),
                "momentum": one_cycle_mom(pct_start, kwargs.get("moms",
                                                                (0.95, 0.85, 0.95)))}, n_epoch
    if name == "sgdr":
        f, n_epochs = sgdr(kwargs["lr_max"], kwargs["n_cycles"], kwargs.get("cycle_len", 1),
                           kwargs.get("cycle_mult", 2), kwargs.get("eta_min", 0.0),
                           kwargs.get("warmup", False))
        return {"lr": f}, n_epochs
    if name == "cyclic":
        total = n_epoch * n_iter
        mode, gamma = kwargs.get("mode", "triangular"), kwargs.get("gamma", 1.0)
        f = cyclic(kwargs["base_lr"], kwargs["max_lr"], kwargs["step_size"], mode, gamma)
        scheds = {"lr": _per_iteration(f, total)}
        if kwargs.get("cycle_momentum", True):
            m = cyclic_mom(kwargs["step_size"], kwargs.get("base_momentum", 0.8),
                           kwargs.get("max_momentum", 0.9), mode, gamma)
            scheds["momentum"] = _per_iteration(m, total)
        return scheds, n_epoch
    if name == "flat_cos":
        return {"lr": flat_cos(kwargs["lr"], kwargs.get("pct_start", 0.75),
                               kwargs.get("div_final", 1e5))}, n_epoch
    if name == "airbench":
        return {"lr": airbench(kwargs["lr"], kwargs.get("pct_start", 0.23),
                               kwargs.get("start", 0.2), kwargs.get("end", 0.07))}, n_epoch
    if name == "constant":
        return {"lr": SchedNo(kwargs["lr"])}, n_epoch
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")


policy_scheds = policy      # the older name (learner.policy_scheds, plot, the CLI)


def sgdr_cycles(epochs: int, cycle_len: int, cycle_mult: int) -> int:
    """The most SGDR cycles that fit in `epochs` (at least one).

    Raises ValueError when cycle_len or cycle_mult is below 1 (a cycle that never fills the
    budget)."""
    if cycle_len < 1 or cycle_mult < 1:   # a cycle of 0 epochs would never fill the budget
        raise ValueError(f"sgdr: cycle_len and cycle_mult must be >= 1, got {cycle_len} "
                         f"and {cycle_mult}")
    if cycle_mult == 1:                   # closed form: a loop of `epochs` steps could be endless
        return max(epochs // cycle_len, 1)
    n, total = 0, 0                       # cycles grow geometrically: about log2(epochs) steps
    while total + cycle_len * cycle_mult ** n <= epochs:
        total += cycle_len * cycle_mult ** n
        n += 1
    return max(n, 1)
