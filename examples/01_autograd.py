"""Autograd from the inside: build a graph, walk it backwards, and check the gradients numerically.

Run: python examples/01_autograd.py
"""
import numpy as np

import tinyconv as tc
from tinyconv.nn import functional as F
from tinyconv.testing import GradientCheckError, check_grads

# 1. A tensor used twice gets both contributions: y = (a + a) * a = 2a^2, dy/da = 4a = 12 at a = 3.
a = tc.Tensor(np.array(3.0), requires_grad=True)
y = (a + a) * a
y.backward()
print(f"y = (a + a) * a at a = 3: y = {y.item()}, dy/da = {a.grad}  (4a = 12)")

# 2. Every op records the Function that made it; the graph is what backward() walks.
x = tc.Tensor(np.array([[1.0, -2.0, 3.0]]), requires_grad=True)
w = tc.Tensor(np.array([[0.5, 0.1, 0.3], [0.2, -0.4, 0.1]]), requires_grad=True)
loss = F.cross_entropy(F.linear(x, w).relu(), np.array([1]))
node, depth = loss._ctx, 0
print("\nthe graph of cross_entropy(relu(linear(x, w)), target), from the loss back:")
while node is not None:
    print(f"  {'  ' * depth}{type(node).__name__}")
    parents = [t for t in node.inputs if t._ctx is not None]
    node, depth = (parents[0]._ctx if parents else None), depth + 1
loss.backward()
print(f"dloss/dw =\n{w.grad}")

# 3. Gradient checking: central differences in float64 against backward(), every element, with a
#    random upstream gradient (a plain sum() would hide a transposed gradient).
rng = np.random.default_rng(0)
check_grads(lambda x, w: (x @ w).tanh(), rng.standard_normal((3, 4)), rng.standard_normal((4, 2)))
print("\ncheck_grads((x @ w).tanh()): backward() agrees with finite differences")


class BrokenSquare(tc.Function):
    """x^2 with a deliberately wrong backward (2x forgotten): the checker must catch it."""

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return x * x

    @staticmethod
    def backward(ctx, dy):
        return dy * ctx.x          # should be dy * 2x


try:
    check_grads(lambda x: BrokenSquare.apply(x), rng.standard_normal(5))
except GradientCheckError as error:
    print(f"check_grads(BrokenSquare) fails as it should:\n  {error}")
