import dataclasses

import pytest
import torch

from avssl.data.augment import augment, mix, sample_lambda
from avssl.config import AugmentConfig
from avssl.data.stream import Batch


def _batch(n=6, samples=1600, frames=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(n, samples, generator=g)
    video = torch.randint(0, 256, (n, frames, 3, size, size), dtype=torch.uint8, generator=g)
    return Batch(audio=audio, frames=video, keys=[f"v{i}-0000" for i in range(n)])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", ["none", "mixup", "mixback"])
@pytest.mark.parametrize("audio,video", [(True, True), (True, False), (False, True)])
def test_mix_matrix_is_row_stochastic(mode, audio, video):
    cfg = AugmentConfig(mix=mode, mix_audio=audio, mix_video=video)
    batch = _batch()
    mixed, corr = mix(batch, cfg, _gen())
    assert corr.shape == (6, 6) and (corr >= 0).all()
    torch.testing.assert_close(corr.sum(1), torch.ones(6))
    assert mixed.frames.dtype == torch.float32 and 0 <= mixed.frames.min() and mixed.frames.max() <= 1
    assert mixed.keys == batch.keys


def test_mixup_same_partner_and_lambda_across_modalities():
    batch = _batch()
    audio_only, m = mix(batch, AugmentConfig(mix="mixup", mix_video=False), _gen(5))
    both, corr = mix(batch, AugmentConfig(mix="mixup"), _gen(5))
    torch.testing.assert_close(corr, torch.eye(6))  # own mixed video stays the positive
    # the audio-only run's matrix is the mixture weights: it reproduces the mixed audio AND the mixed frames
    torch.testing.assert_close(both.audio, m @ batch.audio)
    torch.testing.assert_close(audio_only.audio, both.audio)
    frames = batch.frames.float().div(255).flatten(1)
    torch.testing.assert_close(both.frames.flatten(1), m @ frames)
    lam = m.diagonal()
    assert ((lam >= 0.5) & (lam <= 1)).all() and (m > 0).sum(1).le(2).all()


def test_video_only_mixup_gives_transposed_targets():
    batch = _batch()
    _, m = mix(batch, AugmentConfig(mix="mixup", mix_video=False), _gen(2))
    mixed, corr = mix(batch, AugmentConfig(mix="mixup", mix_audio=False), _gen(2))
    torch.testing.assert_close(mixed.audio, batch.audio)
    torch.testing.assert_close(corr, m.T / m.T.sum(1, keepdim=True))


def test_lambda_one_is_the_identity():
    batch = _batch()
    for cfg in (
        AugmentConfig(mix="mixup", mix_prob=0.0),
        AugmentConfig(mix="mixup", mix_alpha=0.0),
        AugmentConfig(mix="mixback", mixback_max=0.0),
        AugmentConfig(mix="none"),
    ):
        mixed, corr = mix(batch, cfg, _gen())
        torch.testing.assert_close(corr, torch.eye(6))
        torch.testing.assert_close(mixed.audio, batch.audio)
        torch.testing.assert_close(mixed.frames, batch.frames.float() / 255)


def test_mixback_adds_a_small_share_and_keeps_the_positive():
    batch = _batch()
    mixed, corr = mix(batch, AugmentConfig(mix="mixback", mixback_max=0.2, mix_video=False), _gen(1))
    torch.testing.assert_close(corr, torch.eye(6))
    torch.testing.assert_close(mixed.frames, batch.frames.float() / 255)
    # each mixed clip is (1 - u) x_i + u x_j with u <= 0.2: closest to its own clip
    residual = (mixed.audio - batch.audio).norm(dim=1) / batch.audio.norm(dim=1)
    assert (residual <= 0.2 * 2 + 1e-5).all() and (residual > 0).any()


def test_mix_is_seeded():
    batch, cfg = _batch(), AugmentConfig(mix="mixup")
    a, ca = mix(batch, cfg, _gen(7))
    b, cb = mix(batch, cfg, _gen(7))
    c, _ = mix(batch, cfg, _gen(8))
    torch.testing.assert_close(a.audio, b.audio)
    torch.testing.assert_close(ca, cb)
    assert not torch.allclose(a.audio, c.audio)


def test_sample_lambda_distribution():
    lam = sample_lambda(4000, 0.4, _gen())
    assert ((lam >= 0.5) & (lam <= 1)).all()
    # folded Beta(0.4, 0.4) puts most mass near 1; the folded mean is about 0.81
    assert 0.78 < lam.mean().item() < 0.84


def test_augment_time_crop_is_aligned():
    # audio encodes time (sample index), frames encode their frame index: the crop must keep them aligned
    rate, fps, n = 800, 4, 5
    samples, frames_n = 4 * rate, 16
    audio = torch.arange(samples, dtype=torch.float32).repeat(n, 1)
    frames = torch.arange(frames_n, dtype=torch.uint8).view(1, frames_n, 1, 1, 1).expand(n, frames_n, 3, 4, 4).clone()
    cfg = AugmentConfig(frame_crop_scale=1.0, frame_flip=False, color_jitter=0.0, random_gain_db=0.0)
    out = augment(Batch(audio, frames, [str(i) for i in range(n)]), cfg, _gen(3), 2.0, rate, fps)
    assert out.audio.shape == (n, 2 * rate) and out.frames.shape == (n, 2 * fps, 3, 4, 4)
    first_frame = (out.frames[:, 0, 0, 0, 0] * 255).round()
    torch.testing.assert_close(out.audio[:, 0], first_frame * rate / fps)
    torch.testing.assert_close(out.audio[:, 1] - out.audio[:, 0], torch.ones(n))
    steps = (out.frames[:, :, 0, 0, 0] * 255).round()
    torch.testing.assert_close(steps - steps[:, :1], torch.arange(2 * fps).float().expand(n, -1))
    assert len(set(first_frame.tolist())) > 1  # different crops per example


def test_augment_pads_short_clips_and_handles_audio_only():
    batch = _batch(n=3, samples=400, frames=2)
    out = augment(batch, AugmentConfig(), _gen(), 0.5, 1600, 8)
    assert out.audio.shape == (3, 800) and out.frames.shape == (3, 4, 3, 8, 8)
    torch.testing.assert_close(out.audio[:, 400:], torch.zeros(3, 400))
    audio_only = dataclasses.replace(_batch(n=3), frames=torch.zeros(3, 0, 3, 8, 8, dtype=torch.uint8))
    out = augment(audio_only, AugmentConfig(), _gen(), 0.5, 1600, 8)
    assert out.audio.shape == (3, 800) and out.frames.shape[1] == 0


def test_frame_augment_flip_gain_and_range():
    batch = _batch(n=4, frames=2, size=8)
    cfg = AugmentConfig(frame_crop_scale=1.0, frame_flip=True, color_jitter=0.0, random_gain_db=6.0)
    out = augment(batch, cfg, _gen(1), 0.125, 1600, 16)
    src = batch.frames[:, :2].float() / 255
    for i in range(4):
        assert torch.allclose(out.frames[i], src[i], atol=1e-5) or torch.allclose(
            out.frames[i], src[i].flip(-1), atol=1e-5
        )
    ratio = out.audio.norm(dim=1) / batch.audio[:, :200].norm(dim=1)
    assert ((ratio >= 10 ** (-6 / 20) - 1e-4) & (ratio <= 10 ** (6 / 20) + 1e-4)).all()
    jit = augment(batch, AugmentConfig(color_jitter=0.4), _gen(1), 0.125, 1600, 16)
    assert jit.frames.min() >= 0 and jit.frames.max() <= 1
    plain = augment(batch, AugmentConfig(color_jitter=0.0), _gen(1), 0.125, 1600, 16)
    assert (jit.frames - plain.frames).abs().max() > 0.01  # the jitter changes the colours...
    torch.testing.assert_close(augment(batch, AugmentConfig(color_jitter=0.4), _gen(1), 0.125, 1600, 16).frames,
                               jit.frames)  # ...as a function of the generator


def test_random_resized_crop_zooms_into_the_frame():
    # a horizontal ramp: a crop keeps rows increasing left to right, narrows the value range to about
    # the crop width, and is the same for every frame of a clip
    n, t, size = 6, 3, 32
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, 1, size).expand(n, t, 3, size, size).contiguous()
    batch = Batch(torch.zeros(n, 800), ramp, [str(i) for i in range(n)])
    cfg = AugmentConfig(frame_crop_scale=0.25, frame_flip=False, color_jitter=0.0, random_gain_db=0.0)
    out = augment(batch, cfg, _gen(4), 0.375, 1600, 8).frames
    assert out.shape == (n, t, 3, size, size)
    assert (out[..., 1:] - out[..., :-1] >= -1e-6).all()
    spans = out[..., -1] - out[..., 0]
    # narrowest crop: area 0.25 at aspect 3/4 -> width sqrt(0.1875) = 0.43 of the frame
    assert (spans <= 1 + 1e-6).all() and (spans >= 0.4).all() and (spans < 0.99).any()
    torch.testing.assert_close(out[:, 1:], out[:, :1].expand(-1, t - 1, -1, -1, -1))
