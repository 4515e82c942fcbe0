"""Reading PyTorch weight files without torch and without running code from them.

Most tests write torch.save's zip layout by hand (write_torch_zip below: the pickle opcodes torch
emits for a state_dict), so they run without torch; the torch tests check the real thing.
"""
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import models
from tinyconv.torch_weights import (WeightFileError, load_state_dict_file, read_safetensors,
                                    read_state_dict_file)

try:
    import torch
except ImportError:                      # the suite also runs without torch
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
           np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage"}


# --- a hand-written torch.save: protocol-2 opcodes ------------------------------------------------

def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def tensor_pickle(key, storage_type, numel, offset, size, stride) -> bytes:
    """_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())."""
    pid = b"(" + _str("storage") + _global("torch", storage_type) + _str(key) + _str("cpu") + \
        _int(numel) + b"t" + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _int(offset) + \
        _ints(size) + _ints(stride) + b"\x89" + hooks + b"tR"


def write_torch_zip(path, entries, prefix="archive", storages=None, extra_pickle=b""):
    """entries: name -> array (saved contiguous, offset 0) or (key, storage_type, numel, offset,
    size, stride) for a hand-made view; storages: key -> raw bytes; extra_pickle: opcodes run
    after the state_dict is built."""
    storages = dict(storages or {})
    body = b""
    for i, (name, value) in enumerate(entries.items()):
        if isinstance(value, np.ndarray):
            key = str(len(storages))
            value = value.astype(value.dtype.newbyteorder("<"), order="C")   # keeps 0-d
            storages[key] = value.tobytes()
            strides = [s // value.itemsize for s in value.strides]
            value = (key, STORAGE[value.dtype], value.size, 0, value.shape, strides)
        body += _str(name) + tensor_pickle(*value)
    pkl = b"\x80\x02" + _global("collections", "OrderedDict") + b")R" + \
        b"(" + body + b"u" + extra_pickle + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"{prefix}/data/{key}", raw)
        zf.writestr(f"{prefix}/version", "3\n")
    return path


def write_safetensors(path, arrays, dtypes=None):
    """A .safetensors file by hand: 8-byte header length, JSON header, data."""
    header, blobs, offset = {"__metadata__": {"format": "np"}}, [], 0
    names = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64"}
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a).tobytes()
        dtype = (dtypes or {}).get(name, names[a.dtype.name])
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json_bytes(header)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def json_bytes(obj) -> bytes:
    import json
    return json.dumps(obj).encode()


# --- reading: values, dtypes, views ---------------------------------------------------------------

def test_hand_written_torch_zip_reads_back_exactly(tmp_path, rng):
    arrays = {"a.weight": rng.standard_normal((3, 4, 2), dtype=np.float32),
              "a.bias": rng.standard_normal(5).astype(np.float64),
              "h": rng.standard_normal((2, 3)).astype(np.float16),
              "n": np.array(7, dtype=np.int64)}
    state = read_state_dict_file(write_torch_zip(tmp_path / "w.bin", arrays))
    assert list(state) == list(arrays)
    for k, a in arrays.items():
        expected = a.astype(np.float32) if a.dtype.kind == "f" else a
        assert state[k].dtype == expected.dtype and state[k].shape == a.shape
        np.testing.assert_array_equal(state[k], expected)


def test_strides_and_storage_offsets_are_honoured(tmp_path):
    base = np.arange(24, dtype=np.float32)
    entries = {"t": ("0", "FloatStorage", 24, 0, (4, 6), (1, 4)),       # a transposed (6, 4)
               "s": ("0", "FloatStorage", 24, 5, (2, 3), (6, 2))}       # offset and step 2
    state = read_state_dict_file(write_torch_zip(tmp_path / "v.pth", entries,
                                                 storages={"0": base.tobytes()}))
    np.testing.assert_array_equal(state["t"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(state["s"], [[5, 7, 9], [11, 13, 15]])   # 5 + 6i + 2j
    assert state["t"].flags.c_contiguous


def test_bfloat16_is_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)           # truncation to bfloat16
    entries = {"b": ("0", "BFloat16Storage", 4, 0, (4,), (1,))}
    state = read_state_dict_file(write_torch_zip(tmp_path / "b.pth", entries,
                                                 storages={"0": bf16.tobytes()}))
    expected = (bf16.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(state["b"], expected)
    np.testing.assert_allclose(state["b"], values, rtol=1e-2)


def test_format_is_told_by_content_not_by_extension(tmp_path, rng):
    a = {"w": rng.standard_normal((2, 2), dtype=np.float32)}
    zip_named_st = write_torch_zip(tmp_path / "really_a_zip.safetensors", a)
    st_named_pth = write_safetensors(tmp_path / "really_safetensors.pth", a)
    for path in (zip_named_st, st_named_pth):
        np.testing.assert_array_equal(read_state_dict_file(path)["w"], a["w"])


def test_tinyconv_npz_is_read_too(tmp_path):
    net = models.mnist_cnn(rng=np.random.default_rng(0))
    tc.save(net, tmp_path / "m.npz")
    other = load_state_dict_file(models.mnist_cnn(rng=np.random.default_rng(1)), tmp_path / "m.npz")
    np.testing.assert_array_equal(other.state_dict()["7.weight"], net.state_dict()["7.weight"])


# --- refusing code --------------------------------------------------------------------------------

class _Evil:
    """Pickles as a call of `func(*args)`: what a malicious .pth does."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil_payloads(marker):
    import builtins
    import subprocess
    return {"os.system": (os.system, (f"touch {marker}",)),
            "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w')",)),
            "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w')",)),
            "subprocess.call": (subprocess.call, (["touch", str(marker)],))}


@pytest.mark.parametrize("which", ["os.system", "builtins.eval", "builtins.exec",
                                   "subprocess.call"])
def test_code_in_the_pickle_is_refused_before_it_runs(tmp_path, which):
    marker = tmp_path / "pwned"
    func, args = _evil_payloads(marker)[which]
    evil = pickle.dumps({"w": _Evil(func, args)}, protocol=2, fix_imports=False)
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
    # the evil call as the first name the pickle uses
    with pytest.raises(WeightFileError, match=rf"evil.pth: refused to load the global "
                                              rf"{func.__module__}\.{func.__name__}"):
        read_state_dict_file(path)
    # the same call after a real tensor: the pickle's opcodes without PROTO and STOP
    tail = pickle.dumps(_Evil(func, args), protocol=2, fix_imports=False)[2:-1]
    after = write_torch_zip(tmp_path / "after.pth", {"ok": np.ones(2, np.float32)},
                            extra_pickle=tail + b"0")             # call, then POP its result
    with pytest.raises(WeightFileError, match="refused to load the global"):
        read_state_dict_file(after)
    assert not marker.exists()
    pickle.loads(evil)                      # the payload is real: plain pickle does run it
    assert marker.exists()


@needs_torch
def test_code_saved_by_torch_save_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "x": _Evil(os.system, (f"touch {marker}",))}, path)
    with pytest.raises(WeightFileError,
                       match=r"evil.pth: refused to load the global posix\.system"):
        load_state_dict_file(models.resnet18(num_classes=2), path)
    assert not marker.exists()


def test_a_non_state_dict_global_is_refused_naming_it(tmp_path):
    pkl = b"\x80\x02" + _global("torch.nn.modules.linear", "Linear") + b")R."
    path = tmp_path / "module.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", pkl)
    with pytest.raises(WeightFileError, match=r"module.pth: refused to load the global "
                                              r"torch\.nn\.modules\.linear\.Linear"):
        read_state_dict_file(path)


# --- broken files ---------------------------------------------------------------------------------

def test_truncated_zip_is_a_clear_error(tmp_path, rng):
    path = write_torch_zip(tmp_path / "t.pth", {"w": rng.standard_normal(1000, dtype=np.float32)})
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        with pytest.raises(WeightFileError, match=r"t\.pth: .*truncated or corrupt"):
            read_state_dict_file(path)


def test_wrong_member_names_are_clear_errors(tmp_path):
    w = np.ones(3, np.float32)
    no_storage = write_torch_zip(tmp_path / "a.pth", {"w": ("7", "FloatStorage", 3, 0, (3,), (1,))},
                                 storages={"0": w.tobytes()})
    with pytest.raises(WeightFileError, match=r"a\.pth: the pickle refers to storage '7' but the "
                                              r"archive has no member 'archive/data/7'"):
        read_state_dict_file(no_storage)
    no_pickle = tmp_path / "b.pth"
    with zipfile.ZipFile(no_pickle, "w") as zf:
        zf.writestr("archive/weights.pkl", b"")
    with pytest.raises(WeightFileError, match=r"b\.pth: not a torch.save file: expected one "
                                              r"'<name>/data.pkl' member, found 0"):
        read_state_dict_file(no_pickle)


def test_a_storage_shorter_than_the_tensor_is_a_clear_error(tmp_path):
    raw = np.arange(6, dtype=np.float32).tobytes()
    too_big = write_torch_zip(tmp_path / "s.pth",
                              {"w": ("0", "FloatStorage", 6, 2, (2, 3), (3, 1))},
                              storages={"0": raw})
    with pytest.raises(WeightFileError, match=r"s\.pth: a tensor of size \(2, 3\), stride \(3, 1\)"
                                              r" at offset 2 needs 8 elements but storage '0' "
                                              r"holds 6"):
        read_state_dict_file(too_big)
    short = write_torch_zip(tmp_path / "r.pth", {"w": ("0", "FloatStorage", 6, 0, (6,), (1,))},
                            storages={"0": raw[:20]})
    with pytest.raises(WeightFileError, match=r"r\.pth: storage 'archive/data/0' holds 20 bytes, "
                                              r"the pickle says 6 x 4: the storage is truncated"):
        read_state_dict_file(short)


def test_safetensors_bad_offsets_and_truncation_are_clear_errors(tmp_path):
    path = write_safetensors(tmp_path / "x.safetensors", {"w": np.ones((2, 3), np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    with pytest.raises(WeightFileError, match=r"x\.safetensors: tensor 'w' of shape \(2, 3\) "
                                              r"\(F32\) needs 24 bytes"):
        read_safetensors(path)
    path.write_bytes(data[:12])
    with pytest.raises(WeightFileError, match=r"x\.safetensors: the safetensors header claims"):
        read_state_dict_file(path)


def _legacy_head() -> bytes:
    """The three pickles that open a legacy torch.save file: magic, protocol, system info."""
    info = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, info))


def test_legacy_format_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old_evil.pth"
    path.write_bytes(_legacy_head() + pickle.dumps(
        {"w": _Evil(os.system, (f"touch {marker}",))}, protocol=2, fix_imports=False))
    with pytest.raises(WeightFileError, match=r"old_evil\.pth: refused to load the global "
                                              r"posix\.system"):
        read_state_dict_file(path)
    assert not marker.exists()


def test_legacy_and_unknown_formats_are_named(tmp_path):
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(_legacy_head()[:30])
    with pytest.raises(WeightFileError, match=r"old\.pth: not a readable legacy torch.save file: "
                                              r"truncated"):
        read_state_dict_file(legacy)
    legacy.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(WeightFileError, match=r"old\.pth: not a torch.save file \(its first "
                                              r"pickle is not torch's magic number\)"):
        read_state_dict_file(legacy)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    with pytest.raises(WeightFileError, match=r"junk\.bin: neither a torch.save zip"):
        read_state_dict_file(junk)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict_file(tmp_path / "nope.pth")


def test_architecture_mismatch_lists_missing_unexpected_and_misshaped(tmp_path, rng):
    net = models.mnist_cnn()
    state = {k: v for k, v in net.state_dict().items() if k != "0.0.weight"}
    state["7.weight"] = np.zeros((3, 128), np.float32)
    state["extra.weight"] = np.zeros(2, np.float32)
    path = write_torch_zip(tmp_path / "m.pth", state)
    before = net.state_dict()
    with pytest.raises(WeightFileError) as e:
        load_state_dict_file(net, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: does not fit MnistCNN")
    assert "missing keys: 0.0.weight" in msg and "unexpected keys: extra.weight" in msg
    assert "7.weight: file (3, 128), model (10, 128)" in msg
    assert all(np.array_equal(before[k], v) for k, v in net.state_dict().items())   # untouched


def test_missing_num_batches_tracked_keeps_the_model_s(tmp_path):
    net = models.mnist_cnn(rng=np.random.default_rng(0))
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_state_dict_file(models.mnist_cnn(), write_torch_zip(tmp_path / "old_bn.pth", state))


# --- the real torch.save and safetensors, into a ResNet-18 ----------------------------------------

def _torch_resnet18(num_classes=10):
    from torch_resnets import resnet
    return resnet("resnet18", num_classes)


def _compare_logits_and_grads(ours, theirs):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    y = np.array([1, 7])
    theirs.eval(), ours.eval()
    with torch.no_grad():
        t_logits = theirs(torch.from_numpy(x)).numpy()
    with tc.no_grad():
        o_logits = ours(tc.Tensor(x)).data
    np.testing.assert_allclose(o_logits, t_logits, atol=1e-4, rtol=1e-4)
    theirs.train(), ours.train()                       # batch statistics: every op's backward
    tx = torch.from_numpy(x)
    torch.nn.functional.cross_entropy(theirs(tx), torch.from_numpy(y)).backward()
    tc.nn.functional.cross_entropy(ours(tc.Tensor(x)), tc.Tensor(y)).backward()
    t_params = dict(theirs.named_parameters())
    for name in ("fc.weight", "layer4.1.bn2.weight", "layer2.0.downsample.0.weight",
                 "conv1.weight"):
        g, t = dict(ours.named_parameters())[name].grad, t_params[name].grad.numpy()
        np.testing.assert_allclose(g, t, rtol=1e-3, atol=1e-4 * np.abs(t).max(), err_msg=name)


@needs_torch
def test_torch_save_resnet18_gives_torch_s_logits_and_gradients(tmp_path):
    theirs = _torch_resnet18()
    path = tmp_path / "resnet18-random.pth"
    torch.save(theirs.state_dict(), path)
    ours = models.resnet18(num_classes=10, weights=path)
    assert int(ours.state_dict()["bn1.num_batches_tracked"]) == 7
    _compare_logits_and_grads(ours, theirs)


@needs_torch
def test_torch_save_dtypes_views_and_checkpoints(tmp_path):
    base = torch.randn(30, dtype=torch.float64)
    state = {"half": torch.randn(3, 4).half(), "bf16": torch.randn(5).bfloat16(),
             "double_view": base[4:16].view(3, 4).t(), "long": torch.tensor([3, -1]),
             "param": torch.nn.Parameter(torch.randn(2, 2))}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")
    got = read_state_dict_file(tmp_path / "ckpt.pt")
    for k, t in state.items():
        want = t.detach().float().numpy() if t.is_floating_point() else t.numpy()
        assert got[k].dtype == want.dtype and got[k].shape == want.shape
        np.testing.assert_array_equal(got[k], want)


@needs_torch
def test_safetensors_written_by_the_package_loads_into_resnet18(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    theirs = _torch_resnet18()
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(theirs.state_dict(), str(path))
    ours = load_state_dict_file(models.resnet18(num_classes=10), path)
    _compare_logits_and_grads(ours, theirs)


@needs_torch
def test_safetensors_half_and_bfloat16(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = {"h": torch.randn(3, 2).half(), "b": torch.randn(4).bfloat16()}
    safetensors_torch.save_file(state, str(tmp_path / "m.safetensors"))
    got = read_safetensors(tmp_path / "m.safetensors")
    for k, t in state.items():
        np.testing.assert_array_equal(got[k], t.float().numpy())


def test_hand_written_safetensors_reads_back(tmp_path, rng):
    arrays = {"a": rng.standard_normal((2, 3), dtype=np.float32), "n": np.array([4], np.int64),
              "d": rng.standard_normal(3)}
    got = read_safetensors(write_safetensors(tmp_path / "h.safetensors", arrays))
    assert list(got) == ["a", "n", "d"]
    np.testing.assert_array_equal(got["a"], arrays["a"])
    np.testing.assert_array_equal(got["n"], arrays["n"])
    np.testing.assert_array_equal(got["d"], arrays["d"].astype(np.float32))


def test_ignored_prefixes_are_left_out_on_both_sides(tmp_path):
    source = models.mnist_cnn(num_classes=4, rng=np.random.default_rng(0)).state_dict()
    path = write_torch_zip(tmp_path / "four_classes.pth", source)
    net = models.mnist_cnn(num_classes=10, rng=np.random.default_rng(1))
    own_head = net.state_dict()["7.weight"]
    with pytest.raises(WeightFileError, match=r"7.weight: file \(4, 128\), model \(10, 128\)"):
        load_state_dict_file(net, path)
    load_state_dict_file(net, path, ignore=("7.",))
    state = net.state_dict()
    np.testing.assert_array_equal(state["7.weight"], own_head)          # kept its own
    np.testing.assert_array_equal(state["5.weight"], source["5.weight"])


@pytest.mark.parametrize("writer,name", [("save_pt", "r.pt"), ("save_safetensors", "r.st")])
def test_tinyconv_s_own_pt_and_safetensors_files_read_back(tmp_path, writer, name):
    net = models.resnet18(num_classes=5, rng=np.random.default_rng(0))
    getattr(tc, writer)(net, tmp_path / name)
    back = load_state_dict_file(models.resnet18(num_classes=5), tmp_path / name).state_dict()
    assert all(np.array_equal(v, back[k]) for k, v in net.state_dict().items())


@needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_torch_save_resnet34_and_50_give_torch_s_logits_and_gradients(tmp_path, arch):
    """float32 logits; gradients in float64: in float32, training-mode batch norm over the 8
    values per channel that layer4 has here (batch 2, 2x2) leaves ResNet-50's gradients to ~1%
    of rounding noise in either framework (float64: equal to 1e-13)."""
    from torch_resnets import resnet
    theirs = resnet(arch, 10)
    torch.save(theirs.state_dict(), tmp_path / f"{arch}.pth")
    ours = getattr(models, arch)(num_classes=10, weights=tmp_path / f"{arch}.pth")
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    theirs.eval(), ours.eval()
    with torch.no_grad(), tc.no_grad():
        np.testing.assert_allclose(ours(tc.Tensor(x.astype(np.float32))).data,
                                   theirs(torch.from_numpy(x.astype(np.float32))).numpy(),
                                   atol=1e-4, rtol=1e-4)
    ours.astype(np.float64).train(), theirs.double().train()
    y = np.array([1, 7])
    torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    tc.nn.functional.cross_entropy(ours(tc.Tensor(x)), tc.Tensor(y)).backward()
    t_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, t_params[name].grad.numpy(), rtol=1e-7,
                                   atol=1e-10, err_msg=name)


@needs_torch
def test_torch_legacy_format_reads_dtypes_views_and_a_resnet18(tmp_path):
    base = torch.randn(30)
    state = {"half": torch.randn(3, 4).half(), "bf16": torch.randn(5).bfloat16(),
             "view": base[4:16].view(3, 4).t(), "long": torch.tensor(7),
             "param": torch.nn.Parameter(torch.randn(2, 2))}
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    got = read_state_dict_file(tmp_path / "old.pth")
    for k, t in state.items():
        want = t.detach().float().numpy() if t.is_floating_point() else t.numpy()
        assert got[k].dtype == want.dtype and got[k].shape == want.shape
        np.testing.assert_array_equal(got[k], want)
    theirs = _torch_resnet18()
    torch.save(theirs.state_dict(), tmp_path / "r18_old.pth", _use_new_zipfile_serialization=False)
    _compare_logits_and_grads(models.resnet18(num_classes=10, weights=tmp_path / "r18_old.pth"),
                              theirs)
    data = (tmp_path / "r18_old.pth").read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(WeightFileError, match=r"cut\.pth: .*(truncated|ends before)"):
            read_state_dict_file(tmp_path / "cut.pth")
