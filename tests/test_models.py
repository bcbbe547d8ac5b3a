import numpy as np
import pytest
import torch

from avssl.config import load_config
from avssl.models import AVModel, VideoTower, build_model, create_model, list_models, tower_name
from avssl.models.video import temporal_shift

AUDIO = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))  # 0.5 s at 16 kHz


def _input(model, size=32, frames=3):
    if isinstance(model, VideoTower):
        return torch.randint(
            0, 256, (2, frames, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
        )
    return AUDIO


def _width(name):
    # paper-scale towers keep their topology at a quarter of the width, so the check stays quick on CPU
    return 0.25 if not name.endswith(("-tiny", "-small")) else 1.0


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model(name):
    torch.manual_seed(0)
    model = create_model(name, width=_width(name))
    x = _input(model)
    feats = model.forward_features(x)
    pooled = model(x)
    assert feats.dim() == 3 and feats.shape[0] == 2 and feats.shape[2] == model.feature_dim
    assert pooled.shape == (2, model.feature_dim)
    assert torch.isfinite(feats).all() and torch.isfinite(pooled).all()
    (pooled.square().mean() + feats.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reaches {missing}"


def test_registry_errors_and_overrides():
    with pytest.raises(KeyError, match="cnn14-tiny"):
        create_model("cnn14-huge")
    assert create_model("cnn14-tiny", width=2.0).feature_dim == 2 * create_model("cnn14-tiny").feature_dim
    assert create_model("tsm-resnet50-tiny").feature_dim == 4 * create_model("tsm-resnet18-tiny").feature_dim
    assert {"cnn14-tiny", "res1dnet-small", "tsm-resnet50"} <= set(list_models())


@pytest.mark.parametrize("name", ["tsm-resnet18-tiny", "tsm-resnet50-tiny"])
@pytest.mark.parametrize("size", [32, 64, 112, 224])
def test_video_tower_resolutions(name, size):
    model = create_model(name, input_size=size).eval()
    frames = torch.rand(1, 2, 3, size, size)
    feats = model.forward_features(frames)
    assert feats.shape == (1, 2, model.feature_dim) and torch.isfinite(feats).all()
    # the stem brings every listed size to a first-stage map of at least 16 x 16 (28 or 56 px above 64)
    stage1 = model.stem((frames.flatten(0, 1) - model.mean) / model.std).shape[-1]
    assert stage1 == {32: 16, 64: 16, 112: 28, 224: 56}[size]


def test_temporal_shift_matches_loop():
    x = torch.randn(2 * 4, 16, 3, 3)
    y = temporal_shift(x, 4, 2).view(2, 4, 16, 3, 3)
    x5 = x.view(2, 4, 16, 3, 3)
    for t in range(4):
        torch.testing.assert_close(y[:, t, :2], x5[:, t - 1, :2] if t > 0 else torch.zeros_like(x5[:, 0, :2]))
        torch.testing.assert_close(y[:, t, 2:4], x5[:, t + 1, 2:4] if t < 3 else torch.zeros_like(x5[:, 0, 2:4]))
        torch.testing.assert_close(y[:, t, 4:], x5[:, t, 4:])


def test_video_frames_exchange_information_only_through_the_shift():
    model = create_model("tsm-resnet18-tiny").eval()
    frames = torch.rand(1, 3, 3, 32, 32)
    changed = frames.clone()
    changed[:, 0] = torch.rand(3, 32, 32)
    a, b = model.forward_features(frames), model.forward_features(changed)
    assert not torch.allclose(a[:, 1], b[:, 1])  # frame 1 sees frame 0 through the shift
    for blk in model.blocks:
        blk.fold = 0  # fold 0 shifts nothing: frames become independent
    a, b = model.forward_features(frames), model.forward_features(changed)
    torch.testing.assert_close(a[:, 1:], b[:, 1:])


def test_uint8_frames_equal_float_frames():
    model = create_model("tsm-resnet18-tiny").eval()
    frames = torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(model(frames), model(frames.float() / 255))


@pytest.mark.parametrize("name", ["cnn14-tiny", "spec-resnet-tiny", "res1dnet-tiny", "cnn14-small", "res1dnet-small"])
def test_audio_frame_hop_matches_feature_length(name):
    model = create_model(name).eval()
    for seconds in (1.0, 2.5):
        steps = model.forward_features(torch.randn(1, int(seconds * 16000))).shape[1]
        assert abs(steps * model.frame_hop_seconds - seconds) <= model.frame_hop_seconds


def test_features_are_causal_in_time():
    """A change late in the waveform leaves early feature steps (far from it) untouched."""
    model = create_model("res1dnet-tiny").eval()
    x = torch.randn(1, 32000)
    y = x.clone()
    y[:, 24000:] = 0
    a, b = model.forward_features(x), model.forward_features(y)
    step = int(24000 / (model.frame_hop_seconds * 16000))
    torch.testing.assert_close(a[:, : step - 3], b[:, : step - 3])
    assert not torch.allclose(a[:, step + 1 :], b[:, step + 1 :])


def test_build_model_tiny_forward():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, AVModel) and set(model.towers) == {"spec", "wave", "video"}
    n = int(cfg.data.crop_seconds * cfg.audio.sample_rate)
    t = int(cfg.data.crop_seconds * cfg.video.fps)
    audio = torch.randn(4, n)
    frames = torch.randint(0, 256, (4, t, 3, cfg.video.size, cfg.video.size), dtype=torch.uint8)
    out = model(audio, frames)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        v: (4, cfg.model.embed_dim) for v in ("spec", "wave", "video")
    }
    assert set(model(audio, None)) == {"spec", "wave"}
    sum(o.square().mean() for o in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)] == []
    model.eval()
    torch.testing.assert_close(model(audio, None)["spec"], model.heads["spec"](model.towers["spec"](audio)))
    # a rebuilt model loads the state dict (the checkpoint contract)
    clone = build_model(cfg)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.eval()(audio, frames)["video"], model(audio, frames)["video"])


def test_build_model_views_and_presets():
    cfg = load_config("tiny", ["model.views=[spec]"])
    assert list(build_model(cfg).towers) == ["spec"]
    assert tower_name("video", "paper", 50) == "tsm-resnet50"
    assert tower_name("wave", "small") == "res1dnet-small"
    assert tower_name("spec", "tiny", spec_arch="resnet") == "spec-resnet-tiny"
    resnet = build_model(load_config("tiny", ["model.spec_arch=resnet", "model.views=[spec]"])).towers["spec"]
    expected = create_model("spec-resnet-tiny")
    assert [tuple(p.shape) for p in resnet.parameters()] == [tuple(p.shape) for p in expected.parameters()]
    assert sorted(resnet.state_dict()) != sorted(create_model("cnn14-tiny").state_dict())
    with pytest.raises(ValueError, match="spec_arch"):
        tower_name("spec", "tiny", spec_arch="vit")
    with pytest.raises(ValueError, match="preset"):
        build_model(load_config("tiny", ["model.preset=huge"]))
    with pytest.raises(ValueError, match="view"):
        build_model(load_config("tiny", ["model.views=[spec, text]"]))


def test_spec_mask_only_in_training_and_seeded():
    from avssl.models.spec import SpecMask

    x = torch.randn(3, 1, 50, 16) + 5
    mask = SpecMask(seed=1, masks=2, max_time=0.2, max_freq=4)
    y = mask(x)
    zeroed = y == 0
    assert zeroed.any() and torch.equal(y[~zeroed], x[~zeroed])
    # zeros form whole time rows or whole mel columns
    rows, cols = zeroed.all(dim=3), zeroed.all(dim=2)
    torch.testing.assert_close(zeroed, rows[..., None] | cols[:, :, None, :])
    assert cols.sum(-1).le(8).all() and rows.sum(-1).le(20).all()
    torch.testing.assert_close(SpecMask(seed=1, masks=2, max_time=0.2, max_freq=4)(x), y)
    assert torch.equal(mask.eval()(x), x)
    cfg = load_config("tiny", ["augment.spec_mask=true"])
    tower = build_model(cfg).towers["spec"]
    assert isinstance(tower.mask, SpecMask)
    tower.eval()
    plain = build_model(load_config("tiny")).towers["spec"]
    plain.load_state_dict(tower.state_dict())
    torch.testing.assert_close(plain.eval()(AUDIO), tower(AUDIO))


def test_layer_features_are_block_statistics():
    """``features="layers"``: mean and std over time of every block's output, block after block; the
    last block's time means, averaged over frequency, equal the mean of ``forward_features``."""
    from avssl.config import load_config
    from avssl.embed.embedder import Embedder
    from avssl.models import build_model

    torch.manual_seed(0)
    cfg = load_config("tiny")
    tower = build_model(cfg).towers["spec"].eval()
    wave = torch.randn(2, int(cfg.data.crop_seconds * cfg.audio.sample_rate))
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for b in tower.blocks]
    with torch.no_grad():
        feats = tower.forward_features(wave)
    for h in hooks:
        h.remove()
    ref = []
    for o in outs:  # [B, C, T, F]
        flat = o.permute(0, 2, 1, 3).flatten(2)
        ref += [flat.mean(1), flat.std(1, unbiased=False)]
    emb = Embedder(tower, cfg, features="layers").embed(wave.numpy(), cfg.audio.sample_rate)
    assert emb.shape == (2, sum(2 * o.shape[1] * o.shape[3] for o in outs))
    np.testing.assert_allclose(emb, torch.cat(ref, 1).numpy(), rtol=1e-4, atol=1e-5)
    last = outs[-1]
    c, f = last.shape[1], last.shape[3]
    start = emb.shape[1] - 2 * c * f
    last_mean = torch.from_numpy(emb[:, start : start + c * f]).view(2, c, f).mean(-1)
    torch.testing.assert_close(last_mean, feats.mean(1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        Embedder(tower, cfg, features="nope")


def test_spec_tower_input_norm_gradients_match_finite_differences():
    """The spectrogram tower's per-mel-bin BatchNorm gets the right weight and bias gradients (float64
    finite differences). torch's BatchNorm2d on a [B, M, T, 1] input followed by a permute does not."""
    torch.manual_seed(0)
    tower = create_model("cnn14-tiny").double().train()
    wave = torch.randn(3, 8000, dtype=torch.float64)
    mel = tower.logmel(wave).detach()
    target = torch.randn(3, 1, mel.shape[2], mel.shape[1], dtype=torch.float64)
    bn = tower.bn0
    weight, bias = bn.weight.detach().clone() + 0.3, bn.bias.detach().clone() + 0.1

    def loss(w, b):
        bn.weight, bn.bias = torch.nn.Parameter(w), torch.nn.Parameter(b)
        return (tower._normalise(mel) * target).sum()

    def as_fn(w, b):
        x = torch.nn.functional.batch_norm(mel, None, None, w, b, True).transpose(1, 2).unsqueeze(1)
        return (x * target).sum()

    assert torch.autograd.gradcheck(as_fn, (weight.requires_grad_(), bias.requires_grad_()))
    gw, gb = torch.autograd.grad(loss(weight, bias), [bn.weight, bn.bias])
    ref_w, ref_b = torch.autograd.grad(as_fn(weight, bias), [weight, bias])
    torch.testing.assert_close(gw, ref_w)
    torch.testing.assert_close(gb, ref_b)
