"""Convolution is a matrix product: im2col unfolds every receptive field into a column.

Run: python examples/02_im2col.py
"""
import numpy as np

import tinyconv as tc
from tinyconv import nn
from tinyconv.im2col_view import im2col_view

rng = np.random.default_rng(0)

# A tiny case you can read: one 4x5 grey image, one 3x3 filter, no padding.
x = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
conv = nn.Conv2d(1, 1, 3, bias=False, rng=rng)
view = im2col_view(x, conv)
print(view)
print("\nthe image:\n", x[0, 0])
print("\ncols: one column per output pixel, each a flattened 3x3 window:\n", view.cols[0])
print("\nweight as a row:", np.round(view.weight_matrix, 3))
print("\nweight @ cols, reshaped to (OH, OW):\n", np.round(view.output()[0, 0], 3))
print("conv2d forward gives the same:", np.allclose(view.output(), conv(tc.Tensor(x)).data))

# The first layer of resnet9 on a CIFAR batch: the GEMM shapes a real network multiplies.
x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
conv = nn.Conv2d(3, 64, 3, padding=1, bias=False, rng=rng)
view = im2col_view(x, conv)
print(f"\nresnet9's first conv on 8 CIFAR images:\n{view}")
print(f"{view.flops / 1e6:.1f} MFLOP; same as conv2d: "
      f"{np.allclose(view.output(), conv(tc.Tensor(x)).data, atol=1e-4)}")
