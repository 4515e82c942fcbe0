"""Optimizers: the Optimizer base (parameter groups) and SGD with PyTorch's exact semantics.

An optimizer holds `param_groups`, a list of dicts: "params" (a list of parameters: objects with
`.data`, an ndarray, and `.grad`, an ndarray like it or None) plus that group's hyper-parameters
("lr", "momentum", ...). Schedules change `group["lr"]` / `group["momentum"]` between steps;
discriminative learning rates are simply different values in different groups.

`step()` updates every `p.data` IN PLACE (the Module, the optimizer and any views all keep pointing
at the same array) and keeps its dtype. It runs on every parameter after every batch -- 6.5M
floats for resnet9 -- so it writes through `out=` into two reused work arrays instead of building
temporaries: each line below is one pass over memory.
"""

import math

import numpy as np

__all__ = ["Optimizer", "SGD", "required"]


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
