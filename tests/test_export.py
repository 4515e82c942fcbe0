"""Export to ONNX and safetensors, checked by the runtimes that load the files (ONNX Runtime,
onnx.checker, the safetensors package, torch), not by tinyconv reading its own output.

Each group skips cleanly when its optional package is absent (CI installs them all).
"""
import os
import sys

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import nn
from tinyconv.onnx_export import OnnxExportError, export_onnx
from tinyconv.pt_export import save_pt
from tinyconv.safetensors_export import save_safetensors

try:
    import onnx
except ImportError:
    onnx = None
try:
    import onnxruntime as ort
except ImportError:
    ort = None
try:
    import torch
except ImportError:
    torch = None
try:
    import safetensors.numpy as st_numpy
except ImportError:
    st_numpy = None
try:                                      # its torch half needs torch as well
    import safetensors.torch as st_torch
except ImportError:
    st_torch = None

needs_onnx = pytest.mark.skipif(onnx is None or ort is None,
                                reason="onnx and onnxruntime are not installed")
needs_onnx_package = pytest.mark.skipif(onnx is None, reason="onnx is not installed")
needs_safetensors = pytest.mark.skipif(st_numpy is None, reason="safetensors is not installed")
needs_torch = pytest.mark.skipif(torch is None, reason="torch (the oracle) is not installed")

# every architecture of the zoo, built small enough for a fast test: (arguments, one image's shape)
ZOO = {"mnist_cnn": ({}, (1, 28, 28)),
       "resnet9": ({"width": 8}, (3, 32, 32)),
       "resnet9_logit_scale": ({"width": 8, "logit_scale": 0.125}, (3, 32, 32)),
       "airbench94": ({"widths": (16, 32, 32)}, (3, 32, 32)),
       "resnet18": ({"num_classes": 10}, (3, 32, 32)),
       "resnet34": ({"num_classes": 10}, (3, 32, 32)),
       "resnet50": ({"num_classes": 10}, (3, 32, 32)),
       "transfer_net": ({"arch": "resnet18", "n_out": 3}, (3, 32, 32))}


# resnet34 repeats resnet18's blocks, only more of them: in the slow set
ZOO_PARAMS = [pytest.param(n, marks=[pytest.mark.slow] if n == "resnet34" else [])
              for n in ZOO if n.replace("_logit_scale", "") in tc.models.ARCHITECTURES]


def _zoo_net(name: str, rng) -> nn.Module:
    """The zoo net `name` (its ZOO variant), with random batch-norm statistics and affine
    parameters, so that an exported batch norm that ignored them would show."""
    args, _ = ZOO[name]
    net = tc.models.build(name.replace("_logit_scale", ""), **args)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.data[:] = rng.normal(0, 0.2, m.num_features)
            m.running_var.data[:] = rng.uniform(0.5, 2.0, m.num_features)
            if m.weight is not None and not m.weight.frozen:
                m.weight.data[:] = rng.uniform(0.5, 1.5, m.num_features)
            if m.bias is not None:
                m.bias.data[:] = rng.normal(0, 0.2, m.num_features)
    return net.eval()


def _tinyconv_out(net, x):
    with tc.no_grad():
        return net(tc.Tensor(x)).data


def _onnx_out(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_every_zoo_architecture_has_an_export_case():
    # a new architecture in the zoo must be added to ZOO, so that its export is tested
    assert set(tc.models.ARCHITECTURES) <= {n.replace("_logit_scale", "") for n in ZOO}


# ---- ONNX: the zoo -------------------------------------------------------------------------------

@needs_onnx
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_onnx_runtime_matches_tinyconv_on_zoo_net_at_batch_1_and_7(name, rng, tmp_path):
    net = _zoo_net(name, rng)
    shape = ZOO[name][1]
    path = export_onnx(net, tmp_path / f"{name}.onnx", input_shape=(1, *shape))
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 7):
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        got = _onnx_out(path, x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, _tinyconv_out(net, x), rtol=1e-4, atol=1e-4)


@needs_onnx
def test_onnx_logit_scale_is_in_the_graph(rng, tmp_path):
    plain, scaled = _zoo_net("resnet9", rng), _zoo_net("resnet9_logit_scale", rng)
    scaled.load_state_dict(plain.state_dict())
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    a = _onnx_out(export_onnx(plain, tmp_path / "a.onnx", (1, 3, 32, 32)), x)
    b = _onnx_out(export_onnx(scaled, tmp_path / "b.onnx", (1, 3, 32, 32)), x)
    np.testing.assert_allclose(b, 0.125 * a, rtol=1e-5, atol=1e-6)


# ---- ONNX: every layer and option ----------------------------------------------------------------

def _layer_zoo(rng) -> nn.Module:
    """Every exportable layer with non-default options: strided, padded, dilated, grouped conv
    with bias, batch norm with and without affine, both pools with padding, uneven adaptive
    pools, dropout, a partial Flatten and a Linear on a 3-D input (MatMul, not Gemm)."""
    bn_plain = nn.BatchNorm2d(6, affine=False)
    bn_plain.running_mean.data[:] = rng.normal(0, 0.5, 6)
    bn_plain.running_var.data[:] = rng.uniform(0.5, 2.0, 6)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    bn.running_var.data[:] = rng.uniform(0.5, 2.0, 6)
    bn.weight.data[:] = rng.uniform(0.5, 1.5, 6)
    layers = [nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2,
                        rng=rng), bn_plain, nn.ReLU(), bn,
              nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2, stride=1, padding=1),
              nn.Dropout(0.5), nn.AdaptiveMaxPool2d((5, 3)), nn.AdaptiveAvgPool2d((3, None)),
              nn.Flatten(2), nn.Linear(9, 5, rng=rng), nn.Scale(-2.0)]
    return nn.Sequential(*layers).eval()


@needs_onnx
def test_onnx_every_layer_option_matches_tinyconv(rng, tmp_path):
    net = _layer_zoo(rng)
    path = export_onnx(net, tmp_path / "layers.onnx", input_shape=(1, 4, 13, 11))
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Conv", "BatchNormalization", "MaxPool", "AveragePool", "Slice", "Concat",
            "Reshape", "MatMul"} <= ops
    for batch in (1, 3):
        x = rng.standard_normal((batch, 4, 13, 11)).astype(np.float32)
        np.testing.assert_allclose(_onnx_out(path, x), _tinyconv_out(net, x),
                                   rtol=1e-4, atol=1e-5)


@needs_onnx
@pytest.mark.parametrize("output_size", [1, (2, 4), (3, 3)])
@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d])
def test_onnx_adaptive_pools_match_tinyconv(pool, output_size, rng, tmp_path):
    # 1: a global pool; (2, 4) tiles 6x8 evenly: one plain pool; (3, 3) on 7x8: uneven windows
    net = nn.Sequential(pool(output_size))
    x = rng.standard_normal((2, 3, 7 if output_size == (3, 3) else 6, 8)).astype(np.float32)
    path = export_onnx(net, tmp_path / "pool.onnx", input_shape=(1,) + x.shape[1:])
    np.testing.assert_allclose(_onnx_out(path, x), _tinyconv_out(net, x), rtol=1e-6, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("shape", [(5,), (5, 4)])
def test_onnx_batch_norm_1d_matches_tinyconv(shape, rng, tmp_path):
    bn = nn.BatchNorm1d(5, eps=1e-3)
    bn.running_mean.data[:] = rng.normal(0, 1, 5)
    bn.running_var.data[:] = rng.uniform(0.5, 2.0, 5)
    bn.bias.data[:] = rng.normal(0, 1, 5)
    net = nn.Sequential(bn).eval()
    path = export_onnx(net, tmp_path / "bn.onnx", input_shape=(1, *shape))
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    np.testing.assert_allclose(_onnx_out(path, x), _tinyconv_out(net, x), rtol=1e-5, atol=1e-6)


@needs_onnx
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("opset", [17, 20])
def test_onnx_gelu_and_leaky_relu_match_tinyconv(opset, approximate, rng, tmp_path):
    layers = [nn.Linear(6, 6, rng=rng), nn.GELU(approximate)]
    if hasattr(nn, "LeakyReLU"):
        layers += [nn.LeakyReLU(0.1)]
    net = nn.Sequential(*layers)
    path = export_onnx(net, tmp_path / "gelu.onnx", input_shape=(1, 6), opset=opset)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    # opset 20 has a Gelu op; before it, the formula: erf (exact) or tanh (approximate)
    assert ("Gelu" in ops) == (opset >= 20)
    assert ("Erf" in ops) == (opset < 20 and approximate == "none")
    assert ("Tanh" in ops) == (opset < 20 and approximate == "tanh")
    x = rng.standard_normal((4, 6)).astype(np.float32) * 3
    np.testing.assert_allclose(_onnx_out(path, x), _tinyconv_out(net, x), rtol=1e-5, atol=1e-5)


@needs_onnx
def test_onnx_exports_the_eval_graph_and_leaves_the_mode_alone(rng, tmp_path):
    net = _zoo_net("mnist_cnn", rng)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    expected = _tinyconv_out(net, x)
    net.train()
    path = export_onnx(net, tmp_path / "m.onnx", input_shape=(1, 1, 28, 28))
    assert net.training
    np.testing.assert_allclose(_onnx_out(path, x), expected, rtol=1e-4, atol=1e-4)


@needs_onnx
def test_onnx_initializers_are_named_by_state_dict_keys(rng, tmp_path):
    net = _zoo_net("resnet9", rng)
    model = onnx.load(export_onnx(net, tmp_path / "r.onnx", input_shape=(1, 3, 32, 32)))
    names = {init.name for init in model.graph.initializer}
    float_keys = {k for k, v in net.state_dict().items() if v.dtype == np.float32}
    assert float_keys <= names
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(weights["3.res1.0.weight"], net.state_dict()["3.res1.0.weight"])


@needs_onnx
def test_onnx_metadata_from_a_saved_model_and_input_shape_from_its_image_shape(rng, tmp_path):
    net = _zoo_net("mnist_cnn", rng)
    classes = [f"digit {i}" for i in range(10)]
    saved = tc.save(net, tmp_path / "m.npz", classes=classes, mean=[0.1307], std=[0.3081],
                    image_shape=[28, 28, 1])
    path = export_onnx(tc.load(saved), tmp_path / "m.onnx", metadata={"note": "hi"})
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["classes"] == '["digit 0", "digit 1", "digit 2", "digit 3", "digit 4", ' \
                               '"digit 5", "digit 6", "digit 7", "digit 8", "digit 9"]'
    assert (props["mean"], props["std"], props["note"]) == ("[0.1307]", "[0.3081]", "hi")
    assert props["arch"] == "mnist_cnn" and props["arch_args"] == '{"num_classes": 10}'
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["std"] == "[0.3081]"


# ---- ONNX: what cannot be exported ---------------------------------------------------------------

class Mystery(nn.Module):
    def forward(self, x):
        return x * x


class TwistedReLU(nn.ReLU):
    def forward(self, x):
        return -super().forward(x)


@needs_onnx_package
@pytest.mark.parametrize("layer, why", [(Mystery(), r"layer 1\.0 \(Mystery\): no ONNX converter"),
                                        (TwistedReLU(), r"layer 1\.0 \(TwistedReLU\): it "
                                                        r"overrides the forward\(\) of ReLU"),
                                        (nn.Flatten(0), r"layer 1\.0 \(Flatten\): start_dim 0 "
                                                        r"merges the batch")])
def test_onnx_unexportable_layer_is_named_and_nothing_is_written(layer, why, tmp_path):
    net = nn.Sequential(nn.Linear(3, 3), nn.Sequential(layer))
    with pytest.raises(OnnxExportError, match=why):
        export_onnx(net, tmp_path / "x.onnx", input_shape=(1, 3))
    assert os.listdir(tmp_path) == []


@needs_onnx_package
def test_onnx_input_that_does_not_fit_names_the_layer_and_shapes(tmp_path):
    net = tc.models.mnist_cnn()
    with pytest.raises(OnnxExportError, match=r"layer 0\.0 \(Conv2d\): expects 1 input channels, "
                                              r"gets \(batch, 3, 28, 28\)"):
        export_onnx(net, tmp_path / "x.onnx", input_shape=(1, 3, 28, 28))
    with pytest.raises(OnnxExportError, match=r"layer 5 \(Linear\): expects 3136 input features"):
        export_onnx(net, tmp_path / "x.onnx", input_shape=(1, 1, 32, 32))
    with pytest.raises(OnnxExportError, match="pass input_shape"):
        export_onnx(net, tmp_path / "x.onnx")
    with pytest.raises(OnnxExportError, match="opset must be an int from 13"):
        export_onnx(net, tmp_path / "x.onnx", input_shape=(1, 1, 28, 28), opset=7)
    assert os.listdir(tmp_path) == []


def test_onnx_without_the_onnx_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)           # `import onnx` now fails
    with pytest.raises(ImportError, match=r"pip install 'tinyconv\[onnx\]'"):
        export_onnx(tc.models.mnist_cnn(), tmp_path / "x.onnx", input_shape=(1, 1, 28, 28))


# ---- both formats: unwritable paths and interrupted writes ---------------------------------------

def _export(fmt, net, path):
    if fmt == "onnx":
        if onnx is None:
            pytest.skip("onnx is not installed")
        return export_onnx(net, path, input_shape=(1, 1, 28, 28))
    return (save_safetensors if fmt == "safetensors" else save_pt)(net, path)


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "pt"])
def test_export_to_a_missing_folder_names_the_path(fmt, tmp_path):
    target = tmp_path / "no" / "such" / f"m.{fmt}"
    with pytest.raises(FileNotFoundError, match=f"cannot write .*m.{fmt}"):
        _export(fmt, tc.models.mnist_cnn(), target)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "pt"])
def test_interrupted_export_keeps_the_old_file_and_leaves_no_temporary(fmt, tmp_path,
                                                                      monkeypatch):
    path = tmp_path / f"m.{fmt}"
    _export(fmt, tc.models.mnist_cnn(), path)
    before = path.read_bytes()

    def crash(fd):                    # every byte written, then Ctrl-C before it is on disk
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        _export(fmt, tc.models.mnist_cnn(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


# ---- safetensors ---------------------------------------------------------------------------------

@needs_safetensors
@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_safetensors_package_reads_back_every_tensor_exactly(name, rng, tmp_path):
    net = _zoo_net(name, rng)
    path = save_safetensors(net, tmp_path / "m.safetensors", metadata={"classes": ["a", "b"]})
    loaded, state = st_numpy.load_file(path), net.state_dict()
    assert list(loaded) == list(state) or sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["classes"] == '["a", "b"]'


def _torch_twin(name):
    """The torch net of tests/torch_nets.py matching ZOO[name], and the factor its logits need
    (torch_nets.resnet9 has no logit scale; airbench94's twin ends in its own Mul(1/9))."""
    sys.path.insert(0, os.path.dirname(__file__))
    import torch_nets
    args = ZOO[name][0]
    if name == "mnist_cnn":
        return torch_nets.mnist_cnn(), 1.0
    if name == "airbench94":
        return torch_nets.airbench94(widths=args["widths"]), 1.0
    return torch_nets.resnet9(width=args["width"]), args.get("logit_scale", 1.0)


@needs_torch
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("name", ["mnist_cnn", "resnet9", "resnet9_logit_scale", "airbench94"])
def test_weights_load_into_the_torch_twin_with_the_same_logits(name, fmt, rng, tmp_path):
    if name.replace("_logit_scale", "") not in tc.models.ARCHITECTURES:
        pytest.skip(f"{name} is not in this tinyconv")
    if fmt == "safetensors" and st_torch is None:
        pytest.skip("safetensors is not installed")
    net = _zoo_net(name, rng)
    twin, scale = _torch_twin(name)
    if fmt == "safetensors":
        state = st_torch.load_file(save_safetensors(net, tmp_path / "m.safetensors"))
    else:               # torch's own reader, in its safe mode, and mapped in place (aligned data)
        state = torch.load(save_pt(net, tmp_path / "m.pt"), weights_only=True, mmap=True)
    twin.load_state_dict(state, strict=True)
    twin.eval()
    x = rng.standard_normal((5, *ZOO[name][1])).astype(np.float32)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy() * scale
    np.testing.assert_allclose(theirs, _tinyconv_out(net, x), rtol=1e-4, atol=1e-4)


def test_safetensors_layout_header_aligned_and_offsets_contiguous(rng, tmp_path):
    import json
    import struct
    net = _zoo_net("mnist_cnn", rng)
    save_safetensors(net, tmp_path / "m.safetensors")
    blob = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0                               # the data starts 8-byte aligned
    header = json.loads(blob[8:8 + n])
    entries = [v for k, v in header.items() if k != "__metadata__"]
    ends = [0] + [e["data_offsets"][1] for e in entries]
    assert [e["data_offsets"][0] for e in entries] == ends[:-1]      # no gaps, no overlaps
    assert ends[-1] == len(blob) - 8 - n                              # and nothing after
    counter = header["0.1.num_batches_tracked"]              # a 0-d int64 stays 0-d int64
    assert (counter["dtype"], counter["shape"]) == ("I64", [])


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_round_trip_through_load_state_dict_file(fmt, rng, tmp_path):
    if not hasattr(tc, "load_state_dict_file"):
        pytest.skip("tc.load_state_dict_file (the weight-file reader) is not in this tinyconv")
    from tinyconv.torch_weights import read_state_dict_file
    net = _zoo_net("resnet9_logit_scale", rng)
    path = _export(fmt, net, tmp_path / f"m.{fmt}")
    fresh = tc.models.resnet9(**ZOO["resnet9_logit_scale"][0])
    tc.load_state_dict_file(fresh, path)
    ours = net.state_dict()
    for back in (read_state_dict_file(path), fresh.state_dict()):   # the file, then the net
        assert list(back) == list(ours)
        for key in ours:
            assert back[key].dtype == ours[key].dtype and back[key].shape == ours[key].shape, key
            np.testing.assert_array_equal(back[key], ours[key])


def test_pt_pickle_names_only_torch_rebuilders_and_ordered_dict(rng, tmp_path):
    import pickletools
    import zipfile
    with zipfile.ZipFile(save_pt(_zoo_net("mnist_cnn", rng), tmp_path / "m.pt")) as zf:
        names = zf.namelist()
        program = zf.read("archive/data.pkl")
    assert names[:2] == ["archive/data.pkl", "archive/byteorder"] and len(names) == 16 + 3
    called = {arg for op, arg, _ in pickletools.genops(program) if op.name == "GLOBAL"}
    assert called == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
                      "torch FloatStorage", "torch LongStorage"}


# ---- the command line ----------------------------------------------------------------------------

@pytest.fixture
def model_file(rng, tmp_path):
    """A saved mnist_cnn with what `tinyconv train` records: classes, mean, std, image_shape."""
    return tc.save(_zoo_net("mnist_cnn", rng), tmp_path / "model.npz",
                   classes=[str(i) for i in range(10)], mean=[0.1307], std=[0.3081],
                   image_shape=[28, 28, 1])


@needs_onnx
def test_cli_export_onnx_writes_next_to_the_model_and_runs_in_onnx_runtime(model_file, rng,
                                                                           capsys):
    from tinyconv.cli import main
    assert main(["export", model_file, "--format", "onnx"]) == 0
    path = model_file.replace(".npz", ".onnx")
    assert f"wrote {path}" in capsys.readouterr().out
    x = rng.standard_normal((7, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_onnx_out(path, x), _tinyconv_out(tc.load(model_file), x),
                               rtol=1e-4, atol=1e-4)


@needs_safetensors
def test_cli_export_safetensors_to_out(model_file, tmp_path):
    from tinyconv.cli import main
    out = str(tmp_path / "weights.safetensors")
    assert main(["export", model_file, "--format", "safetensors", "--out", out]) == 0
    loaded, state = st_numpy.load_file(out), tc.load(model_file).state_dict()
    assert sorted(loaded) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])


@needs_torch
def test_cli_export_pt_loads_with_torch_load(model_file, capsys):
    from tinyconv.cli import main
    assert main(["export", model_file, "--format", "pt"]) == 0
    path = model_file.replace(".npz", ".pt")
    assert f"wrote {path}" in capsys.readouterr().out
    state, ours = torch.load(path, weights_only=True), tc.load(model_file).state_dict()
    assert list(state) == list(ours)
    for key in ours:
        np.testing.assert_array_equal(state[key].numpy(), ours[key])


def test_cli_export_refusals_are_one_line_and_exit_2(model_file, rng, tmp_path, capsys):
    from tinyconv.cli import main
    bare = tc.save(_zoo_net("mnist_cnn", rng), tmp_path / "bare.npz")     # no image_shape
    cases = [(["export", str(tmp_path / "nope.npz"), "--format", "safetensors"],
              "nope.npz: no such model file"),
             (["export", model_file, "--format", "safetensors", "--out", model_file],
              "is the model file itself"),
             (["export", model_file, "--format", "onnx", "--input-shape", "1,28"],
              "expected C,H,W"),
             (["export", model_file, "--format", "tflite"], "invalid choice: 'tflite'"),
             (["export", model_file, "--format", "safetensors",
               "--out", str(tmp_path / "no" / "w.safetensors")], "cannot write")]
    if ort is not None:
        cases.append((["export", bare, "--format", "onnx"], "pass --input-shape C,H,W"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert sorted(os.listdir(tmp_path)) == ["bare.npz", "model.npz"]
