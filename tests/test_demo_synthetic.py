"""The synthetic audio-visual world: determinism, the planted structure, sound-bank mode."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from avssl.media.audio import load_audio
from avssl.demo.synthetic import class_table, generate_world, read_labels
from avssl.demo.synthetic_clip import note_hz, sample_clip_params
from avssl.media.video import encode_audio

NUISANCES = ["pitch_hz", "loudness_db", "tempo_hz", "x", "y", "scale", "noise_db", "noise_tilt", "distractors"]
FPS = 8.0


def decode_frames(path: str | Path) -> np.ndarray:
    """All frames of a video as ``uint8[T, H, W, 3]`` (PyAV directly: the tests' own reference decoder)."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), num_classes=4, clips_per_class=16, seconds=2.0, seed=3,
                          size=32, fps=FPS, progress=False)


def test_layout_and_labels(world):
    rows = read_labels(world)
    assert len(rows) == 64
    assert {r["label"] for r in rows} == {"pluck", "bell", "reed", "brass"}
    for label in {r["label"] for r in rows}:
        splits = [r["split"] for r in rows if r["label"] == label]
        assert splits.count("test") == 4 and splits.count("train") == 12
    for r in rows:
        assert Path(r["path"]).is_file()
        assert Path(r["path"]).parent.name == r["label"] and Path(r["path"]).parent.parent.name == r["split"]
        onsets = [float(t) for t in r["onsets"].split(";")]
        assert len(onsets) == int(r["num_onsets"]) >= 1 and all(0 <= t < 2.0 for t in onsets)
    assert len({r["clip_id"] for r in rows}) == 64
    frames = decode_frames(rows[0]["path"])
    assert frames.shape == (16, 32, 32, 3)
    audio = load_audio(rows[0]["path"], 16000)
    assert abs(len(audio) - 32000) < 2048 and np.abs(audio).max() > 0.01


def test_deterministic_for_a_seed(tmp_path):
    kwargs = dict(num_classes=2, clips_per_class=2, seconds=1.0, size=32, fps=FPS)
    a = generate_world(tmp_path / "a", seed=7, workers=2, progress=True, **kwargs)
    b = generate_world(tmp_path / "b", seed=7, workers=1, progress=False, **kwargs)  # the worker count changes nothing
    c = generate_world(tmp_path / "c", seed=8, progress=False, **kwargs)
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    assert (a / "labels.csv").read_text() != (c / "labels.csv").read_text().replace("s8-", "s7-")
    for ra, rb, rc in zip(read_labels(a), read_labels(b), read_labels(c)):
        np.testing.assert_array_equal(decode_frames(ra["path"]), decode_frames(rb["path"]))
        np.testing.assert_array_equal(load_audio(ra["path"]), load_audio(rb["path"]))
        assert not np.array_equal(load_audio(ra["path"]), load_audio(rc["path"]))


def _probe_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(model, x, y, cv=4).mean())


def test_plant_class_is_plain_in_frames(world):
    rows = read_labels(world)
    # per-channel mean and max over a clip's pixels: 6 simple statistics of the decoded frames
    frames = [decode_frames(r["path"]).astype(np.float64) for r in rows]
    x = np.stack([np.concatenate([f.mean((0, 1, 2)), f.max((0, 1, 2))]) for f in frames])
    y = np.array([int(r["class_index"]) for r in rows])
    assert _probe_accuracy(x, y) >= 0.95


def test_plant_nuisances_say_nothing_about_the_class(world):
    rows = read_labels(world)
    y = np.array([int(r["class_index"]) for r in rows])
    x = np.array([[float(r[c]) for c in NUISANCES] for r in rows])
    x[:, 0] = np.log(x[:, 0])
    assert _probe_accuracy(x, y) <= 0.45  # chance = 0.25, 64 clips
    # and tightly on many drawn clips (no encoding needed): pitch alone and all nuisances together
    specs = class_table(5)
    params = [(k, sample_clip_params(np.random.default_rng([0, k, j]), 3.0, specs[k])) for k in range(5)
              for j in range(300)]
    y = np.array([k for k, _ in params])
    x = np.array([[np.log(p.pitch_hz), p.loudness_db, p.tempo_hz, p.x, p.y, p.scale, p.noise_db, p.noise_tilt,
                   p.distractors] for _, p in params])
    assert _probe_accuracy(x[:, :1], y) <= 0.2 + 0.06
    assert _probe_accuracy(x, y) <= 0.2 + 0.06


def test_sound_and_picture_are_synchronised(world):
    """At each listed onset the object brightens on the next frame and the audio gets louder."""
    louder = brighter = total = 0
    for r in read_labels(world)[:24]:
        frames = decode_frames(r["path"]).astype(np.float64)
        audio = load_audio(r["path"], 16000)
        brightness = frames.max(axis=(1, 2, 3)) + frames.mean(axis=(1, 2, 3))
        for t in (float(s) for s in r["onsets"].split(";")):
            i, n = int(np.ceil(t * FPS)), int(t * 16000)
            if not 1 <= i < len(frames) or n < 800:
                continue
            total += 1
            brighter += brightness[i] > brightness[i - 1] + 2
            louder += np.sqrt(np.mean(audio[n : n + 800] ** 2)) > np.sqrt(np.mean(audio[n - 800 : n] ** 2))
    assert total > 40
    assert brighter / total >= 0.9 and louder / total >= 0.8


def test_sound_bank_mode(tmp_path):
    bank = tmp_path / "bank"
    t = np.arange(8000) / 16000
    recordings = {}
    for name, freq in [("alpha", 300.0), ("beta", 1200.0), ("gamma", 3000.0)]:
        (bank / name).mkdir(parents=True)
        for note in ["A4", "C5"]:
            x = (np.sin(2 * np.pi * freq * t * (1 + 0.1 * (note == "C5"))) * np.exp(-3 * t)).astype(np.float32)
            recordings[f"{name}/{note}.wav"] = x
            encode_audio(bank / name / f"{note}.wav", 0.8 * x, 16000)
    (bank / "empty").mkdir()  # folders without audio are not classes
    world = generate_world(tmp_path / "w", num_classes=3, clips_per_class=3, seconds=1.5, seed=0, sound_bank=bank,
                           size=32, fps=FPS, progress=False)
    rows = read_labels(world)
    assert [r["label"] for r in rows] == ["alpha"] * 3 + ["beta"] * 3 + ["gamma"] * 3
    heard = {split: {r["source"] for r in rows if r["split"] == split} for split in ("train", "test")}
    assert heard["test"] and not heard["train"] & heard["test"]  # recordings are split before clips are drawn
    for r in rows:
        assert r["source"].startswith(r["label"] + "/") and r["source"] in recordings
        assert float(r["pitch_hz"]) == pytest.approx(note_hz(Path(r["source"]).stem), abs=1e-3)
        # the clip's audio is the recording's: its spectrum peaks at the class's frequency
        audio = load_audio(r["path"], 16000)
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.argmax(spectrum) * 16000 / len(audio)
        rec_peak = np.argmax(np.abs(np.fft.rfft(recordings[r["source"]]))) * 16000 / 8000
        assert abs(peak_hz - rec_peak) < 40
    with pytest.raises(ValueError, match="num_classes"):
        generate_world(tmp_path / "x", num_classes=4, clips_per_class=2, seconds=1.0, sound_bank=bank)
    (bank / "gamma" / "C5.wav").unlink()
    with pytest.raises(ValueError, match="'gamma' has 1 recording"):
        generate_world(tmp_path / "x", num_classes=3, clips_per_class=2, seconds=1.0, sound_bank=bank)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        generate_world(tmp_path / "x", num_classes=2, clips_per_class=2, seconds=1.0, sound_bank=tmp_path / "nope")


@pytest.mark.shared_data
def test_sound_bank_with_real_instruments(shared_data, tmp_path):
    world = generate_world(tmp_path / "w", num_classes=2, clips_per_class=2, seconds=1.0, seed=1,
                           sound_bank=shared_data / "instruments", size=32, fps=FPS, progress=False)
    with open(world / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["bass-electric"] * 2 + ["bassoon"] * 2
    assert all(np.isfinite(float(r["pitch_hz"])) for r in rows)
    heard = {split: {r["source"] for r in rows if r["split"] == split} for split in ("train", "test")}
    assert not heard["train"] & heard["test"]


def test_note_names_and_errors():
    assert note_hz("A4") == pytest.approx(440.0)
    assert note_hz("As3") == pytest.approx(233.082, abs=1e-3)
    assert note_hz("Bb3") == pytest.approx(233.082, abs=1e-3)
    assert note_hz("C4") == pytest.approx(261.626, abs=1e-3)
    assert np.isnan(note_hz("snare_03"))
    with pytest.raises(ValueError, match="num_classes"):
        class_table(11)
    with pytest.raises(ValueError, match="even"):
        generate_world("/nonexistent", num_classes=2, clips_per_class=2, seconds=1.0, size=33)


def test_labels_hold_the_drawn_clip_parameters(world):
    """Each row of labels.csv is the clip's own draw: ``sample_clip_params`` on its ``(seed, class, index)`` generator."""
    specs = class_table(4)
    for r in read_labels(world)[::7]:
        k, index = int(r["class_index"]), int(r["clip_id"].rsplit("-", 1)[1])
        p = sample_clip_params(np.random.default_rng([3, k, index]), 2.0, specs[k])
        assert r["clip_id"] == f"s3-{k:02d}-{index:04d}" and r["label"] == specs[k].label == specs[k].timbre
        assert float(r["pitch_hz"]) == round(p.pitch_hz, 3) and float(r["tempo_hz"]) == round(p.tempo_hz, 4)
        assert r["onsets"] == ";".join(f"{t:.4f}" for t in p.onsets) and int(r["distractors"]) == p.distractors
        assert (r["shape"], r["colour"], r["texture"]) == (specs[k].shape, specs[k].colour, specs[k].texture)
