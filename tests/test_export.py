import numpy as np
import pytest
import torch

from avssl.cli import main as cli_main
from avssl.embed.embedder import load_model
from avssl.export import export_onnx
from test_embed import make_checkpoint

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("export") / "tiny.pt", seed=2)


def _compare(onnx_path, embedder, shapes):
    """The graph equals ``embed()`` on inputs of at most one window (a short one padded inside the graph) and the
    read-out of the input as one window on longer ones."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "audio" and sess.get_outputs()[0].name == "embedding"
    g = torch.Generator().manual_seed(0)
    for shape in shapes:  # dynamic batch and length, including lengths off the hop grid
        x = torch.randn(*shape, generator=g) * 0.2
        if shape[1] <= embedder.window:
            ref = embedder.embed(x, embedder.sample_rate)
        else:
            with torch.inference_mode():
                ref = embedder.forward_windows(x)[0].numpy()
        got = sess.run(None, {"audio": x.numpy()})[0]
        assert got.shape == (shape[0], embedder.embedding_dim)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_cli_export_spec_tower_with_logmel(tmp_path, ckpt):
    out = tmp_path / "spec.onnx"
    assert cli_main(["export", str(ckpt), "--onnx", str(out)]) == 0
    embedder = load_model(ckpt, device="cpu")
    import onnx

    graph = onnx.load(str(out)).graph
    assert {n.op_type for n in graph.node} >= {"Conv", "Log", "MatMul"}  # the front-end is in the graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_param  # symbolic length
    _compare(out, embedder, [(1, 16000), (3, 16000), (2, 7777), (1, 40123)])


def test_export_wave_tower(tmp_path, ckpt):
    embedder = load_model(ckpt, device="cpu", view="wave")
    path = export_onnx(embedder, tmp_path / "wave.onnx")
    _compare(path, embedder, [(2, 16000), (1, 23456)])


def test_export_follows_the_checkpoints_read_out(tmp_path):
    """``embed.features=layers`` (the modality, resolution and batch-mixing recipes): the graph gives what ``embed()``
    gives, every block's statistics, not the pooled last block."""
    ckpt = make_checkpoint(tmp_path / "layers.pt", seed=3, sets=["embed.features=layers"])
    out = tmp_path / "layers.onnx"
    assert cli_main(["export", str(ckpt), "--onnx", str(out)]) == 0
    embedder = load_model(ckpt, device="cpu")
    assert embedder.features == "layers" and embedder.embedding_dim > embedder.tower.feature_dim
    _compare(out, embedder, [(2, embedder.window), (1, embedder.window // 2), (1, embedder.window + 4321)])


def test_a_short_clip_is_padded_inside_the_graph(tmp_path, ckpt):
    embedder = load_model(ckpt, device="cpu")
    path = export_onnx(embedder, tmp_path / "spec.onnx")
    x = torch.randn(1, embedder.window // 2, generator=torch.Generator().manual_seed(5)) * 0.2
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"audio": x.numpy()})[0]
    np.testing.assert_allclose(got, embedder.embed(x, embedder.sample_rate), atol=1e-4, rtol=0)
    with torch.inference_mode():
        bare = embedder.tower(x).numpy()  # the tower on the unpadded half window: what the graph gave before
    assert np.abs(got - bare).max() > 1e-3
