"""Typed configuration: dataclasses, YAML presets that hold overrides only, and ``--set a.b=c``.

Every section is a frozen-by-convention dataclass with defaults. A preset (``tiny``, ``small``,
``paper`` or a path to a YAML file) and the ``--set`` overrides are applied on top of the
defaults; unknown keys and bad choices (:data:`CHOICES`) are errors that name the key and list the
valid ones. The resolved config is saved next to every output (:func:`save_config`) and inside every
checkpoint.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avssl.overrides import ConfigError, coerce, parse_set
from avssl.pairs import parse_pair

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class AudioConfig:
    """Audio decoding and the log-mel front-end (units: Hz, samples)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    window: str = "hann"  # hann | hamming
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    log_offset: float = 1e-6  # log(mel + log_offset)


@dataclass
class VideoConfig:
    """Frame sampling for the video branch: low resolution on purpose."""

    fps: float = 10.0
    size: int = 64  # short side scaled to this, then centre-cropped square


@dataclass
class IngestConfig:
    """How videos become shards."""

    clip_seconds: float = 10.0  # long videos are cut into consecutive clips of this length
    min_seconds: float = 1.0  # shorter clips are dropped and counted
    samples_per_shard: int = 128
    frame_format: str = "jpeg"  # see README "Frame storage" for the measurement behind this
    jpeg_quality: int = 90
    audio_format: str = "flac"  # flac | pcm (raw int16: no decoding in the loader); docs/ingest.md
    audio_only: str = "skip"  # skip | keep (keep: sample has no frames)
    workers: int = 2  # decoding processes; 0: decode in the main process, unprotected (debugging)
    # seconds one input may take to decode before its worker is killed and it is skipped as `timeout`;
    # 0: no limit. Set it above the time your longest file takes (docs/ingest.md, "Crashes and stalls").
    file_timeout: float = 600.0

    def __post_init__(self) -> None:
        for name, zero in (("workers", "decode in the main process"), ("file_timeout", "no time limit")):
            if not getattr(self, name) >= 0:  # NaN too
                raise ConfigError(f"ingest.{name}={getattr(self, name)}: must be >= 0 (0: {zero})")


@dataclass
class ModelConfig:
    """Which towers to build and how big (see ``avssl.models``)."""

    preset: str = "tiny"  # tiny | small | paper: tower families and base widths
    width: float = 1.0  # width multiplier applied on top of the preset
    embed_dim: int = 128  # shared contrastive space
    views: list[str] = field(default_factory=lambda: ["spec", "wave", "video"])
    video_depth: int = 18  # 18 | 50 (TSM-ResNet)
    spec_arch: str = "cnn14"  # cnn14 | resnet: the spectrogram tower's family


@dataclass
class DataConfig:
    """Shards to batches."""

    crop_seconds: float = 3.0
    batch_size: int = 32
    num_workers: int = 1
    shuffle_buffer: int = 256
    epoch_batches: int = 0  # 0: derived from the manifest (equal on every rank)
    val: str = ""  # held-out shards (folder with manifest.json) scored while pretraining; "": none (docs/training.md)


@dataclass
class AugmentConfig:
    """Batch-level mixing and per-example augmentation (``avssl.data.augment``)."""

    mix: str = "mixup"  # none | mixup | mixback
    mix_prob: float = 1.0
    mix_alpha: float = 0.4  # lambda ~ Beta(alpha, alpha), folded to [0.5, 1]
    mixback_max: float = 0.2  # mixback: at most this share of another clip's audio
    mix_audio: bool = True
    mix_video: bool = True
    random_gain_db: float = 6.0
    spec_mask: bool = False
    # Frame augmentation is off by default: on real video (AVE-PM, 258 clips) random resized crop, flip and
    # colour jitter each slowed the audio-video loss and together kept it at chance (RESULTS.md, "Why the
    # audio-video objective did not learn"). Switch them on for collections large enough to need them.
    frame_crop_scale: float = 1.0  # random resized crop: minimum area fraction (1: no crop)
    frame_flip: bool = False
    color_jitter: float = 0.0


@dataclass
class LossConfig:
    """InfoNCE between view pairs (``avssl.train.losses``)."""

    # the paper's pairs with the waveform on a second crop, plus a two-crop pair: measured best here (RESULTS.md)
    pairs: list[str] = field(default_factory=lambda: ["spec-video", "wave2-video", "spec-wave2", "spec-spec"])
    weights: dict[str, float] = field(default_factory=dict)  # pair -> weight, default 1
    temperature: float = 0.1
    learn_temperature: bool = False
    local_loss: bool = False  # only the local rows against global columns
    mask_same_source: bool = True  # negatives from the anchor's source video are left out of the softmax

    def __post_init__(self) -> None:
        """Every pair is well formed (:func:`avssl.pairs.parse_pair`); the views it uses are checked against
        ``model.views`` when training starts (:func:`avssl.train.trainer.plan_views`)."""
        for i, pair in enumerate(self.pairs):
            try:
                parse_pair(pair)
            except ValueError as e:
                raise ConfigError(f"loss.pairs[{i}]: {e}") from None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | lars
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    channels_last: bool = False
    sync_bn: bool = True  # BatchNorm over the global batch when distributed (every backend); false refused then
    val_every: int = 100  # steps between validations when data.val is set; 0: only at the end (docs/training.md)
    keep_every: int = 0  # also keep checkpoint-stepNNNNNNN.pt every this many steps (0: none; docs/training.md)

    def __post_init__(self) -> None:
        if not self.val_every >= 0:
            raise ConfigError(f"train.val_every={self.val_every}: must be >= 0 (0: validate only at the end)")
        if not self.keep_every >= 0:
            raise ConfigError(f"train.keep_every={self.keep_every}: must be >= 0 (0: keep no step snapshots)")


EMBED_FEATURES = ("pooled", "layers")


@dataclass
class EmbedConfig:
    """How a trained audio tower turns audio into embeddings (inference only: training never reads it).

    ``features``: ``pooled`` = the tower's own clip pooling of its last block (mean + max over time,
    ``feature_dim`` values); ``layers`` = mean and standard deviation over time of every block's output
    (channels x frequency for the spectrogram tower), concatenated. ``window_seconds``: the window the
    tower sees (0: the training crop, ``data.crop_seconds``). ``select_layer`` (evaluation only, with
    ``layers``): the linear probe also reads each block's statistics alone and keeps, per fold and probe
    seed, the read-out (all blocks or one block) with the best validation score."""

    features: str = "pooled"
    window_seconds: float = 0.0
    select_layer: bool = False


FINETUNE_VIEWS = ("spec", "wave")


@dataclass
class FinetuneConfig:
    """``avssl finetune``: an audio tower trained end to end with a linear head on labelled clips (docs/finetune.md).

    The budget: an epoch is a pass over the training clips, or ``min_epoch_steps`` steps when that is longer (so
    that runs on a few labels still take enough steps between validations). A run trains at least ``epochs``
    epochs, then goes on while validation improves and stops after ``patience`` epochs without a gain, at the
    latest after ``max_steps`` steps (rounded up to a whole epoch, never fewer than ``epochs`` epochs); it keeps the
    best epoch. ``max_steps=0``: exactly ``epochs`` epochs, early stopping after ``patience`` epochs without a gain
    at any point (the budget before issue 26). Without a validation split: ``epochs`` epochs, the last kept. AdamW,
    linear warm-up then cosine decay to 0 at the end of the budget; the tower learns at ``lr * tower_lr_scale`` (0 freezes its weights). Training clips are cut to the
    embedding window at random (``embed.window_seconds``, else the training crop), mixed with mixup
    (``mixup_alpha``, 0 = off) and, on the spectrogram tower, masked (``spec_mask``). ``labels_per_class`` > 0
    keeps that many training clips per class (few-label runs; the draw follows ``seed``). ``bn_stats``: the
    tower's BatchNorm layers normalise with statistics estimated on the training clips before the first step
    (``task``) or those of the checkpoint (``checkpoint``), fixed from then on so that training computes what
    inference computes; or with each batch's own statistics (``batch``, the usual training mode)."""

    view: str = "spec"  # spec | wave: the audio tower to fine-tune
    features: str = "layers"  # pooled | layers: the read-out the head sees (as embed.features; layers measured better)
    epochs: int = 30  # the minimum (max_steps > 0) or the whole budget (max_steps = 0), in epochs
    max_steps: int = 3000  # the cap of a run that goes on while validation improves; 0: exactly `epochs` epochs
    min_epoch_steps: int = 20
    patience: int = 10  # 0: never stop early
    batch_size: int = 32
    lr: float = 1e-3
    tower_lr_scale: float = 0.1
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0  # 0: no clipping
    mixup_alpha: float = 0.3
    spec_mask: bool = True
    head_dropout: float = 0.1
    valid_share: float = 0.2  # validation carved from train (when the task has none), as the linear probe does
    labels_per_class: int = 0  # 0: every training clip
    bn_stats: str = "task"  # task | checkpoint | batch: the tower's BatchNorm statistics (docs/finetune.md)
    seed: int = 0

    def __post_init__(self) -> None:
        """Range checks (a choice is checked with :data:`CHOICES`); NaN fails every rule."""
        rules = [("epochs", self.epochs >= 1), ("max_steps", self.max_steps >= 0),
                 ("min_epoch_steps", self.min_epoch_steps >= 1),
                 ("patience", self.patience >= 0), ("batch_size", self.batch_size >= 2), ("lr", self.lr > 0),
                 ("tower_lr_scale", self.tower_lr_scale >= 0), ("weight_decay", self.weight_decay >= 0),
                 ("warmup_epochs", self.warmup_epochs >= 0), ("grad_clip", self.grad_clip >= 0),
                 ("mixup_alpha", self.mixup_alpha >= 0), ("head_dropout", 0 <= self.head_dropout < 1),
                 ("valid_share", 0 < self.valid_share < 1), ("labels_per_class", self.labels_per_class >= 0)]
        for key, ok in rules:
            if not ok:
                raise ConfigError(f"finetune.{key}={getattr(self, key)!r} is out of range (docs/finetune.md lists "
                                  "each setting)")


@dataclass
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    @property
    def embed_window_seconds(self) -> float:
        """The window a tower embeds, in seconds: ``embed.window_seconds``, else the training crop."""
        return self.embed.window_seconds or self.data.crop_seconds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Build a config from a (possibly partial) nested dict; unknown keys and bad choices are errors."""
        return apply_overrides(cls(), d)


# Every setting with a fixed set of values, in one table: a config is checked against it whenever one is
# built (load_config, Config.from_dict, apply_overrides on a whole Config), so a bad choice fails at load
# naming the valid values, not hours later where the value is first used. A list setting (model.views)
# is checked item by item. The modules that act on a choice keep their own tuple (augment.MIX_MODES,
# shards.FRAME_FORMATS, models.PRESETS, ...); tests/test_config.py checks that they agree with this table.
CHOICES: dict[str, tuple[Any, ...]] = {
    "audio.window": ("hann", "hamming"),
    "ingest.frame_format": ("jpeg", "raw", "h264"),
    "ingest.audio_format": ("flac", "pcm"),
    "ingest.audio_only": ("skip", "keep"),
    "model.preset": ("tiny", "small", "paper"),
    "model.views": ("spec", "wave", "video"),
    "model.video_depth": (18, 50),
    "model.spec_arch": ("cnn14", "resnet"),
    "augment.mix": ("none", "mixup", "mixback"),
    "optim.name": ("adamw", "lars"),
    "train.precision": ("auto", "bf16", "fp32"),
    "embed.features": EMBED_FEATURES,
    "finetune.view": FINETUNE_VIEWS,
    "finetune.features": EMBED_FEATURES,
    "finetune.bn_stats": ("task", "checkpoint", "batch"),
}


def check_choices(cfg: Config) -> Config:
    """Return ``cfg`` if every setting in :data:`CHOICES` holds a valid value, else raise :class:`ConfigError`
    naming the setting, its value and the valid values."""
    for key, valid in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, v in items:
            if v not in valid:
                where = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"{where}={v!r}; use one of {', '.join(map(str, valid))}")
    return cfg


def apply_overrides(obj: Any, d: dict[str, Any], where: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with the nested dict ``d`` applied (strict keys)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in d.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'; valid keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = apply_overrides(current, value, path)
        else:
            changes[key] = coerce(path, hints[key], value)
    out = dataclasses.replace(obj, **changes)
    return check_choices(out) if isinstance(out, Config) else out


def preset_path(preset: str | Path) -> Path:
    """Resolve a preset name (``tiny``) or a YAML path to a file path."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    named = PRESET_DIR / f"{preset}.yaml"
    if not named.is_file():
        names = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"no preset named {preset!r}; presets: {', '.join(names)}, or a path to a .yaml file")
    return named


def load_config(preset: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults, then the preset's overrides, then ``--set`` overrides (strings) or a dict."""
    cfg = Config()
    if preset is not None:
        path = preset_path(preset)
        data = yaml.safe_load(path.read_text()) or {}
        try:
            cfg = apply_overrides(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    if overrides:
        cfg = apply_overrides(cfg, overrides if isinstance(overrides, dict) else parse_set(list(overrides)))
    return cfg


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (``config.yaml`` next to an output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path

