"""``load_model(..., int8=True)``: int8 blocks calibrated once at load, so embeddings are deterministic,
batch-invariant and close to float32."""

import json

import numpy as np
import pytest
import torch

from avssl.embed.embedder import calibration_audio, load_model
from test_embed import make_checkpoint

SR = 16000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("int8") / "tiny.pt", seed=6)


def _clips():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(int(SR * s)) * 0.1).astype(np.float32) for s in (0.4, 1.0, 2.6, 5.0)]


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("features", ["pooled", "layers"])
def test_int8_is_deterministic_batch_invariant_and_close_to_float32(ckpt, features):
    clips = _clips()
    q = load_model(ckpt, device="cpu", int8=True, features=features)
    got = q.embed(clips, SR)
    assert any(m.__class__.__name__ == "GraphModule" for m in q.tower.blocks)  # the blocks really are int8
    again = load_model(ckpt, device="cpu", int8=True, features=features, batch_size=3)  # a fresh calibration
    np.testing.assert_array_equal(again.embed(clips, SR), got)
    for i, c in enumerate(clips):  # alone, in another batch: the same numbers
        np.testing.assert_array_equal(q.embed(c, SR)[0], got[i])
    ref = load_model(ckpt, device="cpu", features=features).embed(clips, SR)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert _cosine(got, ref).min() > 0.99
    assert not np.array_equal(got, ref)
    clip, frames, _ = q.embed_with_timestamps(np.stack([clips[3], clips[3]]), SR, hop=0.1)
    np.testing.assert_array_equal(clip[0], clip[1])
    np.testing.assert_array_equal(clip[0], got[3])
    assert np.isfinite(frames).all()


def test_int8_options(ckpt):
    with pytest.raises(ValueError, match="CPU only"):
        load_model(ckpt, device="meta", int8=True)
    x = calibration_audio(16000, SR)
    assert x.shape == (16, 16000) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert 0 < x.abs().amax(1).min() < 0.01 < 0.3 <= x.abs().amax(1).max() <= 1  # quiet to loud, in [-1, 1]


def test_cli_int8_outputs_and_settings(tmp_path, ckpt):
    import json

    from avssl.media.audio import load_audio
    from avssl.cli import main as cli_main
    from avssl.media.video import encode_audio

    wav = encode_audio(tmp_path / "a.wav", _clips()[2], SR)
    out = tmp_path / "out"
    args = ["embed", str(ckpt), str(wav), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert cli_main(args + ["--int8"]) == 0
    q = load_model(ckpt, device="cpu", int8=True)
    np.testing.assert_array_equal(np.load(out / "embeddings" / "a.wav.npz")["embedding"],
                                  q.embed(load_audio(wav, SR), SR)[0])
    with pytest.raises(ValueError, match="other settings"):
        cli_main(args)  # a float32 run never mixes into an int8 folder
    old = tmp_path / "old"  # a folder written before the int8 setting existed resumes as float32
    assert cli_main(["embed", str(ckpt), str(wav), "--out", str(old), "--device", "cpu", "--no-progress"]) == 0
    settings = json.loads((old / "embed.json").read_text())
    del settings["int8"]
    (old / "embed.json").write_text(json.dumps(settings))
    assert cli_main(["embed", str(ckpt), str(wav), "--out", str(old), "--device", "cpu", "--no-progress"]) == 0
    with pytest.raises(ValueError, match="other settings"):
        cli_main(["embed", str(ckpt), str(wav), "--out", str(old), "--device", "cpu", "--no-progress", "--int8"])


def test_eval_int8_embeds_with_the_int8_tower_into_its_own_cache(tmp_path, ckpt):
    from avssl.cli import main as cli_main
    from avssl.evaluate.run import embed_task, resolve_model
    from avssl.evaluate.tasks import load_task
    from test_evaluate import _tone_folder

    torch.set_num_threads(1)
    task = f"folder:{_tone_folder(tmp_path / 'tones')}"
    args = ["eval", str(ckpt), "--task", task, "--out", str(tmp_path / "out"), "--seeds", "1", "--no-plots",
            "--device", "cpu"]
    assert cli_main(args + ["--int8"]) == 0
    assert cli_main(args + ["--no-baselines"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    ids = {r["model"]: r["model_id"] for r in records[:4]}  # the int8 run: checkpoint, random-init, 2 baselines
    assert ids[str(ckpt)].endswith("-int8") and ids[f"random-init:{ckpt}"].endswith("-int8")
    assert not ids["logmel-stats"].endswith("-int8")  # baselines have no tower: the same cache either way
    assert records[4]["model_id"] == ids[str(ckpt)].removesuffix("-int8")  # float32: another cache
    t = load_task(task, None)
    cache = tmp_path / "out" / "embeddings"
    q, f = (embed_task(resolve_model(str(ckpt), device="cpu", int8=i), t, cache, progress=False) for i in (True, False))
    ref = load_model(ckpt, device="cpu", int8=True)
    from avssl.media.audio import load_audio

    np.testing.assert_array_equal(q[0], ref.embed(load_audio(t.examples[0].path, SR), SR)[0])  # the int8 tower's
    assert _cosine(q, f).min() > 0.999 and not np.array_equal(q, f)  # measured: 0.999998 (random weights)
