import pytest
import yaml

from avssl.config import Config, ConfigError, load_config, save_config
from avssl.overrides import parse_set


def test_presets_hold_only_valid_overrides():
    for name in ("tiny", "small", "paper"):
        cfg = load_config(name)
        assert isinstance(cfg, Config)
    assert load_config("tiny").model.preset == "tiny"
    assert load_config("paper").model.video_depth == 50


def test_set_overrides_are_typed():
    cfg = load_config("tiny", ["model.width=0.5", "loss.pairs=[spec-wave]", "train.steps=7", "loss.weights={spec-wave: 2}"])
    assert cfg.model.width == 0.5 and isinstance(cfg.model.width, float)
    assert cfg.loss.pairs == ["spec-wave"]
    assert cfg.train.steps == 7
    assert cfg.loss.weights == {"spec-wave": 2.0}
    # later overrides win over the preset, untouched keys keep preset values
    assert cfg.data.batch_size == load_config("tiny").data.batch_size


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.widht=2"])
    assert "model.widht" in str(e.value) and "width" in str(e.value)
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        Config.from_dict({"nope": {}})


def test_bad_values_are_errors():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set(["train.steps"])
    with pytest.raises(ConfigError, match="no preset named"):
        load_config("huge")


@pytest.mark.parametrize("text, expected", [
    ("optim: {lr: 0.1, momentum: 0.9}\n", "optim.momentum"),  # an unknown key
    ("augment: {mix: cutmix}\n", "augment.mix='cutmix'; use one of none, mixup, mixback"),  # a bad choice
])
def test_bad_preset_file_names_the_file(tmp_path, text, expected):
    p = tmp_path / "mine.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and expected in str(e.value)


def test_round_trip(tmp_path):
    cfg = load_config("small", ["augment.mix=mixback"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = Config.from_dict(yaml.safe_load(path.read_text()))
    assert again == cfg


@pytest.mark.parametrize("key, bad", [
    ("augment.mix", "cutmix"), ("optim.name", "sgd"), ("train.precision", "fp16"), ("ingest.frame_format", "png"),
    ("ingest.audio_only", "drop"), ("model.preset", "huge"), ("model.spec_arch", "vit"), ("audio.window", "blackman"),
    ("embed.features", "logits"), ("model.video_depth", "34"), ("model.views", "[spec, text]"),
])
def test_bad_choice_fails_at_load_naming_the_valid_values(key, bad):
    from avssl.config import CHOICES

    valid = CHOICES[key]
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [f"{key}={bad}"])
    assert key in str(e.value) and all(str(v) in str(e.value) for v in valid)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # a checkpoint's or a sweep's config too
        Config.from_dict({key.split(".")[0]: {key.split(".")[1]: yaml.safe_load(bad)}})
    section, name = key.split(".")
    for good in valid:  # every listed value loads
        value = [good] if name == "views" else good
        assert getattr(getattr(load_config("tiny", {section: {name: value}}), section), name) == value


def test_choices_agree_with_the_modules_that_act_on_them():
    from avssl.data.augment import MIX_MODES
    from avssl.config import CHOICES, EMBED_FEATURES
    from avssl.models import PRESETS, VIEWS
    from avssl.models.avmodel import SPEC_ARCHS
    from avssl.models.video import RESNET_LAYERS
    from avssl.data.shards import AUDIO_FORMATS, FRAME_FORMATS

    assert CHOICES["augment.mix"] == MIX_MODES and CHOICES["ingest.frame_format"] == FRAME_FORMATS
    assert CHOICES["ingest.audio_format"] == AUDIO_FORMATS
    assert CHOICES["model.preset"] == PRESETS and CHOICES["model.spec_arch"] == SPEC_ARCHS
    assert CHOICES["model.views"] == VIEWS and CHOICES["embed.features"] == EMBED_FEATURES
    assert set(CHOICES["model.video_depth"]) == set(RESNET_LAYERS)



@pytest.mark.parametrize("setting", ["finetune.batch_size=1", "finetune.valid_share=1.0", "finetune.lr=.nan",
                                     "finetune.head_dropout=1.0", "finetune.bn_stats=frozen"])
def test_finetune_section_is_checked_at_load(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        load_config("tiny", [setting])
