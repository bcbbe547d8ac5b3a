import numpy as np
import pytest
import torch

from avssl import hear
from test_embed import make_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return hear.load_model(str(make_checkpoint(tmp_path_factory.mktemp("hear") / "tiny.pt", seed=1)))


def _audio(n_sounds, seconds, rate, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n_sounds, int(seconds * rate), generator=g) * 2 - 1) * 0.5


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert isinstance(model.sample_rate, int) and model.sample_rate == 16000
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == model.embedder.embedding_dim
    with pytest.raises(ValueError, match="checkpoint"):
        hear.load_model("")


@pytest.mark.parametrize("seconds", [0.05, 1.0, 2.37, 4.0])
def test_scene_embeddings_any_length(model, seconds):
    audio = _audio(3, seconds, model.sample_rate)
    emb = hear.get_scene_embeddings(audio, model)
    assert isinstance(emb, torch.Tensor) and emb.dtype == torch.float32
    assert emb.shape == (3, model.scene_embedding_size) and emb.device == audio.device
    assert torch.isfinite(emb).all()
    single = hear.get_scene_embeddings(audio[1:2], model)  # the batch does not change a sound's embedding
    torch.testing.assert_close(emb[1:2], single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(emb.numpy(), model.embedder.embed(audio.numpy(), model.sample_rate), atol=1e-6)


@pytest.mark.parametrize("seconds", [0.05, 1.0, 2.37])
def test_timestamp_embeddings_follow_the_rules(model, seconds):
    audio = _audio(2, seconds, model.sample_rate, seed=1)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert isinstance(emb, torch.Tensor) and isinstance(ts, torch.Tensor)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 2 and emb.shape[2] == model.timestamp_embedding_size
    hops = torch.diff(ts, dim=1)
    assert ts.shape[1] == 1 or (torch.allclose(hops, hops[:, :1]) and hops.max() <= 50.0 + 1e-4)
    assert ts[0, 0] == 0 and (ts[:, -1] <= seconds * 1000 + 1e-3).all()
    assert ts.shape[1] == int(seconds * 1000 // hear.TIMESTAMP_HOP_MS) + 1  # the whole sound is covered
    torch.testing.assert_close(ts[0], ts[1])
    assert torch.isfinite(emb).all()
    one, _ = hear.get_timestamp_embeddings(audio[1:], model)
    torch.testing.assert_close(emb[1:], one, atol=1e-5, rtol=0)


def test_rejects_wrong_input(model):
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_timestamp_embeddings(torch.zeros(2, 0), model)
