import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from edgecc.bundle import digest, load_bundle, save_bundle
from edgecc.coding.schemes import Scheme
from edgecc.errors import ModelFileError
from edgecc.export import collapse_affine, worker_arrays
from edgecc.modelfile import canonical_bytes, content_id, load_model, read_header, save_model
from edgecc.nets import AICC
from edgecc.worker.compute import EncodedCompute


def test_round_trip_keeps_weights_and_config(tmp_path):
    s = Scheme(K=2, G=2, P=1, computation="hs", encoder="cl", compute_arch="mlp")
    torch.manual_seed(0)
    m = AICC(s)
    save_model(tmp_path / "m.safetensors", m, {"kind": "aicc", "scheme": s.to_dict(), "training": {"epochs": 1}})
    m2, info = load_model(tmp_path / "m.safetensors")
    assert info["scheme"] == s.to_dict() and info["training"] == {"epochs": 1}
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644



_SAVE_IN_A_FRESH_PROCESS = """
import sys, torch
from edgecc.modelfile import save_model
torch.manual_seed(0)
save_model(sys.argv[1], torch.nn.Linear(4, 3), {"kind": "centralized-mlp", "training": {"epochs": 1, "seed": 0}})
"""


def test_saving_the_same_model_gives_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its metadata keys in a per-process hash order; the model file must not depend on
    it, or a run started from a re-saved model refuses to resume (its content id changed) and a committed
    model changes on every re-save. Three processes: unsorted headers would all agree with chance 1/36."""
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for f in files:
        subprocess.run([sys.executable, "-c", _SAVE_IN_A_FRESH_PROCESS, str(f)], check=True)
    assert len({f.read_bytes() for f in files}) == 1
    assert len({content_id(f) for f in files}) == 1


def test_content_id_ignores_the_header_order_and_refuses_garbage(tmp_path):
    s = Scheme(K=2, G=1, P=1, computation="hb", encoder="cl", compute_arch="cl")
    torch.manual_seed(0)
    save_model(tmp_path / "m.safetensors", AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
    blob = (tmp_path / "m.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    reordered = json.dumps(dict(reversed(list(header.items()))), separators=(", ", ": ")).encode()  # another writer's form
    (tmp_path / "r.safetensors").write_bytes(len(reordered).to_bytes(8, "little") + reordered + blob[8 + n :])
    assert (tmp_path / "r.safetensors").read_bytes() != blob
    assert content_id(tmp_path / "r.safetensors") == content_id(tmp_path / "m.safetensors")
    assert canonical_bytes((tmp_path / "r.safetensors").read_bytes()) == blob
    m2, _ = load_model(tmp_path / "r.safetensors")  # the reordered file is still a valid model file
    for junk, why in ((b"\x01", "shorter than"), (b"\xff" * 8 + b"{}", "runs past the end"), (b"\x04" + b"\x00" * 7 + b"{{{{", "unreadable header")):
        (tmp_path / "j").write_bytes(junk)
        with pytest.raises(ModelFileError, match=why):
            content_id(tmp_path / "j")
    with pytest.raises(ModelFileError, match="not found"):
        content_id(tmp_path / "missing.safetensors")

def _stored(tmp_path, storage):
    """An MLP-encoder model saved in float32 and in `storage`: (model, info, size ratio storage / float32)."""
    s = Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp")
    torch.manual_seed(0)
    m = AICC(s)
    info = {"kind": "aicc", "scheme": s.to_dict()}
    save_model(tmp_path / "f32.safetensors", m, info)
    save_model(tmp_path / f"{storage}.safetensors", m, info, storage=storage)
    size = lambda name: (tmp_path / f"{name}.safetensors").stat().st_size
    return m, info, size(storage) / size("f32")


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    """Large committed checkpoints (the MLP-encoder cells) are stored in float16; they load as float32
    equal to the float16-rounded weights, so the file alone defines what it evaluates to."""
    m, info, ratio = _stored(tmp_path, "f16")
    assert ratio < 0.51
    m16, _ = load_model(tmp_path / "f16.safetensors")
    for (k, a), (_, b) in zip(m.state_dict().items(), m16.state_dict().items()):
        assert b.dtype == torch.float32 and torch.equal(a.half().float(), b), k
    with pytest.raises(ModelFileError, match="storage"):
        save_model(tmp_path / "x.safetensors", m, info, storage="int8")
    meta = {"format": "edgecc-model", "version": "1", "info": json.dumps(info)}
    save_file({k: v.numpy().astype(np.float64) for k, v in m.state_dict().items()}, str(tmp_path / "f64.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="float32, float16 or int8"):
        load_model(tmp_path / "f64.safetensors")


def test_int8_storage_quarters_the_file_within_half_a_step_per_weight(tmp_path):
    """q8 (the cell whose float16 file is still over the repository limit): weight matrices as int8 with a
    float32 scale per row, loaded as float32 within scale/2 of the original; the file alone defines the model."""
    m, info, ratio = _stored(tmp_path, "q8")
    assert ratio < 0.26
    mq, _ = load_model(tmp_path / "q8.safetensors")
    for (k, a), (_, b) in zip(m.state_dict().items(), mq.state_dict().items()):
        assert b.dtype == torch.float32, k
        if a.ndim >= 2 and a.numel() >= 4096:
            step = a.reshape(a.shape[0], -1).abs().amax(1) / 127
            err = (a - b).reshape(a.shape[0], -1).abs().amax(1)
            assert torch.all(err <= step / 2 + 1e-7) and not torch.equal(a, b), k
        else:
            assert torch.equal(a.half().float(), b), k  # small tensors: float16
    save_model(tmp_path / "q8b.safetensors", mq, info, storage="q8")  # a dequantized model re-quantizes to itself
    mq2, _ = load_model(tmp_path / "q8b.safetensors")
    for (k, a), (_, b) in zip(mq.state_dict().items(), mq2.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_int8_tensors_without_a_valid_scale_are_refused(tmp_path):
    s = Scheme(K=2, G=1)
    info = {"kind": "aicc", "scheme": s.to_dict()}
    arrays = {k: v.numpy().copy() for k, v in AICC(s).state_dict().items()}
    name = next(k for k, v in arrays.items() if v.ndim == 2)
    w = arrays.pop(name)
    q = np.zeros(w.shape, np.int8)
    with pytest.raises(ModelFileError, match="needs a float32 scale"):
        load_model(_model_file(tmp_path, {**arrays, name: q}, info))
    with pytest.raises(ModelFileError, match="needs a float32 scale"):
        load_model(_model_file(tmp_path, {**arrays, name: q, name + "#scale": np.ones(3, np.float32)}, info))
    with pytest.raises(ModelFileError, match="negative, NaN or Inf"):
        load_model(_model_file(tmp_path, {**arrays, name: q, name + "#scale": np.full(w.shape[0], np.nan, np.float32)}, info))
    with pytest.raises(ModelFileError, match="belongs to no int8 tensor"):
        load_model(_model_file(tmp_path, {**arrays, name: w, name + "#scale": np.ones(w.shape[0], np.float32)}, info))
    model, _ = load_model(_model_file(tmp_path, {**arrays, name: q, name + "#scale": np.ones(w.shape[0], np.float32)}, info))
    assert torch.equal(model.state_dict()[name], torch.zeros(w.shape))


def test_garbage_and_foreign_files_are_refused(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        load_model(tmp_path / "junk")
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelFileError, match="not an edgecc model"):
        load_model(tmp_path / "foreign.safetensors")
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "v9.safetensors"), metadata={"format": "edgecc-model", "version": "9", "info": "{}"})
    with pytest.raises(ModelFileError, match="version 9 is not supported"):
        read_header(tmp_path / "v9.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def _model_file(tmp_path, arrays, info):
    meta = {"format": "edgecc-model", "version": "1", "info": json.dumps(info)}
    save_file(arrays, str(tmp_path / "m.safetensors"), metadata=meta)
    return tmp_path / "m.safetensors"


def test_nan_weights_and_wrong_shapes_are_refused(tmp_path):
    s = Scheme(K=2, G=1)
    info = {"kind": "aicc", "scheme": s.to_dict()}
    arrays = {k: v.numpy().copy() for k, v in AICC(s).state_dict().items()}
    name = next(iter(arrays))
    arrays[name].flat[0] = np.nan
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(_model_file(tmp_path, arrays, info))
    arrays[name] = np.zeros((3, 3), np.float32)
    with pytest.raises(ModelFileError, match="shape"):
        load_model(_model_file(tmp_path, arrays, info))
    del arrays[name]
    with pytest.raises(ModelFileError, match="missing"):
        load_model(_model_file(tmp_path, arrays, info))
    with pytest.raises(ModelFileError, match="unknown model kind"):
        load_model(_model_file(tmp_path, arrays, {"kind": "resnet"}))


@pytest.mark.parametrize("scheme", [Scheme(K=2, G=1), Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp"),
                                    Scheme(K=2, G=1, P=3, computation="hs")])
def test_collapsed_affine_map_equals_the_network(scheme):
    torch.manual_seed(0)
    m = AICC(scheme).eval()
    info = {"kind": "aicc", "scheme": scheme.to_dict()}
    compute = EncodedCompute(scheme, worker_arrays(m, info, "encoded"))
    x = torch.rand(5, scheme.K, 28, 28)
    with torch.no_grad():
        xt = m.encode(x, [0.25])[:, 0]
        v = m.lambdas(x) if scheme.computation == "hs" else None
        want = m.compute(xt[:, None], v).numpy()[:, 0]
    got = compute(xt.numpy(), None if v is None else v.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_collapse_is_exact_in_float64():
    net = AICC(Scheme(K=2, G=1)).hb
    A, b = collapse_affine(net)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        want = net.double()(x).reshape(3, 10).numpy()
    np.testing.assert_allclose(x.reshape(3, 784).numpy() @ A.T + b, want, rtol=1e-10, atol=1e-10)


def test_bundle_checksum_rejects_modified_file(tmp_path):
    arrays = {"affine.weight": np.ones((10, 784), np.float32), "affine.bias": np.zeros(10, np.float32)}
    d = save_bundle(tmp_path / "b.safetensors", {"kind": "aicc"}, arrays)
    info, loaded, d2 = load_bundle(tmp_path / "b.safetensors")
    assert d == d2 == digest(arrays)
    raw = bytearray((tmp_path / "b.safetensors").read_bytes())
    raw[-5] ^= 0x01  # flip one bit of the last weight
    (tmp_path / "b.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_bundle(tmp_path / "b.safetensors")


def test_export_cli_writes_a_bundle_the_worker_accepts(tmp_path, tiny_models):
    out = tmp_path / "bundle.safetensors"
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "export", str(tiny_models["hb"]), "--out", str(out)],
                       capture_output=True, text=True, check=True)
    res = json.loads(r.stdout)
    assert res["arrays"] == {"affine.bias": [10], "affine.weight": [10, 784]}
    info, arrays, d = load_bundle(out)
    assert d == res["sha256"] and info["placement"] == "encoded"


def test_collapse_works_inside_inference_mode():
    net = AICC(Scheme(K=2, G=1)).hb
    with torch.inference_mode():
        A, b = collapse_affine(net)
    assert A.shape == (10, 784) and np.isfinite(A).all()
