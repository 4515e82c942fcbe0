"""Model files: round trip, metadata, atomic writes, and clear errors for bad files."""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import models, nn
from tinyconv.serialize import HEADER_KEY, ModelFileError, load, read_model_file, save


@pytest.fixture
def trained_net(rng):
    """A small resnet9 whose running statistics and weights differ from a fresh one."""
    net = models.resnet9(num_classes=4, width=4, rng=rng)
    for b in net.buffers():
        b.data += (rng.random(b.shape) * 3).astype(b.dtype)
    for p in net.parameters():
        p.data += rng.standard_normal(p.shape).astype(np.float32) * 0.01
    return net


def _predict(net, x):
    with tc.no_grad():
        return net.eval()(tc.Tensor(x)).data


def test_round_trip_gives_identical_predictions_and_metadata(trained_net, tmp_path, rng):
    path = tmp_path / "net.npz"
    assert save(trained_net, path, classes=["a", "b", "c", "d"], mean=np.array([0.5, 0.4, 0.3]),
                std=[0.2, 0.2, 0.2]) == str(path)
    loaded = load(path)
    assert isinstance(loaded, models.ResNet9) and loaded.arch_args == {"num_classes": 4, "width": 4}
    assert not loaded.training
    assert loaded.meta == {"classes": ["a", "b", "c", "d"], "mean": [0.5, 0.4, 0.3],
                           "std": [0.2, 0.2, 0.2]}
    for key, value in trained_net.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype, key
        np.testing.assert_array_equal(got, value, err_msg=key)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(trained_net, x))


def test_metadata_survives_a_second_save(trained_net, tmp_path):
    save(trained_net, tmp_path / "a.npz", classes=["w", "x", "y", "z"])
    again = load(tmp_path / "a.npz")
    save(again, tmp_path / "b.npz", note="fine-tuned")
    assert load(tmp_path / "b.npz").meta == {"classes": ["w", "x", "y", "z"], "note": "fine-tuned"}


def test_file_is_a_plain_npz_readable_without_pickle(trained_net, tmp_path):
    path = tmp_path / "net.npz"
    save(trained_net, path)
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(str(npz[HEADER_KEY][()]))
        assert header["arch"] == "resnet9" and header["tinyconv_version"] == tc.__version__
        assert header["keys"] == list(trained_net.state_dict())
        assert npz["0.0.weight"].dtype == np.float32


def test_learner_like_object_saves_its_model(trained_net, tmp_path):
    class FakeLearner:
        model = trained_net
    save(FakeLearner(), tmp_path / "l.npz")
    assert load(tmp_path / "l.npz").num_parameters() == trained_net.num_parameters()
    with pytest.raises(TypeError, match="expected a Module or a Learner"):
        save(object(), tmp_path / "x.npz")


def test_custom_model_needs_a_model_to_load_into(tmp_path):
    net = nn.Sequential(nn.Linear(3, 2))
    save(net, tmp_path / "c.npz")
    with pytest.raises(ModelFileError, match="custom model .*Sequential.*model=net"):
        load(tmp_path / "c.npz")
    other = nn.Sequential(nn.Linear(3, 2))
    load(tmp_path / "c.npz", model=other)
    np.testing.assert_array_equal(other[0].weight.data, net[0].weight.data)


# ---- atomic writes -------------------------------------------------------------------------------

def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(trained_net, tmp_path,
                                                                 monkeypatch):
    path = tmp_path / "net.npz"
    save(trained_net, path, version=1)
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"half a model")
        raise KeyboardInterrupt                   # e.g. Ctrl-C in the middle of a save
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save(trained_net, path, version=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.npz"]


def test_unserialisable_metadata_is_rejected_before_writing(trained_net, tmp_path):
    with pytest.raises(TypeError, match="metadata value of type object"):
        save(trained_net, tmp_path / "m.npz", bad=object())
    assert os.listdir(tmp_path) == []


# ---- bad files -----------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_truncated_file_raises_naming_the_file(trained_net, tmp_path, keep):
    path = tmp_path / "net.npz"
    save(trained_net, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelFileError, match=r"net\.npz: cannot read the model file"):
        load(path)


def test_corrupted_bytes_fail_the_checksum(trained_net, tmp_path):
    path = tmp_path / "net.npz"
    save(trained_net, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                      # flip one byte inside some array
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"net\.npz"):
        load(path)


def test_foreign_files_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="notes.txt: cannot read"):
        load(text)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ModelFileError, match="array.npy: not a tinyconv model file"):
        load(npy)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="other.npz: not a tinyconv model file.*weights"):
        load(other)
    fake = tmp_path / "fake.npz"
    np.savez(fake, **{HEADER_KEY: np.array(json.dumps({"format": "something-else"}))})
    with pytest.raises(ModelFileError, match="fake.npz: not a tinyconv model file"):
        load(fake)


def test_a_pickle_inside_the_archive_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    path = tmp_path / "evil.npz"
    np.savez(path, **{HEADER_KEY: np.array(json.dumps({"format": "tinyconv-model", "keys": ["w"]})),
                      "w": np.array([Boom()], dtype=object)})
    with pytest.raises(ModelFileError, match="evil.npz"):
        load(path)
    assert not (tmp_path / "pwned").exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelFileError, match="evil.pkl"):
        load(plain)
    assert not (tmp_path / "pwned").exists()


def test_wrong_architecture(trained_net, tmp_path):
    path = tmp_path / "net.npz"
    save(trained_net, path)
    with pytest.raises(ModelFileError, match=r"net\.npz: wrong architecture: the file holds "
                                             r"resnet9.*the model is mnist_cnn"):
        load(path, model=models.mnist_cnn())
    with pytest.raises(ModelFileError, match=r"wrong architecture.*'width': 4.*'width': 8"):
        load(path, model=models.resnet9(num_classes=4, width=8))


def test_unknown_architecture_name(trained_net, tmp_path):
    path = tmp_path / "net.npz"
    save(trained_net, path)
    state, header = read_model_file(path)
    header["arch"] = "alexnet"
    np.savez(path, **state, **{HEADER_KEY: np.array(json.dumps(header))})
    with pytest.raises(ModelFileError, match="net.npz: unknown architecture 'alexnet'"):
        load(path)


def test_missing_and_mismatched_keys_are_listed(trained_net, tmp_path):
    path = tmp_path / "net.npz"
    save(trained_net, path)
    state, header = read_model_file(path)
    del state["3.res1.1.running_var"]
    state["11.weight"] = np.zeros((4, 16), dtype=np.float32)
    header["keys"] = list(state)
    np.savez(path, **state, **{HEADER_KEY: np.array(json.dumps(header))})
    with pytest.raises(ModelFileError) as err:
        load(path)
    message = str(err.value)
    assert "net.npz: does not fit ResNet9" in message
    assert "missing keys: 3.res1.1.running_var" in message
    assert "11.weight: file (4, 16), model (4, 32)" in message


def test_header_listing_absent_arrays(trained_net, tmp_path):
    path = tmp_path / "net.npz"
    save(trained_net, path)
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n != "0.0.weight.npy"]
        contents = {n: z.read(n) for n in names}
    with zipfile.ZipFile(path, "w") as z:
        for n, data in contents.items():
            z.writestr(n, data)
    with pytest.raises(ModelFileError, match="net.npz: the header lists arrays the file lacks: "
                                             "0.0.weight"):
        load(path)
