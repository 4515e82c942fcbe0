"""Data augmentation: the same image, many ways. Writes PNG galleries of each preset.

Run: python examples/04_augmentation_gallery.py [OUT_DIR]   (default: runs/augmentation)
"""
import os
import sys

import numpy as np

import tinyconv as tc
from tinyconv import augment as A
from tinyconv.plot_data import plot_augmentations, show_batch

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("runs", "augmentation")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
digits = tc.data.MNIST(train=False)

presets = {
    "shift": A.Compose([A.RandomCrop(28, padding=2, pad_mode="zeros")]),   # what `train` uses
    "basic": A.transforms_basic(),          # fastai 0.7: rotate +-10 deg, lighting
    "side_on": A.transforms_side_on(),      # + horizontal flips (photos taken from the side)
    "top_down": A.transforms_top_down(),    # + the 8 dihedral symmetries (satellite, microscopy)
    "aug_transforms": A.aug_transforms(),   # fastai v2: flip, warp, rotate, zoom, lighting
}
for name, transform in presets.items():
    path = os.path.join(out, f"{name}.png")
    plot_augmentations(digits.images[0], transform, n=11, rng=rng, path=path,
                       title=f"{name}: variations of one digit")
    print(f"{name:>15}: {transform}\n{'':>15}  -> {path}")

# Every draw is recorded, so a batch can be replayed bit for bit.
transform = A.aug_transforms()
batch = digits.images[:16]
augmented, draws = transform(batch, np.random.default_rng(1), return_draws=True)
same = np.array_equal(augmented, transform.apply(batch, draws))
print(f"\nreplaying the recorded draws reproduces the batch exactly: {same}")

dl = tc.data.DataLoader(digits, batch_size=16, shuffle=True, transform=presets["basic"], rng=rng)
show_batch(dl, path=os.path.join(out, "batch.png"), title="an augmented batch")
print(f"an augmented batch -> {os.path.join(out, 'batch.png')}")
