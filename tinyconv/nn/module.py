"""Module, Parameter, Buffer, Sequential: the containers that hold a network's state.

A `Module` finds its state by walking its own attributes, in the order they were assigned:

    Parameter              a learnable Tensor          -> parameters(), state_dict()
    Buffer                 state that is not learned   -> buffers(), state_dict()
                           (BatchNorm's running mean)
    Module                 a sub-module                -> children(), and all of the above below it
    list/tuple of Modules  sub-modules named "attr.0", "attr.1", ... (what torch's ModuleList does)

No registration step and no `__setattr__` magic: `self.fc = Linear(4, 2)` is all it takes. Names are
PyTorch's dotted paths ("layer1.0.weight", "bn.running_mean"), so a torch state_dict of the same net
loads here and the other way round.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from ..tensor import Tensor

__all__ = ["Parameter", "Buffer", "Module", "Sequential", "StateDictError"]


class Parameter(Tensor):
    """A Tensor that a Module learns: requires_grad is True; optimizers update `.data` in place.

    frozen=True marks it as never trained, whatever happens later: requires_grad becomes False,
    the gradient is dropped, and Learner.freeze_to / unfreeze, Module.requires_grad_ and the
    optimizers leave it alone (a fixed whitening filter, a batch-norm scale pinned at 1). Setting
    frozen back to False makes it trainable again.
    """

    def __init__(self, data, requires_grad: bool = True, frozen: bool = False):
        super().__init__(data, requires_grad=requires_grad and not frozen)
        self._frozen = bool(frozen)

    @property
    def frozen(self) -> bool:
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        # a property, not a plain flag: freezing must also stop gradients now, not at the next
        # freeze_to, so that the next backward() does not compute one
        self._frozen = bool(value)
        self.requires_grad = not self._frozen
        if self._frozen:
            self.grad = None

    def __repr__(self) -> str:
        frozen = ", frozen" if self._frozen else ""
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"


class Buffer(Tensor):
    """Module state that is saved and loaded but not learned (running statistics, counters).

    Ops that update it (batch_norm) write into `.data` in place, so the array keeps its identity.
    """

    def __init__(self, data):
        super().__init__(data, requires_grad=False)

    def __repr__(self) -> str:
        return f"Buffer(shape={self.shape}, dtype={self.dtype})"


class StateDictError(RuntimeError):
    """load_state_dict: keys missing, unexpected, or with the wrong shape (a RuntimeError, as in
    PyTorch)."""


class Module:
    """Base class of every layer and network: override `__init__` (call super) and `forward`."""

    training = True                       # the default, should a subclass forget super().__init__()

    def __init__(self):
        self.training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- discovery ---------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) for each direct sub-module, in attribute order; lists give "attr.i"."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and \
                    all(isinstance(v, Module) for v in value):
                for i, module in enumerate(value):
                    yield f"{name}.{i}", module

    def children(self) -> Iterator["Module"]:
        """The direct sub-modules."""
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) for this module ("") and every module below it, depth first."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        """This module and every module below it."""
        for _, module in self.named_modules():
            yield module

    def _named_state(self, kind: type) -> Iterator[tuple[str, Tensor]]:
        """(dotted name, tensor) of every attribute of type `kind` in the tree.

        A tensor shared by two modules (tied weights) is listed once, under its first name, as in
        PyTorch.
        """
        seen = set()
        for prefix, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, kind) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) for every parameter, in definition order."""
        return self._named_state(Parameter)

    def parameters(self) -> Iterator[Parameter]:
        """Every Parameter of the tree, in definition order (what an optimizer takes)."""
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, Buffer]]:
        """(dotted name, Buffer) for every buffer, in definition order."""
        return self._named_state(Buffer)

    def buffers(self) -> Iterator[Buffer]:
        """Every Buffer of the tree (running statistics), in definition order."""
        for _, b in self.named_buffers():
            yield b

    def num_parameters(self) -> int:
        """Total number of learnable values."""
        return sum(p.size for p in self.parameters())

    # ---- modes and gradients -----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (BatchNorm uses batch statistics, Dropout drops) for the whole tree."""
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode: BatchNorm uses its running statistics, Dropout passes through."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget the gradients of every parameter (set to None: nothing to add to, as torch)."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter of the tree (a frozen one stays so)."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad) and not p.frozen
        return self

    def astype(self, dtype) -> "Module":
        """Cast every parameter and floating-point buffer to `dtype`, in place (e.g. float64 for
        gradient checks). Integer buffers (num_batches_tracked) keep their dtype."""
        for t in list(self.parameters()) + list(self.buffers()):
            if np.issubdtype(t.dtype, np.floating):
                t.data = np.ascontiguousarray(t.data, dtype=dtype)
                t.grad = None
        return self

    # ---- state_dict --------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted name -> a copy of the array, parameters and buffers in definition order.

        Copies, unlike torch (whose state_dict shares storage): a snapshot taken before an LR sweep
        must not change while the sweep trains.
        """
        state = OrderedDict()
        for prefix, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, (Parameter, Buffer)):
                    key = f"{prefix}.{name}" if prefix else name
                    state.setdefault(key, value.data.copy())
        return state

    def load_state_dict(self, state_dict, strict: bool = True) -> tuple[list, list]:
        """Copy arrays into the parameters and buffers of the same name, in place.

        Values are cast to each parameter's dtype, and parameters keep their identity (an optimizer
        holding them stays valid). strict: every key must match both ways. A shape mismatch is
        always an error. Nothing is written unless everything checks out. Returns
        (missing_keys, unexpected_keys) like torch.
        """
        own = OrderedDict()
        for prefix, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, (Parameter, Buffer)):
                    own.setdefault(f"{prefix}.{name}" if prefix else name, value)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        arrays = {}
        for key, target in own.items():
            if key in state_dict:
                value = np.asarray(getattr(state_dict[key], "data", state_dict[key]))
                if value.shape != target.shape:
                    mismatched.append(f"{key}: file {value.shape}, model {target.shape}")
                arrays[key] = value
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch: {'; '.join(mismatched)}")
        if problems:
            raise StateDictError(f"load_state_dict into {type(self).__name__}: "
                                 + " | ".join(problems))
        for key, value in arrays.items():
            own[key].data[...] = value
        return missing, unexpected

    # ---- printing ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The constructor arguments shown in repr, e.g. "3, 64, kernel_size=3" (override)."""
        return ""

    def __repr__(self) -> str:
        return "\n".join(self._repr_lines())

    def _repr_lines(self, name: str = "") -> list:
        label = f"({name}): " if name else ""
        head = f"{label}{type(self).__name__}({self.extra_repr()}"
        own = [(n, v) for n, v in vars(self).items() if isinstance(v, Parameter)]
        children = list(self.named_children())
        count = self.num_parameters()
        if not children:
            shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in own)
            note = f"  # {shapes}: {count:,}" if own else ""
            return [head + ")" + note]
        lines = [head + f"  # {count:,} parameters"]
        for n, v in own:
            lines.append(f"  {n}: {tuple(v.shape)}")
        for child_name, child in children:
            lines.extend("  " + line for line in child._repr_lines(child_name))
        lines.append(")")
        return lines


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... (PyTorch's names)."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(m).__name__}, not a Module")
        self.layers = list(modules)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, module in enumerate(self.layers):
            yield str(i), module

    def forward(self, x):
        for module in self.layers:
            x = module(x)
        return x

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)
