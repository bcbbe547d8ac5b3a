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
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "audio" and sess.get_outputs()[0].name == "embedding"
    g = torch.Generator().manual_seed(0)
    for shape in shapes:  # dynamic batch and length, including lengths off the hop grid
        x = torch.randn(*shape, generator=g) * 0.2
        with torch.inference_mode():
            ref = embedder.tower(x).numpy()
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
