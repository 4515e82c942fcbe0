"""The examples run and print what they promise (the long ones on a few images, marked slow)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"


def run_example(name, *args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)],
                            capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_autograd_example_shows_accumulation_and_a_caught_bug():
    out = run_example("01_autograd.py")
    assert "dy/da = 12.0" in out and "fails as it should" in out


def test_im2col_example_matches_conv2d():
    out = run_example("02_im2col.py")
    assert out.count("True") == 2 and "weight (64, 27) @ cols (27, 1024)" in out


def test_augmentation_gallery_writes_pictures(tmp_path):
    out = run_example("04_augmentation_gallery.py", tmp_path)
    assert "reproduces the batch exactly: True" in out
    assert len(list(tmp_path.glob("*.png"))) == 6


@pytest.mark.slow
def test_lr_find_one_cycle_example(tmp_path):
    out = run_example("03_lr_find_one_cycle_mnist.py", "--epochs", 1, "--limit", 3000,
                      "--out", tmp_path)
    assert "test accuracy" in out and (tmp_path / "top_losses.png").exists()


@pytest.mark.slow
def test_compare_policies_example(tmp_path):
    out = run_example("05_compare_policies.py", "--epochs", 1, "--limit", 2000, "--out", tmp_path)
    assert out.count("validation accuracy") == 4 and (tmp_path / "policies.png").exists()


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason="needs the CIFAR-10 image folder")
def test_cifar_examples_run_on_a_few_images():
    out = run_example("06_cifar10_resnet9.py", "--data", CIFAR, "--epochs", 1, "--limit", 512,
                      "--width", 8)
    assert "with flip TTA" in out
    out = run_example("07_transfer_cats_dogs.py", "--data", CIFAR, "--pretrain-epochs", 1,
                      "--limit", 600, "--width", 8)
    assert out.count("accuracy") == 5        # pre-trained, new head, frozen, unfrozen, TTA


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason="needs the CIFAR-10 image folder")
def test_pretrained_transfer_example_runs_offline_on_a_few_images():
    out = run_example("08_pretrained_transfer.py", "--data", CIFAR, "--pretrain-epochs", 1,
                      "--limit", 160, "--size", 32, "--batch-size", 32)
    assert out.count("accuracy") == 9        # pre-training, the eight steps (5 and 6 in one), TTA


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason="needs the CIFAR-10 image folder")
def test_airbench94_example_runs_on_a_few_images():
    out = run_example("09_airbench94_cifar10.py", "--data", CIFAR, "--epochs", 1, "--limit", 512,
                      "--batch-size", 128)
    assert "with shift TTA" in out
