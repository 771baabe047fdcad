"""Every packaged recipe (``equissl/recipes/``) builds, validates and trains one optimizer step at a tiny size.

The recipe's objective, backbone, augmentation and optimiser settings are kept; only the data shrink to
the tiny renders of ``tests/conftest.py`` (read by the recipe's own dataset reader: 3DIEBench recipes read
the tiny shapes3d render, which is in 3DIEBench's layout), the images to 32 px, the batch to 16 and the
run to one step. A recipe added to ``equissl/recipes/`` is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from equissl.config import build_config, load_recipe
from equissl.launch.trainer import pretrain
from equissl.recipes import list_recipes, recipe_paths, resolve_recipe
from equissl.registry import OBJECTIVES
from tests.conftest import TINY_DATA, tiny_sim_overrides
from tests.helpers import write_labelled_folder

RECIPES = sorted(recipe_paths().values())
TINY_POINTPILLARS = [
    "backbone.point_cloud_range=[-12.8,-12.8,-3.0,12.8,12.8,1.0]",
    "backbone.vfe_filters=[8]",
    "backbone.layer_nums=[1,1]",
    "backbone.layer_strides=[2,2]",
    "backbone.num_filters=[8,16]",
    "backbone.upsample_strides=[1,2]",
    "backbone.num_upsample_filters=[8,8]",
    "backbone.max_points_per_voxel=4",
    "objective.matches_per_scene=32",
    "objective.hidden_dim=16",
    "objective.proj_dim=8",
    "trainer.batch_size=2",
]


def tiny_paper_budget(tree: dict, folder: Path) -> list[str]:
    """Paper-budget GPU recipes (ImageNet-style folders): a tiny labelled folder, 32 px, batch 4, a
    2-block ViT of width 32 or a strided-stem ResNet-18, and the objective's widths shrunk to 32 (their paper
    widths, 8192-d Barlow Twins projector or DINO's 65536 prototypes, would take minutes on CPU)."""
    write_labelled_folder(folder, per_class=4, size=40)
    overrides = [
        f"data.root={folder}",
        "data.image_size=32",
        "data.num_workers=0",
        "augment.crop_size=32",
        "augment.small_crop_size=16",
        "trainer.batch_size=4",
    ]
    if tree["backbone"]["name"].startswith("poly_vit"):
        overrides += [
            "backbone.img_size=32",
            "backbone.patch_size=8",
            "backbone.embed_dim=32",
            "backbone.depth=2",
            "backbone.num_heads=2",
        ]
    else:  # the recipe's ResNet-50 is covered by the backbone contract tests; ResNet-18 keeps this fast
        overrides += ["backbone.name=resnet18", "backbone.stem=strided"]
    name = tree["objective"]["name"]
    defaults = OBJECTIVES.get(name).config_cls()
    for f in dataclasses.fields(defaults):
        value = tree["objective"].get(f.name, getattr(defaults, f.name))
        if "dim" in f.name and isinstance(value, int) and not isinstance(value, bool) and value > 32:
            overrides.append(f"objective.{f.name}=32")
        elif "dim" in f.name and isinstance(value, (tuple, list)):
            overrides.append(f"objective.{f.name}=[{','.join('32' for _ in value)}]")
    if hasattr(defaults, "local_crop_size"):
        overrides.append("objective.local_crop_size=16")
    return overrides


def tiny_data(recipe: Path, shapes3d_root: Path, sim, folder: Path | None = None) -> list[str]:
    """Overrides pointing the recipe's dataset at a tiny render it can read."""
    tree = load_recipe(recipe)
    data = tree.get("data", {}).get("name", "shapes3d")
    if data == "lidar_sim":
        return [*tiny_sim_overrides(*sim), *TINY_POINTPILLARS]
    if data == "imagefolder":
        return tiny_paper_budget(tree, folder)
    image = [
        "data.image_size=32",
        "data.num_workers=0",
        "augment.crop_size=32",
        "augment.small_crop_size=16",
        "backbone.stem=strided",
        "trainer.batch_size=16",
    ]
    if tree.get("objective", {}).get("capsule_map_size"):  # per-position capsules: the map of a 32 px input
        image.append("objective.capsule_map_size=2")
    if data == "3diebench":
        return [f"data.root={shapes3d_root}", "data.views_per_object=4", *image]
    assert data == "shapes3d", f"{recipe.name}: no tiny data for dataset {data!r}; add it here"
    return [f"data.root={shapes3d_root}", *TINY_DATA, *image]


def test_every_recipe_is_covered():
    assert len(RECIPES) >= 12 and all(
        path.stem.count("_") >= 2 for path in RECIPES
    )  # <objective>_<backbone>_<data>
    package = Path(__file__).resolve().parents[1] / "equissl" / "recipes"
    assert {path.name for path in RECIPES} == {path.name for path in package.glob("*.yaml")}


def test_recipes_resolve_by_name_and_describe_themselves(tmp_path):
    descriptions = list_recipes()
    assert list(descriptions) == [path.stem for path in RECIPES]
    assert all(0 < len(text) <= 100 for text in descriptions.values()), descriptions
    path = recipe_paths()["simclr_resnet18_shapes3d"]
    assert (
        resolve_recipe("simclr_resnet18_shapes3d") == path == resolve_recipe("simclr_resnet18_shapes3d.yaml")
    )
    assert resolve_recipe("configs/simclr_resnet18_shapes3d.yaml") == path  # the old commands still work
    own = tmp_path / "simclr_resnet18_shapes3d.yaml"
    own.write_text("name: mine\n")
    assert resolve_recipe(own) == own  # a file is read as given
    with pytest.raises(ValueError, match=r"'elsewhere/simclr_resnet18_shapes3d.yaml' is neither a file nor"):
        resolve_recipe("elsewhere/simclr_resnet18_shapes3d.yaml")  # never guessed from a missing path
    with pytest.raises(
        ValueError, match=r"'simclr_resnet' is neither .* packaged recipe .*simclr_resnet18_shapes3d"
    ):
        build_config("simclr_resnet")


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_builds_and_trains_one_step(recipe, tiny_shapes3d_root, tiny_sim, tmp_path):
    run = [
        "trainer.max_steps=1",
        "trainer.progress=false",
        "trainer.device=cpu",
        "trainer.log_every=1",
        "trainer.precision=fp32",  # bf16 kernels compile per shape on CPU: seconds a recipe; tested elsewhere
        f"trainer.run_dir={tmp_path}/run",
    ]
    config = build_config(
        recipe, [*tiny_data(recipe, tiny_shapes3d_root, tiny_sim, tmp_path / "folder"), *run]
    )
    assert config.name == recipe.stem and config.objective.name == recipe.stem.split("_")[0]
    result = pretrain(config)
    assert result.status == "finished" and result.step == 1
    assert math.isfinite(result.last_metrics["loss"])
    assert (tmp_path / "run" / "checkpoints" / "step-00000001" / "COMPLETE").is_file()
