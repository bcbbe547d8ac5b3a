"""Which shards a run reads: ``--data`` (a shard folder, a brace pattern, URLs) resolved to shard URLs
with their sample counts and manifest (:func:`resolve_shards`), and the manifest checked against the
config (:func:`check_manifest`). The loader that streams them is :mod:`avssl.data.stream`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avssl.config import Config


class DataError(ValueError):
    """Missing or empty shards, or shards whose ingest parameters do not match the config."""



@dataclass
class ShardSet:
    """Resolved shard URLs, their sample counts (``None`` when unknown) and the manifest."""

    urls: list[str]
    counts: list[int] | None
    manifest: dict[str, Any] | None


def resolve_shards(data: str | Path, manifest: str | Path | None = None) -> ShardSet:
    """Turn ``--data`` into shard URLs.

    ``data`` is a shard folder (or its ``manifest.json``), a brace pattern
    (``/d/{000000..000009}.tar``, ``::`` separates several), or URLs / ``pipe:`` commands.
    ``manifest`` (a folder or ``manifest.json``) overrides where the manifest is looked up; for
    local shard patterns it is found next to the shards. Raises :class:`DataError` naming what is
    missing.
    """
    from webdataset.shardlists import expand_urls

    from avssl.data.shards import read_manifest

    path = Path(str(data))
    if manifest is None and (path.is_dir() or path.name == "manifest.json"):
        folder = path if path.is_dir() else path.parent
        man = _read_manifest(read_manifest, folder)
        urls = [str(folder / s["name"]) for s in man["shards"]]
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DataError(
                f"{folder}: manifest.json lists {len(missing)} shard(s) that do not exist, e.g. {missing[0]}; "
                "re-run `avssl ingest` into this folder or restore the files"
            )
        return _with_counts(urls, man)
    if str(data).strip() == "":
        raise DataError("--data is empty; pass a shard folder, a brace pattern or shard URLs")
    urls = expand_urls(str(data))
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing == [str(data)]:
        raise DataError(f"{data}: no such shard folder or file; run `avssl ingest VIDEOS --out {data}` first")
    if missing:
        raise DataError(f"shard source '{data}': {len(missing)} shard(s) do not exist, e.g. {missing[0]}")
    if manifest is not None:
        mpath = Path(manifest)
        man = _read_manifest(read_manifest, mpath if mpath.is_dir() else mpath.parent)
    elif local and (Path(local[0]).parent / "manifest.json").is_file():
        man = _read_manifest(read_manifest, Path(local[0]).parent)
    else:
        man = None
    return _with_counts(urls, man)


def _read_manifest(reader, folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise DataError(f"{folder}: no such shard folder; run `avssl ingest VIDEOS --out {folder}` first")
    try:
        return reader(folder)
    except DataError:
        raise
    except Exception as e:  # the shard module's own error already names the file
        raise DataError(f"{folder}: cannot use this shard folder: {e}") from e


def _with_counts(urls: list[str], manifest: dict[str, Any] | None) -> ShardSet:
    if not urls:
        raise DataError("the shard set is empty (no shards listed); check --data")
    if manifest is None:
        return ShardSet(urls, None, None)
    by_name = {s["name"]: int(s["samples"]) for s in manifest.get("shards", [])}
    names = [u.rstrip("/").rsplit("/", 1)[-1] for u in urls]
    counts = [by_name[n] for n in names] if all(n in by_name for n in names) else None
    if counts is not None and sum(counts) == 0:
        raise DataError(f"the shard set {urls[0]}... holds no samples (manifest total 0); check the ingest log")
    return ShardSet(urls, counts, manifest)


def check_manifest(manifest: dict[str, Any], cfg: Config, where: str = "shards") -> None:
    """Fail fast when the shards were ingested with other parameters than ``cfg`` expects."""
    params = manifest.get("params", {})
    wanted = {"sample_rate": cfg.audio.sample_rate, "fps": cfg.video.fps, "size": cfg.video.size}
    fixes = {"sample_rate": "audio.sample_rate", "fps": "video.fps", "size": "video.size"}
    for key, want in wanted.items():
        have = params.get(key)
        if have is None:
            raise DataError(f"{where}: manifest.json has no params.{key}; re-ingest with this version of avssl")
        if key == "size" and float(have) >= float(want):
            continue  # frames larger than video.size are downscaled by the loader (resize_frames)
        if not math.isclose(float(have), float(want)):
            raise DataError(
                f"{where}: shards were ingested with {key}={have} but the config has {fixes[key]}={want}; "
                f"train with --set {fixes[key]}={have} or re-ingest with the config's value"
            )
    clip = params.get("clip_seconds")
    if clip is not None and cfg.data.crop_seconds > float(clip) + 1e-9:
        raise DataError(
            f"{where}: data.crop_seconds={cfg.data.crop_seconds} is longer than the ingested clips "
            f"(clip_seconds={clip}); lower data.crop_seconds or re-ingest with longer clips"
        )
