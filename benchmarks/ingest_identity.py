"""Shard bytes of ingest configurations, as one SHA-1 each: to show a speed change keeps the output.

    python benchmarks/ingest_identity.py [--data DIR] [--out DIR] [NAME ...]   # prints "NAME SHA1" lines
    PYTHONPATH=/path/to/old/checkout/src python benchmarks/ingest_identity.py > before.txt   # then diff

Each configuration ingests real clips from the shared data (all 39 of ``videos/`` plus the two without
audio; 20 AVE-PM clips; segments of 4 real clips, two of them seeking past 5 s) or small generated
videos (deterministic H.264, rotation metadata, a segment CSV), and hashes every ``NNNNNN.tar`` (name
and bytes) and the manifest's skipped list. The shard folders are written under ``--out`` (default
``/tmp/avssl-ingest-identity``, emptied first): the paths stored in the samples are part of the bytes,
so compare runs that used the same ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from avssl.config import load_config
from avssl.ingest.run import ingest
from avssl.media.video import encode_video

from ingest import DEFAULT_DATA  # noqa: E402  (benchmarks/ is the script's folder)

REAL_SEGMENTS = ("# YTID, start_seconds, end_seconds, positive_labels\n"
                 'big_buck_bunny_0_30,12.3,22.3,"/m/a"\nD1NO38P8vqI_284000_294000,6.05,9.5,"/m/b"\n'
                 'video_00819,5.5,8.0,"/m/c"\nchaplin,7.2,9.6,"/m/d"\n')  # fmt: skip
GEN_SEGMENTS = '# YTID, start_seconds, end_seconds, positive_labels\ng0,0.5,2.5,"/m/x"\ng1,0.2,1.8,"/m/y"\n'


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.glob("*.tar")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(json.dumps(json.loads((folder / "manifest.json").read_text()).get("skipped"), sort_keys=True).encode())
    return h.hexdigest()


def generate(folder: Path) -> list[Path]:
    """Three short 128x72 H.264 + AAC videos (30, 25 with 90-degree rotation, 24 fps), encoded bit-exactly."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:128]
    paths = []
    for i, (fps, seconds, rotation) in enumerate([(30, 3.3, 0), (25, 2.0, 90), (24, 1.2, 0)]):
        frames = np.stack([np.stack([(xx + 7 * t + 30 * i) % 256, (yy + 3 * t) % 256, np.full_like(xx, (11 * t) % 256)],
                                    -1).astype(np.uint8) for t in range(int(fps * seconds))])  # fmt: skip
        audio = (0.2 * rng.standard_normal(int(44100 * seconds))).astype(np.float32)
        paths.append(encode_video(folder / f"g{i}.mp4", frames, fps, audio, 44100, rotation=rotation, deterministic=True))
    return paths


def configurations(data: Path, work: Path) -> dict[str, tuple[list, list[str], int]]:
    """name -> (inputs, config overrides, workers)."""
    gen = generate(work)
    (work / "gen-seg.csv").write_text(GEN_SEGMENTS)
    (work / "real-seg.csv").write_text(REAL_SEGMENTS)
    real = data / "videos"
    return {
        "real-jpeg-w2": ([real, data / "videos_no_audio"], ["ingest.clip_seconds=10"], 2),
        "real-raw-w1-2s": ([real], ["ingest.frame_format=raw", "ingest.clip_seconds=2", "video.size=32", "video.fps=5"], 1),
        "avepm20-jpeg-w2": (sorted((data / "avepm" / "videos").rglob("*.mp4"))[:20], [], 2),
        "real-seg-w1": ([work / "real-seg.csv", real], ["video.fps=7.5", "ingest.clip_seconds=2", "ingest.min_seconds=0.5"], 1),
        "real-seg-w2-25fps": ([work / "real-seg.csv", real], ["video.fps=25", "video.size=24"], 2),
        "gen-h264-1s": (gen, ["ingest.frame_format=h264", "ingest.clip_seconds=1", "ingest.min_seconds=0.5", "video.size=16"], 1),
        "gen-jpeg-seg": ([work / "gen-seg.csv", work], ["ingest.clip_seconds=1", "ingest.min_seconds=0.5"], 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="configurations to run (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data root (has videos/, avepm/)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/avssl-ingest-identity"), help="work folder (emptied)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "inputs").mkdir(parents=True)
    for name, (inputs, overrides, workers) in configurations(args.data, args.out / "inputs").items():
        if args.names and name not in args.names:
            continue
        ingest(inputs, args.out / name, load_config(None, overrides), workers=workers, progress=False)
        print(name, digest(args.out / name), flush=True)


if __name__ == "__main__":
    main()
