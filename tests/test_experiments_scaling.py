"""experiments/data_scaling.py: nested subsets, the commands it runs, and its analysis on synthetic sweeps."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from avssl.sweep import report as sweep_report

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "data_scaling.py"
AVEPM = Path(__file__).resolve().parents[2] / "shared" / "data" / "avepm"
TASKS = ["avepm", "avepm-groups", "fsdd-digits", "fsdd-speakers", "instruments"]
SIZES = [64, 128, 258]


def _script():
    spec = importlib.util.spec_from_file_location("exp_data_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ds = _script()


def _list(tmp_path: Path, classes: int = 5, per_class: int = 4) -> Path:
    """A list file of relative paths (nothing decodes them) and a labels.csv beside it."""
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [(f"videos/{c}/{i}.mp4", f"class {c}") for c in range(classes) for i in range(per_class)]
    (folder / "pretrain.txt").write_text("# a comment\n" + "".join(f"{p}\n" for p, _ in rows))
    (folder / "labels.csv").write_text("path,label,split\n" + "".join(f"{p},{c},train\n" for p, c in rows))
    return folder / "pretrain.txt"


def test_subsets_nest_are_deterministic_absolute_and_stratified(tmp_path):
    listing = _list(tmp_path)
    lists = ds.write_subsets(listing, [5, 10, 20], tmp_path / "a", seed=0, labels=listing.parent / "labels.csv")
    again = ds.write_subsets(listing, [5, 10, 20], tmp_path / "b", seed=0, labels=listing.parent / "labels.csv")
    read = {n: p.read_text().splitlines() for n, p in lists.items()}
    assert read == {n: p.read_text().splitlines() for n, p in again.items()}
    assert read[10][:5] == read[5] and read[20][:10] == read[10] and len(set(read[20])) == 20
    assert all(Path(x).is_absolute() and x.startswith(str(listing.parent / "videos")) for x in read[20])
    assert sorted(read[20]) == sorted(str(p) for p in ds.read_list(listing))
    assert len({Path(x).parent.name for x in read[5]}) == 5  # one of each class: stratified
    other = ds.write_subsets(listing, [5, 10, 20], tmp_path / "c", seed=1, labels=None)
    assert other[10].read_text() != lists[10].read_text()
    with pytest.raises(SystemExit):
        ds.write_subsets(listing, [21], tmp_path / "d")


def test_a_subset_that_would_change_under_finished_shards_is_refused(tmp_path):
    listing = _list(tmp_path)
    ds.write_subsets(listing, [5], tmp_path / "out", seed=0)
    (tmp_path / "out" / "shards" / "5").mkdir(parents=True)
    (tmp_path / "out" / "shards" / "5" / "manifest.json").write_text("{}")
    ds.write_subsets(listing, [5], tmp_path / "out", seed=0)  # the same list: fine
    with pytest.raises(SystemExit, match="delete that folder"):
        ds.write_subsets(listing, [5], tmp_path / "out", seed=3)


@pytest.mark.skipif(not (AVEPM / "pretrain.txt").is_file(), reason=f"no {AVEPM}/pretrain.txt")
def test_avepm_subsets_hold_distinct_classes(tmp_path):
    lists = ds.write_subsets(AVEPM / "pretrain.txt", SIZES, tmp_path, labels=AVEPM / "labels.csv")
    classes = ds.read_classes(AVEPM / "labels.csv")
    assert len({classes[Path(x)] for x in lists[64].read_text().splitlines()}) == 64
    assert len(lists[258].read_text().splitlines()) == 258


# ------------------------------------------------------------------------------------ synthetic sweeps


def _record(name: str, seed: int, score: float, top5: float | None) -> dict:
    """A finished cell as avssl.sweep.run records it: the 5 tasks spread around ``score`` (%), their mean ``score``."""
    offsets = np.linspace(-4, 4, len(TASKS))
    rec = {"name": name, "kind": "train", "model": "", "seed": seed, "key": f"{name[:5]}-{seed}-{score:.6f}",
           "overrides": {}, "status": "done", "error": None, "steps": 1000, "gflops_per_step": 1.0, "tflops": 1.0,
           "train_seconds": 60.0, "retrieval": {}, "probe_seeds": 1, "data_root": None, "code": "test",
           "results": {t: {"metric": "accuracy", "mean": (score + o) / 100, "std": 0.0, "chance": 0.1,
                           "embedding_dim": 64, "seconds": 1.0} for t, o in zip(TASKS, offsets)}}
    if top5 is not None:
        rec["retrieval"]["avepm"] = {"num_clips": 172, "a2v_top1": top5 / 300, "a2v_top5": top5 / 100,
                                     "a2v_median_rank": 20.0, "v2a_top5": top5 / 100, "chance_top5": 5 / 172,
                                     "chance_median_rank": 86.5, "skipped": 0}
    return rec


def _sweeps(out: Path, monkeypatch, seeds: int = 3, noise: float = 0.0, sizes: list[int] = SIZES) -> None:
    """``out/sweeps/N`` written by the sweep's own writer: AV = 40 + 2 log2 N, AO = 38 + 1 log2 N (gain slope 1),
    a2v top-5 = 10 + 3 log2 N, each seed shifted by ``noise`` x a fixed pattern."""
    monkeypatch.setattr(sweep_report, "plot", lambda *a, **k: [])  # the sweep's own plots are not under test
    rng = np.random.default_rng(1)
    for n in sizes:
        x, records = math.log2(n), [_record("logmel-stats", 0, 30.0, None) | {"kind": "baseline"}]
        for s in range(seeds):
            e = noise * rng.standard_normal(3)
            records += [_record(ds.AV, s, 40 + 2 * x + e[0], 10 + 3 * x + e[2]), _record(ds.AO, s, 38 + x + e[1], None)]
        records.append(_record(ds.AV, seeds, 99.0, None) | {"status": "failed", "error": "boom"})
        folder = out / "sweeps" / str(n)
        for r in records:
            (folder / "cells" / r["key"]).mkdir(parents=True)
            (folder / "cells" / r["key"] / "cell.json").write_text(json.dumps(r))
        sweep_report.write_report(records, TASKS, folder, ["avepm"])


def _loaded(out: Path) -> dict[int, dict]:
    return {n: ds.load_sweep(out / "sweeps" / str(n), TASKS, "avepm")[0] for n in SIZES}


def test_fit_recovers_known_slopes(tmp_path, monkeypatch):
    _sweeps(tmp_path, monkeypatch)
    sweeps = _loaded(tmp_path)
    assert ds.load_sweep(tmp_path / "sweeps" / "64", TASKS, "avepm")[1] == pytest.approx(100 * 5 / 172)
    for metric, name, minus, slope, icpt in (("mean", ds.AV, None, 2, 40), ("mean", ds.AO, None, 1, 38),
                                              ("mean", ds.AV, ds.AO, 1, 2), ("a2v_top5", ds.AV, None, 3, 10)):
        s = ds.series(sweeps, name, metric, minus)
        assert sorted(s) == SIZES and all(len(v) == 3 for v in s.values())  # the failed cell is left out
        assert ds.fit(s) == pytest.approx((icpt, slope))
    assert ds.series(sweeps, ds.AO, "a2v_top5") == {}  # no video tower, no retrieval


def test_bootstrap_contains_truth_without_noise_and_widens_with_noise(tmp_path, monkeypatch):
    target = 2580
    truth = 2 + math.log2(target)  # the gain: (40 + 2x) - (38 + x)
    widths = []
    for noise in (0.0, 0.5, 2.0):
        out = tmp_path / str(noise)
        _sweeps(out, monkeypatch, noise=noise)
        res = ds.analyse(ds.series(_loaded(out), ds.AV, "mean", ds.AO), target, 2000, 0)
        lo, hi = res["predicted_90"]
        widths.append(hi - lo)
        if noise == 0:
            assert lo - 1e-9 <= truth <= hi + 1e-9 and res["slope_90"] == pytest.approx((1, 1))
    assert widths[0] < 1e-9 < widths[1] < widths[2]


def test_report_writes_plot_and_extrapolation_sentences(tmp_path, monkeypatch, capsys):
    _sweeps(tmp_path, monkeypatch, noise=0.5)
    assert ds.main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "scaling.md").read_text()
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert text in capsys.readouterr().out
    gain = ds.analyse(ds.series(_loaded(tmp_path), ds.AV, "mean", ds.AO), 2580, 2000, 0)
    lo, hi = gain["predicted_90"]
    assert (f"**5-task mean, gain**: extrapolating the log-linear trend, 10x more video (2580 videos) predicts "
            f"{gain['predicted']:.1f} points (90 % interval {lo:.1f} to {hi:.1f}); with 3 sizes and 3 seeds this is a "
            "rough projection, not a measurement.") in text
    assert "**a2v top-5, audio-visual**" in text and "**a2v top-5, gain**" not in text
    assert "| 128 | " in text and "chance 2.9 %" in text


def test_one_seed_gives_no_interval_and_says_so(tmp_path, monkeypatch):
    _sweeps(tmp_path, monkeypatch, seeds=1, sizes=[64, 128])
    text = ds.report(tmp_path, TASKS, "avepm", draws=50)
    assert "no interval: one seed per size" in text and "with 2 sizes and 1 seed this" in text
    assert "1280 videos" in text and (tmp_path / "scaling.png").is_file()


def test_dry_run_prints_ingest_and_sweep_per_size(tmp_path, capsys):
    listing, out = _list(tmp_path), tmp_path / "out"
    (out / "shards" / "10").mkdir(parents=True)
    (out / "shards" / "10" / "manifest.json").write_text("{}")  # ingested already: only its sweep
    assert ds.main(["all", "--list", str(listing), "--sizes", "5,10,20", "--out", str(out), "--dry-run",
                    "--ingest-set", "ingest.workers=1"]) == 0
    cmds = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert [tuple(c.split()[4:6]) for c in cmds] == [
        ("ingest", str(out / "lists" / "videos-5.txt")), ("sweep", "scaling"), ("sweep", "scaling"),
        ("ingest", str(out / "lists" / "videos-20.txt")), ("sweep", "scaling")]
    assert "--config tiny --set video.size=32 --set video.fps=8 --set ingest.clip_seconds=10 --set ingest.workers=1" \
        in cmds[0]
    assert f"--data {out}/shards/20 --tasks {','.join(TASKS)} --seeds 3 --probe-seeds 1 --threads 1 " \
           f"--set train.steps=1000 --retrieval avepm --out {out}/sweeps/20" in cmds[-1]
    assert not (out / "shards" / "5").exists() and not (out / "sweeps").exists()


def test_a_retrieval_prediction_that_reaches_chance_says_so():
    s = {64: [6.0, 5.0], 128: [4.0, 3.0], 256: [2.0, 3.0]}  # falling towards chance (2.9 %)
    res = ds.analyse(s, 2560, 200, 0)
    assert res["predicted"] < 2.9
    text = ds.sentence("a2v top-5, audio-visual", s, res, 2560, 10, " %", chance=2.9)
    assert "Chance is 2.9 %, inside that reach" in text
    rising = {64: [6.0, 5.0], 128: [8.0, 9.0], 256: [12.0, 11.0]}
    res = ds.analyse(rising, 2560, 200, 0)
    assert "Chance" not in ds.sentence("a2v top-5, audio-visual", rising, res, 2560, 10, " %", chance=2.9)
