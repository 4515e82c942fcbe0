"""Optimizers: the Optimizer base (parameter groups) and SGD with PyTorch's exact semantics.

An optimizer holds `param_groups`, a list of dicts: "params" (a list of parameters: objects with
`.data`, an ndarray, and `.grad`, an ndarray like it or None) plus that group's hyper-parameters
("lr", "momentum", ...). Schedules change `group["lr"]` / `group["momentum"]` between steps;
discriminative learning rates are simply different values in different groups.

`step()` updates every `p.data` IN PLACE (the Module, the optimizer and any views all keep pointing
at the same array) and keeps its dtype. It runs on every parameter after every batch -- 6.5M
floats for resnet9 -- so it writes through `out=` into two reused work arrays instead of building
temporaries: each line below is one pass over memory.

Parameter kinds: a ParamKind names a subset of the parameters (all batch-norm biases, say) that
gets its own multipliers of the lr and the weight decay. The Learner splits each layer group into
one optimizer group per kind present (the rest of the layer group first); every group carries
"layer_group", "kind", "lr_mult" and "wd_mult", and `set_hyper` is how anything -- the Learner, a
schedule, the LR finder -- sets a hyper-parameter: one base value per LAYER group, times each
optimizer group's multiplier. airbench's BN biases (64x the lr, 1/64 the decay):

    learn = Learner(model, dls, param_kinds=[bn_bias_kind(lr_mult=64, wd_mult=1/64)])
"""

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Optimizer", "SGD", "required", "ParamKind", "bn_bias_kind", "kind_groups",
           "set_hyper", "layer_group_values", "n_layer_groups", "MULTIPLIERS"]


class _Required:
    """Marks a hyper-parameter without a default: it must come as an argument or in every group."""

    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _is_param(obj):
    return isinstance(getattr(obj, "data", None), np.ndarray)


class Optimizer:
    """Base class: parameter groups with defaults, zero_grad, state_dict, add_param_group.

    params: an iterable of parameters, or of dicts {"params": [...], "lr": ..., ...} (one per
    group); keys a group leaves out take the value in `defaults`. `state` maps id(param) to that
    parameter's state (e.g. its momentum buffer); the parameter objects themselves are kept in
    the groups. Subclasses implement `step()` and may check a group in `_check_group`.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        name = type(self).__name__
        if _is_param(params) or isinstance(params, (set, dict)):
            raise TypeError(f"{name}: params must be an ordered iterable (list, generator) of "
                            f"parameters or of dicts, got {type(params).__name__}")
        groups = list(params)
        if len(groups) == 0:
            raise ValueError(f"{name}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a group {"params": ..., hyper-parameters...}; missing keys come from the defaults.

        Useful to train more of a model as you go (e.g. after unfreezing).
        """
        name = type(self).__name__
        if not isinstance(group, dict):
            raise TypeError(f"{name}: a param group must be a dict, got {type(group).__name__}")
        params = group.get("params")
        if params is None:
            raise ValueError(f"{name}: a param group needs a 'params' entry (keys: {list(group)})")
        if isinstance(params, set):
            raise TypeError(f"{name}: the params of a group must be ordered, not a set")
        params = [params] if _is_param(params) else list(params)
        for i, p in enumerate(params):
            if not _is_param(p):
                raise TypeError(f"{name}: parameter {i} of group {len(self.param_groups)} is a "
                                f"{type(p).__name__}; expected an object with an ndarray .data")
            if not np.issubdtype(p.data.dtype, np.floating):
                raise TypeError(f"{name}: parameter {i} of group {len(self.param_groups)} has "
                                f"dtype {p.data.dtype} (shape {p.data.shape}); it must be float")
        new = {**group, "params": params}
        for key, default in self.defaults.items():
            if key not in new and default is required:
                raise ValueError(f"{name}: '{key}' is required: give it as an argument or in "
                                 "every parameter group")
            new.setdefault(key, default)
        self._check_group(new)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or seen & {id(p) for p in params}:
            raise ValueError(f"{name}: some parameters appear more than once (in this group or "
                             "in an earlier one); each parameter may be in one group only")
        self.param_groups.append(new)

    def _check_group(self, group):
        """Raise ValueError if the group's hyper-parameters are invalid (subclasses)."""

    def step(self):
        """Update every parameter that has a gradient (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__}.step")

    def zero_grad(self, set_to_none=True):
        """Forget the gradients: set them to None (default, as torch), or fill them with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.fill(0)

    # --- saving and restoring ---------------------------------------------------------------------

    def _indexed_params(self):
        """Parameters numbered 0, 1, ... across the groups in order (the state_dict's keys)."""
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self):
        """A snapshot {"state": {index: {name: array}}, "param_groups": [{..., "params": [i]}]}.

        Arrays are COPIES (so the snapshot does not move with later steps: restoring after an LR
        sweep is exact) and everything else is a plain int, float or bool -- it can be written to
        .npz + JSON, no pickle needed. Parameters are numbered across the groups in order.
        """
        index = {id(p): i for i, p in enumerate(self._indexed_params())}
        state = {index[pid]: {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
                              for k, v in s.items()}
                 for pid, s in self.state.items() if pid in index}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by `state_dict()` (arrays are copied in).

        The groups must have the same sizes, and each array the shape of its parameter. State
        keys may be ints or strings of ints (as JSON writes them).
        """
        name = type(self).__name__
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved_groups)} "
                             f"param groups, this optimizer has {len(self.param_groups)}")
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: param group {k} has "
                                 f"{len(saved['params'])} parameters in the saved state, "
                                 f"{len(group['params'])} here")
            for key in ("layer_group", "kind"):          # same sizes, different split: refuse
                if key in saved and key in group and saved[key] != group[key]:
                    raise ValueError(f"{name}.load_state_dict: param group {k} has {key} "
                                     f"{saved[key]!r} in the saved state, {group[key]!r} here "
                                     "(build the Learner with the same param_kinds)")
        params = self._indexed_params()
        state = {}
        for key, saved_state in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {i}, but there "
                                 f"are only {len(params)} parameters")
            p = params[i]
            state[id(p)] = {}
            for k, v in saved_state.items():
                if isinstance(v, np.ndarray):
                    if v.shape != p.data.shape:
                        raise ValueError(f"{name}.load_state_dict: '{k}' of parameter {i} has "
                                         f"shape {v.shape}, the parameter {p.data.shape}")
                    v = np.array(v, dtype=p.data.dtype, copy=True)
                state[id(p)][k] = v
        # only now that everything checked out: a failed load leaves the optimizer untouched
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k} ({len(group['params'])} parameters)")
            lines += [f"    {key}: {group[key]}" for key in sorted(group) if key != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly as torch.optim.SGD, per parameter:

        g = grad + weight_decay * p                          (L2, unless decoupled_wd)
        buf = g on the first step, else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf  if nesterov  else  buf       (only when momentum != 0)
        p = p - lr * g

    decoupled_wd=True is fastai's "true" weight decay instead of L2: p = p - lr * weight_decay * p
    before the step, and the gradient is left alone. Every hyper-parameter may differ per group.
    (This is PyTorch's form; the Sutskever / cs231n form v = mu*v - lr*g, p += v differs from it
    when the lr changes, as it does under every schedule.)
    """

    def __init__(self, params_or_groups, lr=required, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov=False, decoupled_wd=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, decoupled_wd=decoupled_wd)
        self._work = {}            # dtype -> two flat work arrays, reused by every step
        super().__init__(params_or_groups, defaults)

    def _check_group(self, group):
        # the same checks and messages as torch.optim.SGD, made for each group
        for key, label in (("lr", "learning rate"), ("momentum", "momentum value"),
                           ("weight_decay", "weight_decay value")):
            value = group[key]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"SGD: {key} must be a number, got {value!r} (a list or slice of "
                                "learning rates is spread over groups by the Learner)")
            if value < 0 or math.isnan(value):
                raise ValueError(f"Invalid {label}: {value}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                             f"(got momentum={group['momentum']}, dampening={group['dampening']})")

    def _work_arrays(self, p):
        """Two scratch arrays shaped like p, views into flat buffers grown to the largest param."""
        flat = self._work.get(p.dtype)
        if flat is None or flat[0].size < p.size:
            flat = (np.empty(p.size, p.dtype), np.empty(p.size, p.dtype))
            self._work[p.dtype] = flat
        return flat[0][:p.size].reshape(p.shape), flat[1][:p.size].reshape(p.shape)

    def step(self, closure=None):
        """One update of every parameter that has a gradient and is not frozen (weight decay
        included). Returns closure() if given."""
        loss = closure() if closure is not None else None
        for k, group in enumerate(self.param_groups):
            lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
            wd, decoupled = group["weight_decay"], group["decoupled_wd"]
            nesterov = group["nesterov"]
            for i, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None or getattr(param, "frozen", False):   # a stale grad: not used
                    continue
                p = param.data
                if grad.shape != p.shape:
                    raise ValueError(f"SGD.step: the gradient of parameter {i} in group {k} has "
                                     f"shape {grad.shape}, the parameter {p.shape}")
                self._update(p, grad, id(param), lr, mom, damp, wd, nesterov, decoupled)
        return loss

    def _update(self, p, grad, pid, lr, mom, damp, wd, nesterov, decoupled):
        """p -= lr * (direction), in place; `grad` is only read (it belongs to the user)."""
        w1, w2 = self._work_arrays(p)
        d = grad                                        # the direction, built up step by step
        if wd != 0 and decoupled:
            p *= 1 - lr * wd                            # p = p - lr * wd * p
        elif wd != 0:
            np.multiply(p, wd, out=w1)                  # g = grad + wd * p
            w1 += grad
            d = w1
        if mom != 0:
            state = self.state.setdefault(pid, {})
            buf = state.get("momentum_buffer")
            if buf is None:                             # first step: buf = g, no dampening
                buf = state["momentum_buffer"] = np.array(d, dtype=p.dtype, copy=True)
            else:                                       # buf = mom * buf + (1 - damp) * g
                buf *= mom
                if damp != 0:
                    np.multiply(d, 1 - damp, out=w2)
                    buf += w2
                else:
                    buf += d
            if nesterov:                                # g = g + mom * buf
                np.multiply(buf, mom, out=w2)
                w2 += d
                d = w2
            else:
                d = buf
        # p -= lr * d, the product going into a work array (d itself if d is one)
        out = d if (d is w1 or d is w2) else w1
        np.multiply(d, lr, out=out)
        p -= out


# --- parameter kinds: their own lr and weight-decay multipliers -----------------------------------

# the hyper-parameters a kind scales, and the group key of each multiplier
MULTIPLIERS = {"lr": "lr_mult", "weight_decay": "wd_mult"}


@dataclass(frozen=True)
class ParamKind:
    """A named subset of the parameters with its own multipliers of the lr and weight decay.

    select(name, param, module) -> bool is asked about every parameter: `name` its dotted name
    in the model ("2.norm1.bias"), `module` the module that holds it. A parameter belongs to the
    first kind that selects it. Its optimizer group gets lr = base lr * lr_mult and
    weight_decay = base weight decay * wd_mult, whatever sets the base (Learner.fit, a schedule,
    lr_find). With coupled (L2, torch) weight decay the step's decay is lr * weight_decay, so
    lr_mult=64, wd_mult=1/64 gives a 64x step and an unchanged decay (airbench's BN biases).
    """

    name: str
    select: Callable
    lr_mult: float = 1.0
    wd_mult: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or self.name == "default":
            raise ValueError(f"ParamKind: name must be a non-empty string other than 'default' "
                             f"(the kind of everything else), got {self.name!r}")
        if not callable(self.select):
            raise TypeError(f"ParamKind {self.name!r}: select must be a function "
                            f"(name, param, module) -> bool, got {type(self.select).__name__}")
        for key, low in (("lr_mult", "> 0"), ("wd_mult", ">= 0")):
            v = getattr(self, key)
            ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) \
                and math.isfinite(v) and (v > 0 if key == "lr_mult" else v >= 0)
            if not ok:
                raise ValueError(f"ParamKind {self.name!r}: {key} must be a finite number "
                                 f"{low}, got {v!r}")


def _is_bn_bias(name, param, module):
    # a batch norm is any module keeping running statistics (as the Learner's freezing reads it)
    return hasattr(module, "running_mean") and getattr(module, "bias", None) is param


def bn_bias_kind(lr_mult: float = 64.0, wd_mult: float = 1 / 64) -> ParamKind:
    """The biases of every batch-norm layer, as kind "bn_bias" (airbench: 64x lr, 1/64 decay)."""
    return ParamKind("bn_bias", _is_bn_bias, lr_mult, wd_mult)


def _owners(model) -> dict:
    """id(parameter) -> (dotted name, the module holding it), first name as named_parameters."""
    owners = {}
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if _is_param(value):
                owners.setdefault(id(value), (f"{prefix}.{attr}" if prefix else attr, module))
    return owners


def kind_groups(model, layer_params, kinds=()) -> list:
    """Optimizer groups: each layer group split by kind, its "default" part first.

    layer_params: one list of parameters per layer group (all of them `model`'s). Returns dicts
    {"params", "layer_group": k, "kind", "lr_mult", "wd_mult"}; a kind's group appears only where
    the kind has parameters (the default group always, even if empty, so every layer group has
    one). A kind that selects nothing in the whole model is an error (a typo in select, usually).
    """
    kinds = list(kinds or ())
    names = [kind.name for kind in kinds]
    if len(set(names)) != len(names):
        raise ValueError(f"param_kinds: the kind names must differ, got {names}")
    owners = _owners(model) if kinds else {}
    groups, used = [], set()
    for k, params in enumerate(layer_params):
        parts = {kind.name: [] for kind in kinds}
        rest = []
        for p in params:
            name, module = owners.get(id(p), ("?", None))
            kind = next((kd for kd in kinds if kd.select(name, p, module)), None)
            (rest if kind is None else parts[kind.name]).append(p)
        groups.append({"params": rest, "layer_group": k, "kind": "default",
                       "lr_mult": 1.0, "wd_mult": 1.0})
        for kind in kinds:
            if parts[kind.name]:
                used.add(kind.name)
                groups.append({"params": parts[kind.name], "layer_group": k, "kind": kind.name,
                               "lr_mult": float(kind.lr_mult), "wd_mult": float(kind.wd_mult)})
    unused = [n for n in names if n not in used]
    if unused:
        raise ValueError(f"param_kinds: {unused} select no parameter of the "
                         f"{type(model).__name__}")
    return groups


def _layer_group(group, index):
    # an optimizer built by hand has no "layer_group": each of its groups is its own layer group
    return group.get("layer_group", index)


def n_layer_groups(param_groups) -> int:
    """How many layer groups the optimizer groups come from."""
    return 1 + max(_layer_group(g, i) for i, g in enumerate(param_groups))


def set_hyper(param_groups, name: str, values) -> None:
    """Set hyper-parameter `name` from one base value per layer group: every optimizer group gets
    values[its layer group] * its multiplier of `name` (lr_mult for "lr", wd_mult for
    "weight_decay", none for the others)."""
    mult_key = MULTIPLIERS.get(name)
    for i, group in enumerate(param_groups):
        v = values[_layer_group(group, i)]
        group[name] = v * group.get(mult_key, 1.0) if mult_key else v


def layer_group_values(param_groups, name: str, default=None) -> list:
    """The base value of `name` of each layer group (what set_hyper was given): read from the
    group's default-kind optimizer group, else divided out of a kind's group. `default` stands
    in for a key a group lacks (e.g. "momentum" of a plain SGD)."""
    mult_key = MULTIPLIERS.get(name)
    values = []
    for k in range(n_layer_groups(param_groups)):
        mine = [g for i, g in enumerate(param_groups) if _layer_group(g, i) == k]
        mults = [g.get(mult_key, 1.0) if mult_key else 1.0 for g in mine]
        if 1.0 in mults:
            values.append(mine[mults.index(1.0)].get(name, default))
        elif any(mults):                       # only kinds here: undo the first kind's multiplier
            j = next(j for j, m in enumerate(mults) if m)
            values.append(mine[j].get(name, default) / mults[j])
        else:                                  # every multiplier 0: any base gives 0
            values.append(0.0)
    return values
