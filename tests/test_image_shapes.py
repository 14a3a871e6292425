"""Networks and training on any image shape (C, H, W): the paper's networks keep their exact weights and
outputs on 1×28×28, and the same code trains and reloads models of colour images and other sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecc.coding.schemes import Scheme
from edgecc.data import load_sample
from edgecc.modelfile import build_model, load_model
from edgecc.nets import AICC, CentralizedCNN, CentralizedMLP
from edgecc.nets.resnet import ResNet18
from edgecc.protocol.images import dims, image_of, model_image
from edgecc.train import TrainConfig, augment, train

Image = pytest.importorskip("PIL.Image")


def test_one_channel_images_keep_the_paper_layout():
    assert dims((1, 28, 28)) == (28, 28) and dims((3, 32, 32)) == (3, 32, 32)
    assert image_of((28, 28)) == (1, 28, 28) and image_of((3, 32, 32)) == (3, 32, 32)
    assert model_image({}) == (1, 28, 28)  # model files that predate the field hold the paper's images
    with pytest.raises(ValueError, match=r"\[C, H, W\] with C 1 or 3"):
        model_image({"image": [2, 28, 28]})


@pytest.mark.parametrize("image", [(1, 28, 28), (3, 32, 32), (3, 12, 20)])
@pytest.mark.parametrize("encoder,compute,computation", [("cl", "cl", "hb"), ("mlp", "mlp", "hs")])
def test_aicc_networks_on_any_shape(image, encoder, compute, computation):
    if encoder == "mlp" and image[1] * image[2] * image[0] > 1000:
        pytest.skip("the MLP encoder's K·CHW square layers are too large for a unit test at this size")
    scheme = Scheme(K=2, G=1, P=2 if computation == "hs" else 1, computation=computation, encoder=encoder, compute_arch=compute)
    model = AICC(scheme, image, classes=7).eval()
    x = torch.rand(5, 2, *dims(image))
    with torch.inference_mode():
        assert model(x).shape == (5, 2, 7)
        xt = model.encode(x, [0.2, 0.5, 0.8])
        assert xt.shape == (5, 3, *dims(image))
        v = model.lambdas(x) if computation == "hs" else None
        # the distributed path (encode, compute at the points) equals the direct one at the β's
        np.testing.assert_allclose(model.compute(model.encode(x, model.betas), v).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_baselines_and_resnet_on_colour_images():
    x = torch.rand(4, 3, 32, 32)
    for net in (CentralizedMLP((3, 32, 32), 5), CentralizedCNN(image=(3, 32, 32), classes=5), ResNet18((3, 32, 32), 5)):
        assert net.eval()(x).shape == (4, 5)
    assert ResNet18((1, 28, 28))(torch.rand(2, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 8×8"):
        ResNet18((1, 4, 4))


def test_the_shipped_models_build_with_the_paper_shapes():
    for name in ("default", "default-mlp", "learned-code"):
        net, info = load_model(name)
        assert "image" not in info  # and still load: their networks are the paper's 1×28×28 ones
        assert {k: tuple(v.shape) for k, v in build_model(info).state_dict().items()} == \
               {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_augment_moves_every_channel_of_an_image_together():
    x = torch.rand(6, 3, 10, 10)
    x[:, 1] = x[:, 0]
    out = augment(x, torch.Generator().manual_seed(1), (3, 10, 10))
    assert torch.equal(out[:, 0], out[:, 1]) and not torch.equal(out, x)


@pytest.fixture(scope="module")
def colour_npz(tmp_path_factory):
    """Real Fashion-MNIST images as a 3×16×16 set (resized, channels differing), in the npz format."""
    x, y = load_sample()
    small = np.stack([np.asarray(Image.fromarray(im).resize((16, 16), Image.Resampling.BILINEAR)) for im in x[:300]])
    rgb = np.stack([small, 255 - small, small // 2], axis=1).astype(np.uint8)
    path = tmp_path_factory.mktemp("npz") / "colour.npz"
    np.savez(path, x=rgb, y=y[:300], classes=np.array([f"c{i}" for i in range(10)]))
    return path


@pytest.mark.parametrize("kind", ["aicc", "centralized-cnn", "centralized-resnet18"])
def test_train_and_reload_a_model_of_colour_images(tmp_path, colour_npz, kind):
    scheme = Scheme(K=2, G=1, P=1, computation="hb", encoder="cl", compute_arch="cl") if kind == "aicc" else None
    cfg = TrainConfig(epochs=1, batch=16, precision="fp32", data=f"npz:{colour_npz}", limit=96)
    out = tmp_path / "m.safetensors"
    info = train(kind, scheme, cfg, out)
    assert info["image"] == [3, 16, 16] and info["classes"] == [f"c{i}" for i in range(10)]
    assert info["training"]["data"] == f"npz:{colour_npz}" and info["training"]["train_images"] == 96
    net, loaded = load_model(out)
    assert model_image(loaded) == (3, 16, 16)
    x = torch.rand(4, 2, 3, 16, 16) if kind == "aicc" else torch.rand(4, 3, 16, 16)
    assert net(x).shape[-1] == 10


@pytest.mark.parametrize("kind,image", [("resnet18", (3, 16, 16)), ("cnn", (3, 12, 12)), ("resnet18", (1, 28, 28))])
async def test_a_worker_runs_a_convolutional_base_on_any_image(kind, image):
    """The worker's "cnn" and "resnet18" kinds, configured over the real protocol, compute what the torch
    model computes (ResNet-18 with its batch-norm statistics, sent as plain f4 arrays)."""
    from edgecc.bundle import digest
    from edgecc.comm import connect
    from edgecc.master.handshake import client_handshake
    from edgecc.protocol import compute_spec
    from edgecc.protocol.frames import pack_array, unpack_array
    from edgecc.protocol.handshake import ClientHandshake
    from edgecc.protocol.messages import Compute, Configure, Result
    from edgecc.worker.plain_cnn import cnn_arrays, resnet_arrays
    from edgecc.worker.server import Worker

    torch.manual_seed(3)
    net = ResNet18(image, 7) if kind == "resnet18" else CentralizedCNN(image=image, classes=7)
    if kind == "resnet18":  # statistics other than batch-norm's initial ones, so that sending them matters
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.rand(8, *image))
    net.eval()
    arrays = resnet_arrays(net) if kind == "resnet18" else cnn_arrays(net)
    spec = (compute_spec.resnet18 if kind == "resnet18" else compute_spec.cnn)(dims(image), 7)
    configure = Configure(0, "uncoded", {}, spec.to_wire(), "f4", digest(arrays),
                          {k: pack_array(v) for k, v in arrays.items()}, None)
    token = b"t" * 32
    w = Worker(token)
    comm = await connect(await w.start("mem://"))
    try:
        await client_handshake(comm, ClientHandshake(token, configure=lambda hello: configure))
        x = np.random.default_rng(0).random((5, *dims(image)), dtype=np.float32)
        await comm.write(Compute(1, pack_array(x), None, None, None))
        r = await comm.read(timeout=30)
        assert isinstance(r, Result), r
        with torch.inference_mode():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(unpack_array(r.y, "y", shape=(5, 7)), want, rtol=1e-4, atol=1e-4)
    finally:
        await comm.close()
        await w.close()


def test_colour_models_train_in_fp32_on_the_cpu(tmp_path, colour_npz):
    """bf16 autocast crashes torch 2.13's oneDNN in the backward pass of 3-channel dilated stacks: a colour
    model asked to train in bf16 on the CPU trains in fp32, says so, and records what ran."""
    scheme = Scheme(K=2, G=1, P=1, computation="hb", encoder="cl", compute_arch="cl")
    cfg = TrainConfig(epochs=1, batch=8, precision="bf16", data=f"npz:{colour_npz}", limit=32)
    with pytest.warns(UserWarning, match="colour images train in fp32"):
        info = train("aicc", scheme, cfg, tmp_path / "m.safetensors")
    assert info["training"]["precision"] == "fp32"
