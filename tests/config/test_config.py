"""Config: presets, YAML, original flat keys, one-line errors."""

import pytest

from tripletface.config import ORIGINAL_KEYS, ConfigError, load_config


def test_seed_preset_holds_the_original_values():
    cfg = load_config("seed")
    assert cfg.data.batch_size == 256
    assert cfg.train.steps_per_epoch == 50
    assert cfg.train.validation_steps == 10
    assert cfg.train.epochs == 10
    assert cfg.model.image_size == (224, 224)
    assert cfg.loss.margin == pytest.approx(0.2)
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.model.backbone == "resnet50"
    assert cfg.loss.name == "triplet" and cfg.data.sampling == "triplets"
    assert cfg.data.train_dir == "cropped_data/train"
    assert cfg.train.checkpoint_dir and cfg.train.tensorboard_logdir and cfg.data.test_triplets


def test_cpu_preset_is_smaller_than_seed():
    cpu, seed = load_config("cpu"), load_config("seed")
    assert cpu.model.image_size[0] < seed.model.image_size[0]
    assert cpu.data.batch_size < seed.data.batch_size


def test_original_names_and_sectioned_names_on_the_command_line():
    cfg = load_config("cpu", overrides=["EPOCHS=2", "STEPS_PER_EPOCH=5", "TRAIN_DIR=cropped/train",
                                        "CHECKPOINT_DIR=ckpt", "model.backbone=resnet50", "IMAGE_SIZE=96x96",
                                        "augment.flip=false", "MARGIN=0.3"])
    assert (cfg.train.epochs, cfg.train.steps_per_epoch) == (2, 5)
    assert cfg.data.train_dir == "cropped/train" and cfg.train.checkpoint_dir == "ckpt"
    assert cfg.model.backbone == "resnet50" and cfg.model.image_size == (96, 96)
    assert cfg.augment.flip is False and cfg.loss.margin == pytest.approx(0.3)


def test_yaml_file_with_sections_original_keys_and_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: cpu\nEPOCHS: 3\ntrain:\n  learning_rate: 0.01\nmodel:\n  image_size: [64, 64]\n")
    cfg = load_config(config_file=f, overrides=["EPOCHS=4"])
    assert cfg.model.backbone == "mobilenet"  # from the preset named in the file
    assert cfg.train.epochs == 4  # command line beats file
    assert cfg.train.learning_rate == pytest.approx(0.01)
    assert cfg.model.image_size == (64, 64)


@pytest.mark.parametrize("override, words", [
    (["EPOCH=2"], "EPOCH"),
    (["train.epochz=2"], "train.epochz"),
    (["EPOCHS=two"], "EPOCHS"),
    (["EPOCHS=0"], "train.epochs"),
    (["model.backbone=vgg"], "model.backbone"),
    (["LEARNING_RATE=-1"], "train.learning_rate"),
    (["novalue"], "novalue"),
    (["crop.template=affine"], "crop.template"),
    (["data.min_blur=-1"], "data.min_blur"),
    (["data.max_pose=-0.1"], "data.max_pose"),
])
def test_bad_key_or_value_is_a_one_line_error_naming_it(override, words):
    with pytest.raises(ConfigError) as e:
        load_config("cpu", overrides=override)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'gpu9'"):
        load_config("gpu9")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(config_file=bad)


@pytest.mark.parametrize("key", sorted(ORIGINAL_KEYS))
def test_every_original_key_sets_its_sectioned_key_and_nothing_else(key):
    full = ORIGINAL_KEYS[key]
    section, name = full.split(".")
    base = load_config("seed")
    old = getattr(getattr(base, section), name)
    if isinstance(old, tuple):
        text, new = "96x96", (96, 96)
    elif isinstance(old, str):
        text = new = "elsewhere/x"
    else:
        new = old + 1 if isinstance(old, int) else old * 2
        text = str(new)
    for spelling in (key, full):
        cfg = load_config("seed", overrides=[f"{spelling}={text}"])
        assert getattr(getattr(cfg, section), name) == new, spelling
        changed = {f"{s}.{k}" for s, d in cfg.to_dict().items() for k, v in d.items() if v != base.to_dict()[s][k]}
        assert changed == {full}, spelling
