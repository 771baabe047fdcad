import subprocess
import sys

import pytest

from equissl.backbones.resnet import ResNetConfig
from equissl.config import Config, ConfigError, build_config, from_dict, load_recipe, save_config


def test_defaults_resolve_polymorphic_sections():
    config = build_config()
    assert isinstance(config.backbone, ResNetConfig)
    assert config.backbone.stem == "imagenet"


def test_recipe_then_overrides_take_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.5\ntrainer:\n  max_steps: 7\n")
    config = build_config(recipe, ["optim.lr=0.25", "augment.crop_scale=[0.3, 0.9]"])
    assert config.optim.lr == 0.25
    assert config.trainer.max_steps == 7
    assert config.augment.crop_scale == (0.3, 0.9)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.max_stpes=3", "trainer.max_stpes"),
        ("optim.lr=abc", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=2e-3e", "optim.lr"),
        ("trainer.max_steps=2.5", "trainer.max_steps"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("augment.crop_scale=[0.2]", "augment.crop_scale"),
        ("backbone.stemm=cifar", "backbone.stemm"),
        ("backbone.name=resnet19", "backbone.name"),
        ("trainer.online_probe=3", "trainer.online_probe"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        build_config(None, [override])
    assert fragment in str(info.value)


@pytest.mark.parametrize("text, value", [("2e-3", 2e-3), ("1E3", 1000.0), (".5", 0.5), ("+3", 3.0)])
def test_exponent_without_a_dot_is_a_number(tmp_path, text, value):
    # YAML 1.1 reads 2e-3 as the string "2e-3"; float settings take it as the number users mean.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"optim:\n  weight_decay: {text}\n")
    config = build_config(recipe, [f"optim.lr={text}"])
    assert config.optim.lr == value and config.optim.weight_decay == value


def test_misspelt_key_suggests_the_closest_valid_name():
    with pytest.raises(ConfigError, match="max_steps"):
        build_config(None, ["trainer.max_stpes=3"])


def test_unknown_section_and_non_mapping_are_refused():
    with pytest.raises(ConfigError, match="trainr"):
        from_dict(Config, {"trainr": {}})
    with pytest.raises(ConfigError, match="trainer"):
        from_dict(Config, {"trainer": 3})


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        build_config(None, ["optim.lr"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = build_config(None, ["optim.lr=0.125", "backbone.stem=strided"])
    save_config(config, tmp_path / "c.yaml")
    again = from_dict(Config, load_recipe(tmp_path / "c.yaml"))
    assert again == config


def test_cli_refuses_bad_key_before_training(tmp_path):
    for override in ("trainer.max_stpes=3", "optim.lr=abc"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "equissl.cli",
                "pretrain",
                "--config",
                "simclr_resnet18_shapes3d",
                override,
                f"trainer.run_dir={tmp_path}/run",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert override.split("=")[0] in proc.stderr
        assert not (tmp_path / "run").exists()  # refused before any work


def test_stdlib_ssl_is_not_shadowed():
    import ssl

    assert hasattr(ssl, "SSLContext")


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.hflip_prob=1.5", "augment.hflip_prob: expected a value in [0, 1], got 1.5"),
        ("trainer.batch_size=0", "trainer.batch_size: expected a value >= 1, got 0"),
        ("data.num_workers=-1", "data.num_workers: expected a value >= 0, got -1"),
        ("optim.lr=0", "optim.lr: expected a value > 0, got 0.0"),
        ("optim.lr=.inf", "optim.lr: expected a finite number"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1]: expected a value in [0, 1), got 1.0"),
        ("probe.holdout_fraction=1", "probe.holdout_fraction: expected a value in (0, 1), got 1.0"),
        ("augment.crop_size=96", "augment.crop_size=96 > data.image_size=64"),
        ("trainer.run_dir=runs/{nme}", "unknown placeholder {nme}"),
        ("trainer.run_dir=runs/{", "trainer.run_dir"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as info:
        build_config(None, [override])
    assert message in str(info.value)


def test_crop_sizes_follow_the_image_size_unless_set():
    config = build_config(None, ["data.image_size=48"])
    assert (config.augment.crop_size, config.augment.small_crop_size) == (48, 24)
    config = build_config(None, ["data.image_size=48", "augment.crop_size=40"])
    assert (config.augment.crop_size, config.augment.small_crop_size) == (40, 20)
    config = build_config(None, ["data.name=cifar10"])  # the entry's own default image size (32)
    assert (config.data.image_size, config.augment.crop_size) == (32, 32)


def test_free_form_mapping_values_are_kept_and_round_trip(tmp_path):
    overrides = ["backbone={name: timm, model_name: test_vit, kwargs: {img_size: 64, global_pool: avg}}"]
    config = build_config(None, overrides)
    assert config.backbone.kwargs == {"img_size": 64, "global_pool": "avg"}
    save_config(config, tmp_path / "c.yaml")
    assert from_dict(Config, load_recipe(tmp_path / "c.yaml")).backbone.kwargs == config.backbone.kwargs
    config = build_config(None, [*overrides, "backbone.kwargs.img_size=32", "data.image_size=32"])
    assert config.backbone.kwargs == {"img_size": 32, "global_pool": "avg"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["backbone={name: timm, model_name: test_vit, kwargs: [1, 2]}"],
            "backbone.kwargs: expected a mapping",
        ),
        (
            ["backbone={name: timm, model_name: tset_vit}"],
            "backbone.model_name: timm has no model 'tset_vit'",
        ),
        (
            ["backbone={name: timm, model_name: test_vit, kwargs: {pretrained: true}}"],
            "backbone.kwargs.pretrained",
        ),
        (["backbone={name: timm, model_name: test_vit, kwargs: {foo: 1}}"], "backbone.kwargs: timm model"),
        (["backbone={name: timm, model_name: vit_tiny_patch16_224}"], "backbone.kwargs.img_size=64"),
        (["backbone={name: torchvision, model_name: vgg11}"], "not a supported torchvision family"),
        (
            ["backbone={name: torchvision, model_name: resnet18, pretrained_file: /no/such.pth}"],
            "/no/such.pth",
        ),
        (
            ["backbone={name: pointpillars, frame: c4}"],
            "backbone.frame='c4': backbone 'pointpillars' does not",
        ),
        (["backbone.name=pointpillars", "backbone.canonicalizer=c4"], "backbone.canonicalizer='c4'"),
        (["backbone.frame=c4", "backbone.canonicalizer=c8"], "choose one"),
        (["backbone.canonicalizer=c4", "backbone.canonicalizer_kernel=4"], "backbone.canonicalizer_kernel"),
        (["backbone.frame=c8"], "backbone.frame: expected one of"),
    ],
)
def test_backbone_by_name_and_symmetry_settings_are_checked_before_any_work(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config(None, overrides)
    assert message in str(info.value)
