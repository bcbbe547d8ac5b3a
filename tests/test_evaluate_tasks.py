"""Task loaders, each on a tiny fixture generated in the dataset's real published layout."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from avssl.evaluate.tasks import TaskDataError, load_task, shared_tasks, task_folder
from avssl.evaluate.tasks_published import SPEECH_COMMANDS_12
from avssl.media.video import encode_audio

SR = 16000


def tone(path: Path, freq: float = 440.0, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    return encode_audio(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> Path:
    """One data root holding every dataset fixture in its published folder name and layout."""
    r = tmp_path_factory.mktemp("datasets")
    # ESC-50: meta/esc50.csv + audio/, 5 folds
    esc = r / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for target, cat, esc10 in ((0, "dog", "True"), (1, "rooster", "False")):
            name = f"{fold}-{100 + target}-A-{target}.wav"
            tone(esc / "audio" / name, 300 + 100 * target)
            rows.append([name, fold, target, cat, esc10, f"{100 + target}", "A"])
    (esc / "meta").mkdir(parents=True)
    with (esc / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    # Speech Commands v2: word folders, lists, background noise
    sc = r / "speech_commands_v0.02"
    for word in [*SPEECH_COMMANDS_12, "bed", "wow"]:
        for spk in ("aaaa1111", "bbbb2222", "cccc3333"):
            tone(sc / word / f"{spk}_nohash_0.wav")
    (sc / "validation_list.txt").write_text("".join(f"{w}/bbbb2222_nohash_0.wav\n" for w in ("yes", "bed", "go")))
    (sc / "testing_list.txt").write_text("".join(f"{w}/cccc3333_nohash_0.wav\n" for w in ("yes", "no", "wow")))
    tone(sc / "_background_noise_" / "white_noise.wav", seconds=20.0)
    (sc / "_background_noise_" / "README.md").write_text("noise")
    # VoxCeleb1: iden_split.txt + wav/<speaker>/<video>/<utt>.wav
    vox = r / "VoxCeleb1"
    lines = []
    for s, spk in enumerate(("id10001", "id10002")):
        for u, code in enumerate((1, 1, 2, 3)):
            rel = f"{spk}/vid{u}/{u + 1:05d}.wav"
            tone(vox / "wav" / rel, 200 + 50 * s)
            lines.append(f"{code} {rel}")
    lines.append("3 id10002/missing/00001.wav")  # listed but not downloaded
    (vox / "iden_split.txt").write_text("\n".join(lines) + "\n")
    # VoxForge, EVAR-style metadata (pandas writes an unnamed index column)
    vf = r / "voxforge"
    vf.mkdir()
    with (vf / "voxforge.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "file_name", "label", "split"])
        pairs = [(la, sp) for la in ("de", "en") for sp in ("train", "train", "valid", "test")]
        for i, (lang, split) in enumerate(pairs):
            tone(vf / lang / f"clip{i}.wav")
            w.writerow([i, f"{lang}/clip{i}.wav", lang, split])
    # NSynth: nsynth-{train,valid,test}/examples.json + audio/
    for split in ("train", "valid", "test"):
        meta = {}
        for fam, fam_id in (("bass", 0), ("flute", 2)):
            key = f"{fam}_synthetic_000-060-100"
            tone(r / "nsynth" / f"nsynth-{split}" / "audio" / f"{key}.wav")
            meta[key] = {"note_str": key, "instrument_family": fam_id, "instrument_family_str": fam, "pitch": 60}
        (r / "nsynth" / f"nsynth-{split}" / "examples.json").write_text(json.dumps(meta))
    # AudioSet: segment CSVs with comment header, quoted label lists; clips under several names
    aus = r / "audioset"
    aus.mkdir()
    (aus / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0jbk,"Animal"\n2,/m/04rlf,"Music"\n')
    header = "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=3, num_segs=3, num_unique_labels=3\n" \
             "# YTID, start_seconds, end_seconds, positive_labels\n"
    (aus / "balanced_train_segments.csv").write_text(header + '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/04rlf"\n'
                                                     '-0RWZT-miFs, 420.000, 430.000, "/m/0jbk"\n'
                                                     'Y_absentID0, 0.000, 10.000, "/m/09x0r"\n')
    (aus / "eval_segments.csv").write_text(header + '-0SdAVK79lg, 30.000, 40.000, "/m/04rlf,/m/0jbk"\n')
    tone(aus / "balanced_train_segments" / "--PJHxphWEs_30.000_40.000.wav")
    tone(aus / "balanced_train_segments" / "Y-0RWZT-miFs.wav")
    tone(aus / "eval_segments" / "-0SdAVK79lg.flac")
    # FSDD layout
    for digit in range(2):
        for spk in ("jackson", "theo"):
            for idx in (0, 4, 5, 49):
                tone(r / "fsdd" / "recordings" / f"{digit}_{spk}_{idx}.wav")
    # instruments-like folder per class (5 per class for 5-fold CV)
    for cls in ("cello", "flute", "harp"):
        for i in range(5 + (cls == "harp")):
            tone(r / "instruments" / cls / f"n{i}.mp3")
    return r


def test_esc50_folds(root):
    task = load_task("esc50", root)
    assert task_folder("esc50", root) == root / "ESC-50-master"
    assert len(task.examples) == 10 and task.classes == ["dog", "rooster"]
    assert [f.name for f in task.folds] == [f"fold{k}" for k in range(1, 6)]
    f3 = task.folds[2]
    assert f3.test == ("fold3",) and set(f3.train) == {"fold1", "fold2", "fold4", "fold5"} and f3.valid == ()
    assert all(ex.path.name.startswith("3-") for ex in (task.examples[i] for i in task.indices(f3.test)))
    assert set(task.indices(f3.train)).isdisjoint(task.indices(f3.test))
    esc10 = load_task("esc10", root)
    assert esc10.classes == ["dog"] and len(esc10.examples) == 5


def test_speech_commands_12_and_35(root):
    task = load_task("speech-commands-v2-12", root)
    assert task.classes == [*SPEECH_COMMANDS_12, "_unknown_", "_silence_"]
    split = {(ex.path.parent.name, ex.path.name): ex.split for ex in task.examples if ex.labels != ("_silence_",)}
    assert split["yes", "bbbb2222_nohash_0.wav"] == "valid" and split["wow", "cccc3333_nohash_0.wav"] == "test"
    assert split["yes", "aaaa1111_nohash_0.wav"] == "train"
    assert {ex.labels[0] for ex in task.examples if ex.path.parent.name in ("bed", "wow")} == {"_unknown_"}
    words = Counter(ex.split for ex in task.examples if ex.labels != ("_silence_",))
    silence = [ex for ex in task.examples if ex.labels == ("_silence_",)]
    counts = Counter(ex.split for ex in silence)
    assert counts == {s: int(np.ceil(0.1 * words[s])) for s in ("train", "valid", "test")}
    region = {"train": (0.0, 16.0), "valid": (16.0, 18.0), "test": (18.0, 20.0)}  # 80/10/10 of the 20 s noise
    for ex in silence:
        lo, hi = region[ex.split]
        assert ex.duration == pytest.approx(1.0) and lo - 1e-6 <= ex.start and ex.start + ex.duration <= hi + 1e-3
    assert task.folds[0].valid == ("valid",)
    assert load_task("speech-commands-v2-12", root).examples == task.examples  # deterministic
    full = load_task("speech-commands-v2-35", root)  # every word is its own class (12 in the fixture)
    assert full.name == "speech-commands-v2-35" and full.classes == sorted([*SPEECH_COMMANDS_12, "bed", "wow"])
    assert len(full.examples) == 36 and full.folds[0].valid == ("valid",)


def test_voxceleb1_iden_split(root, caplog):
    task = load_task("voxceleb1", root)
    assert task.classes == ["id10001", "id10002"]
    assert Counter(ex.split for ex in task.examples) == {"train": 4, "valid": 2, "test": 2}  # missing file dropped
    assert "missing" in caplog.text
    assert all(ex.path.is_file() and ex.path.parts[-3] == ex.labels[0] for ex in task.examples)


def test_voxforge_evar_csv(root):
    task = load_task("voxforge", root)
    assert task.classes == ["de", "en"]
    assert Counter(ex.split for ex in task.examples) == {"train": 4, "valid": 2, "test": 2}
    assert task.folds[0].valid == ("valid",)


def test_nsynth_family(root):
    task = load_task("nsynth", root)
    assert task.classes == ["bass", "flute"] and len(task.examples) == 6
    assert all(ex.path.parent.parent.name == f"nsynth-{ex.split}" for ex in task.examples)


def test_audioset_multilabel(root, caplog):
    task = load_task("audioset", root)
    assert task.multilabel and task.metric == "mAP" and task.classes == ["Speech", "Animal", "Music"]
    assert len(task.examples) == 3 and "1 of 4 listed files are missing" in caplog.text
    y = task.targets()
    by_name = {ex.path.name: row for ex, row in zip(task.examples, y)}
    np.testing.assert_array_equal(by_name["--PJHxphWEs_30.000_40.000.wav"], [1, 0, 1])
    np.testing.assert_array_equal(by_name["Y-0RWZT-miFs.wav"], [0, 1, 0])
    np.testing.assert_array_equal(by_name["-0SdAVK79lg.flac"], [0, 1, 1])
    assert [ex.split for ex in task.examples] == ["train", "train", "test"]


def test_fsdd_official_split(root):
    digits, speakers = load_task("fsdd-digits", root), load_task("fsdd-speakers", root)
    assert digits.classes == ["0", "1"] and speakers.classes == ["jackson", "theo"]
    for task in (digits, speakers):
        for ex in task.examples:
            assert ex.split == ("test" if int(ex.path.stem.split("_")[2]) < 5 else "train")
    assert [ex.path for ex in digits.examples] == [ex.path for ex in speakers.examples]
    assert digits.audio_id == speakers.audio_id == "fsdd"  # same clips: one embedding cache


def test_folder_cross_validation_is_stratified_and_fixed(root):
    task = load_task("instruments", root)
    assert task.classes == ["cello", "flute", "harp"] and len(task.folds) == 5
    for fold in task.folds:
        test_labels = Counter(task.examples[i].labels[0] for i in task.indices(fold.test))
        assert set(test_labels) == set(task.classes)  # every class in every fold
        assert set(task.indices(fold.train)).isdisjoint(task.indices(fold.test))
    again = load_task(f"folder:{root / 'instruments'}")
    assert [ex.split for ex in again.examples] == [ex.split for ex in task.examples]
    assert shared_tasks(root) == ["fsdd-digits", "fsdd-speakers", "instruments"]  # no avepm here


def test_folder_with_split_subfolders(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            tone(tmp_path / split / cls / "x.wav")
    task = load_task(f"folder:{tmp_path}")
    assert task.folds[0].train == ("train",) and task.folds[0].test == ("test",)
    assert Counter(ex.split for ex in task.examples) == {"train": 2, "test": 2}


def test_csv_with_and_without_splits(tmp_path):
    for i in range(10):
        tone(tmp_path / "clips" / f"{i}.wav")
    (tmp_path / "split.csv").write_text("path,label,split\n" + "".join(
        f"clips/{i}.wav,{'ab'[i % 2]},{'test' if i < 2 else 'val' if i < 4 else 'train'}\n" for i in range(10)))
    task = load_task(f"csv:{tmp_path / 'split.csv'}")
    assert Counter(ex.split for ex in task.examples) == {"train": 6, "valid": 2, "test": 2}
    assert task.folds[0].valid == ("valid",)
    (tmp_path / "plain.csv").write_text("path,label\n" + "".join(f"clips/{i}.wav,{'ab'[i % 2]}\n" for i in range(10)))
    cv = load_task(f"csv:{tmp_path / 'plain.csv'}")
    assert sorted(Counter(ex.split for ex in cv.examples).values()) == [2] * 5


def test_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown task"):
        load_task("nope", tmp_path)
    with pytest.raises(TaskDataError, match="meta/esc50.csv"):
        load_task("esc50", tmp_path)
    (tmp_path / "bad.csv").write_text("file,target\nx.wav,a\n")
    with pytest.raises(TaskDataError, match="needs columns"):
        load_task(f"csv:{tmp_path / 'bad.csv'}")


def test_real_shared_tasks(shared_data):
    digits = load_task("fsdd-digits", shared_data)
    assert len(digits.examples) == 3000 and len(digits.classes) == 10
    assert Counter(ex.split for ex in digits.examples) == {"train": 2700, "test": 300}
    assert len(load_task("fsdd-speakers", shared_data).classes) == 6
    inst = load_task("instruments", shared_data)
    assert len(inst.classes) == 20 and len(inst.examples) == 450
    sizes = Counter(ex.split for ex in inst.examples)
    assert set(sizes) == {f"fold{k}" for k in range(1, 6)} and max(sizes.values()) - min(sizes.values()) <= 1


def test_avepm_layout(tmp_path):
    """labels.csv with a quoted group that holds a comma; fixed train/test split; one audio cache."""
    rows = []
    for c, (label, group) in enumerate([("dog barking", "animals"), ("toy car", "toys, games"), ("cat", "animals")]):
        for i in range(5):
            path = f"videos/{c}/{i}.wav"
            tone(tmp_path / "avepm" / path)
            rows.append(f'{path},{label},"{group}",{c},{"train" if i < 3 else "test"}\n')
    (tmp_path / "avepm" / "labels.csv").write_text("path,label,group,class_id,split\n" + "".join(rows))
    fine, coarse = load_task("avepm", tmp_path), load_task("avepm-groups", tmp_path)
    assert fine.classes == ["cat", "dog barking", "toy car"] and coarse.classes == ["animals", "toys, games"]
    assert Counter(ex.split for ex in fine.examples) == {"train": 9, "test": 6}
    assert [ex.path for ex in fine.examples] == [ex.path for ex in coarse.examples]
    assert fine.audio_id == coarse.audio_id == "avepm"
    assert Counter(ex.labels[0] for ex in coarse.examples if ex.split == "test") == {"animals": 4, "toys, games": 2}
    assert "avepm" in shared_tasks(tmp_path) and "avepm-groups" in shared_tasks(tmp_path)


def test_real_avepm(shared_data):
    fine, coarse = load_task("avepm", shared_data), load_task("avepm-groups", shared_data)
    assert len(fine.classes) == 86 and len(coarse.classes) == 8 and len(fine.examples) == 430
    assert Counter(ex.split for ex in fine.examples) == {"train": 258, "test": 172}
    listed = (shared_data / "avepm" / "pretrain.txt").read_text().split()
    train = {ex.path.relative_to(shared_data / "avepm").as_posix() for ex in fine.examples if ex.split == "train"}
    assert train == {p for p in listed if not p.startswith("#") and p.endswith(".mp4")}  # pretrain.txt = train split
