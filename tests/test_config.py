"""Config: shipped recipes, dotted overrides with type coercion, helpful errors, YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hareid.config import Config, load_config, save_config
from hareid.config import list_recipes as recipes
from hareid.errors import ConfigError


def test_defaults_and_shipped_recipes_load() -> None:
    assert isinstance(load_config(None), Config)
    names = recipes()
    assert {"hacnn_market1501", "hacnn_synthetic"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.model.name == ("mobilenetv2_harm" if name.startswith("mobilenetv2") else "hacnn")
    m = load_config("hacnn_market1501")
    assert (m.data.height, m.data.width, m.data.batch_size) == (160, 64, 32)
    assert m.optim.lr == pytest.approx(5e-4)  # written "5.0e-4"; a bare "5e-4" is a YAML string
    assert isinstance(m.optim.lr, float)


def test_overrides_are_coerced_to_field_types() -> None:
    cfg = load_config("hacnn_synthetic", [
        "train.epochs=3", "model.num_regions=2", "optim.lr=3e-4", "train.channels_last=false",
        "optim.milestones=[5, 8]", "optim.betas=0.8,0.9", "train.resume=null", "train.amp=bf16",
        "model.options.region_sampling=direct", "data.options={num_train_ids: 10}", "output_dir=/tmp/x",
    ])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.options["num_regions"] == 2 and isinstance(cfg.model.options["num_regions"], int)
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.channels_last is False
    assert cfg.optim.milestones == [5, 8] and cfg.optim.betas == [0.8, 0.9]
    assert cfg.train.resume is None and cfg.train.amp == "bf16"
    assert cfg.model.options == {"num_regions": 2, "region_sampling": "direct"}
    assert cfg.data.options == {"num_train_ids": 10}
    assert cfg.output_dir == "/tmp/x"
    assert "feature_dim" not in cfg.model.options  # unset = the model's own default


@pytest.mark.parametrize(("override", "fragment"), [
    (["train.epoch=3"], "did you mean 'train.epochs'"),
    (["trian.epochs=3"], "did you mean 'train'"),
    (["optim.lr=fast"], "optim.lr: expected float"),
    (["train.epochs=2.5"], "train.epochs: expected int"),
    (["train.amp=bf61"], "did you mean 'bf16'"),
    (["train.channels_last=maybe"], "expected bool"),
    (["train.epochs"], "expected key=value"),
    (["train=3"], "is a section"),
    (["data.batch_size=30"], "multiple of data.num_instances"),
    (["train.epochs=0"], "must be > 0"),
    (["optim.lr=0"], "optim.lr: must be > 0"),
    (["optim.gamma=1e12"], "optim.gamma: the decay factor must be in (0, 1]"),
    (["model.num_region=2"], "did you mean 'model.num_regions'"),
    (["model.channels=[64,128]"], "model.channels: expected 3 values"),
    (["model.soft_attn=maybe"], "model.soft_attn: expected bool"),
    (["model.name=resnet18_harm", "model.channels=[64,128,192]"], "unknown option 'model.channels' for model 'resnet18_harm'"),
    (["model.name=hacn"], "unknown model 'hacn'"),
    (["model.soft_mask=softmax"], "model.soft_mask: must be one of relu, sigmoid, temperature, spatial"),
    (["model.region_sampling=bicubic"], "model.region_sampling: must be one of direct, torchreid"),
])
def test_bad_overrides_give_one_line(override: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("hacnn_synthetic", override)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg


def test_unknown_key_in_file_suggests_nearest(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rate'; did you mean"):
        load_config(p)
    p.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean 'optim'"):
        load_config(p)
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got 'many'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"did you mean 'hacnn_synthetic'"):
        load_config("hacnn_synthetc")


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config("hacnn_market1501", ["train.epochs=7", "data.options={variant: labeled}"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 7
    again = load_config(path)
    assert again == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_model_options_come_from_the_registry() -> None:
    """``model.<option>`` is typed by the model's own signature; the input size defaults to the model's."""
    cfg = load_config(None, ["model.channels=[64,128,192]", "model.num_regions=2", "model.soft_attn=off"])
    assert cfg.model.options == {"channels": (64, 128, 192), "num_regions": 2, "soft_attn": False}
    assert (cfg.data.height, cfg.data.width) == (160, 64)  # hacnn's registry entry
    res = load_config(None, ["model.name=resnet50_harm"])
    assert (res.data.height, res.data.width) == (256, 128)
    again = Config.from_dict(cfg.to_dict())  # YAML-able (tuples become lists) and back
    assert again.model.options == cfg.model.options


def test_old_style_model_section_and_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: hacnn\n  num_regions: 2\n  feature_dim: null\n")  # hareid 0.1 layout
    assert load_config(p).model.options == {"num_regions": 2}
    for text in ("{}", "", "# nothing\n"):
        p.write_text(text)
        with pytest.raises(ConfigError, match="the config is empty"):
            load_config(p)
    p.write_text("\ufefftrain:\n  epochs: 2\n")  # a byte-order mark, as some editors write
    assert load_config(p).train.epochs == 2
