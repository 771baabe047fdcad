"""The procedural 3DIEBench stand-in: determinism, on-disk format, latents, orientation, idempotence."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from equissl.config import DataConfig, from_dict
from equissl.datasets import shapes3d
from equissl.datasets.ie3d import IE3DDataset
from equissl.datasets.shapes3d import (
    CLASS_NAMES,
    LATENT_RANGES,
    MARKER_NAME,
    Shapes3DConfig,
    is_complete,
    render_shapes3d,
)
from equissl.errors import UserError
from equissl.registry import DATASETS


def tiny(**overrides) -> Shapes3DConfig:
    values = {
        "num_classes": 10,
        "objects_per_class": 1,
        "val_objects_per_class": 1,
        "views_per_object": 3,
        "render_size": 32,
        "render_workers": 1,
        "seed": 0,
    }
    values.update(overrides)
    return Shapes3DConfig(**values)


@pytest.fixture(scope="module")
def rendered(module_tmp_path):
    cfg = tiny()
    return render_shapes3d(module_tmp_path / "shapes3d", cfg, progress=False), cfg


def tree_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_for_any_worker_count(tmp_path):
    cfg = tiny(num_classes=3, views_per_object=2)
    one = tree_bytes(render_shapes3d(tmp_path / "a", cfg, progress=False))
    two = tree_bytes(
        render_shapes3d(
            tmp_path / "b", tiny(num_classes=3, views_per_object=2, render_workers=2), progress=False
        )
    )
    assert len(one) == 3 * 2 * 2 * 2 + 6 + 2  # views * (jpg + npy), 6 index arrays, names, marker
    assert one == two


def test_different_seeds_differ(rendered, tmp_path):
    root, _ = rendered
    other = render_shapes3d(tmp_path / "other", tiny(num_classes=2, seed=1), progress=False)
    path = np.load(other / "train_images.npy")[0][1:]
    assert path == np.load(root / "train_images.npy")[0][1:]  # same folder names ...
    for k in range(3):  # ... different content
        assert not np.array_equal(
            np.load(root / path / f"latent_{k}.npy"), np.load(other / path / f"latent_{k}.npy")
        )
        assert (root / path / f"image_{k}.jpg").read_bytes() != (other / path / f"image_{k}.jpg").read_bytes()


def test_layout_and_index_files_follow_3diebench(rendered):
    root, cfg = rendered
    synsets = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert synsets == [shapes3d.synset_id(k) for k in range(10)] and all(
        re.fullmatch(r"\d{8}", s) for s in synsets
    )
    assert json.loads((root / "class_names.json").read_text()) == dict(zip(synsets, CLASS_NAMES[:10]))
    seen = {}
    for split in ("train", "val"):
        paths, labels = np.load(root / f"{split}_images.npy"), np.load(root / f"{split}_labels.npy")
        assert paths.dtype.kind == "U" and paths.ndim == 1 and labels.dtype == np.int64
        assert len(paths) == 10 * (cfg.objects_per_class if split == "train" else cfg.val_objects_per_class)
        all_latents = np.load(root / f"all_latents_{split}.npy")
        assert all_latents.shape == (len(paths) * 3, 7)
        for i, (path, label) in enumerate(zip(paths, labels)):
            synset, obj = path.split("/")[1:]
            assert path.startswith("/") and re.fullmatch(r"[0-9a-f]{32}", obj)
            assert synsets.index(synset) == label
            files = sorted(p.name for p in (root / synset / obj).iterdir())
            assert files == sorted(
                [f"image_{k}.jpg" for k in range(3)] + [f"latent_{k}.npy" for k in range(3)]
            )
            stacked = np.stack([np.load(root / synset / obj / f"latent_{k}.npy") for k in range(3)])
            np.testing.assert_array_equal(stacked, all_latents[3 * i : 3 * i + 3])
            seen[obj] = split
    assert len(seen) == 20  # held-out objects: no object in both splits
    assert json.loads((root / MARKER_NAME).read_text())["params"]["seed"] == 0


def test_latents_are_float32_in_documented_ranges(rendered):
    root, _ = rendered
    latents = np.concatenate([np.load(root / f"all_latents_{s}.npy") for s in ("train", "val")])
    assert latents.dtype == np.float32
    low, high = np.array(LATENT_RANGES, dtype=np.float64).T
    assert np.all(latents >= low - 1e-6) and np.all(latents <= high + 1e-6)
    many = shapes3d.sample_latents(np.random.default_rng(0), 4000).astype(np.float64)
    assert np.all(many >= low - 1e-6) and np.all(many <= high + 1e-6)
    # Rotations are uniform on SO(3): the rotated z axis is uniform on the sphere (mean ~0, E[z^2] = 1/3).
    z_axis = Rotation.from_euler("xyz", many[:, :3]).apply([0.0, 0.0, 1.0])
    assert np.abs(z_axis.mean(axis=0)).max() < 0.05
    np.testing.assert_allclose((z_axis**2).mean(axis=0), 1 / 3, atol=0.03)
    # The stored angles are scipy's canonical extrinsic xyz Euler angles of the rendered rotation.
    np.testing.assert_allclose(
        Rotation.from_euler("xyz", many[:, :3]).as_euler("xyz"), many[:, :3], atol=1e-5
    )


def _tripod() -> shapes3d.Mesh:
    """Arms of lengths 0.9, 0.5, 0.25 along +x, +y, +z: every rotation of it looks different."""
    gray = (0.7, 0.7, 0.7)
    return shapes3d.mesh_from_parts(
        [
            shapes3d.catalogue._box((0.9, 0.1, 0.1), (0.45, 0, 0), gray),
            shapes3d.catalogue._box((0.1, 0.5, 0.1), (0, 0.25, 0), gray),
            shapes3d.catalogue._box((0.1, 0.1, 0.25), (0, 0, 0.125), gray),
        ]
    )


def _surface_points(mesh: shapes3d.Mesh, per_side: int = 40) -> np.ndarray:
    a, b = np.meshgrid(np.linspace(0, 1, per_side), np.linspace(0, 1, per_side))
    keep = a + b <= 1
    bary = np.stack([1 - a[keep] - b[keep], a[keep], b[keep]], axis=1)
    corners = mesh.vertices[mesh.triangles]  # (M, 3, 3)
    return np.einsum("sk,mkd->msd", bary, corners).reshape(-1, 3)


def _project(points: np.ndarray, size: int) -> np.ndarray:
    """Independent pinhole camera from the documented constants: (N, 2) pixel (row, col)."""
    eye = shapes3d.CAMERA_POSITION
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0, 0, 1])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rel = points - eye
    depth = rel @ forward
    focal = (size / 2) / np.tan(shapes3d.CAMERA_FOV / 2)
    col = size / 2 + focal * (rel @ right) / depth
    row = size / 2 - focal * (rel @ up) / depth
    return np.stack([row, col], axis=1)


def _silhouette_fit(mask: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """(fraction of projected points on the dilated mask, fraction of mask pixels hit by a point)."""
    size = mask.shape[0]
    pixels = np.clip(np.floor(_project(points, size)).astype(int), 0, size - 1)
    dilated = mask.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            dilated |= np.roll(mask, shift, axis=axis)
    inside = dilated[pixels[:, 0], pixels[:, 1]].mean()
    hit = np.zeros_like(mask)
    hit[pixels[:, 0], pixels[:, 1]] = True
    return float(inside), float((hit & mask).sum() / mask.sum())


def test_rendered_orientation_is_scipy_extrinsic_xyz():
    mesh, size = _tripod(), 64
    points = _surface_points(mesh)
    latents = shapes3d.sample_latents(np.random.default_rng(3), 4)
    latents[0, :3] = (0.9, -0.6, 2.0)
    for latent in latents:
        _, mask = shapes3d.render_view(mesh, latent, size, supersample=2)
        angles = latent[:3].astype(np.float64)
        inside, coverage = _silhouette_fit(mask, Rotation.from_euler("xyz", angles).apply(points))
        assert inside > 0.98 and coverage > 0.9, (angles, inside, coverage)
        # The check can fail: the intrinsic order or the inverse rotation do not fit the silhouette.
        for wrong in (Rotation.from_euler("XYZ", angles), Rotation.from_euler("xyz", angles).inv()):
            wrong_inside, wrong_coverage = _silhouette_fit(mask, wrong.apply(points))
            assert min(wrong_inside, wrong_coverage) < 0.85, (angles, wrong_inside, wrong_coverage)


def test_images_on_disk_are_the_stored_latents_rendered(rendered):
    root, cfg = rendered
    number, class_index = 0, 4  # the first (train) object of class 4
    folder = root / shapes3d.synset_id(class_index) / shapes3d.object_id(class_index, number)
    mesh = shapes3d.object_mesh(cfg.seed, class_index, number)
    images = [np.asarray(Image.open(folder / f"image_{k}.jpg"), dtype=np.float64) for k in range(3)]
    for k in range(3):
        expected, _ = shapes3d.render_view(mesh, np.load(folder / f"latent_{k}.npy"), cfg.render_size)
        errors = [np.abs(image - expected).mean() for image in images]
        assert errors[k] < 3.0 and np.argmin(errors) == k, errors


def test_objects_are_shaded_on_a_floor_and_colour_varies_within_class():
    mesh = shapes3d.build_object(0, np.random.default_rng(0))
    latent = np.array([0, 0, 0, 0.3, 0.2, 1.0, 0.1], dtype=np.float32)
    image, mask = shapes3d.render_view(mesh, latent, 64)
    assert 0.05 < mask.mean() < 0.7  # an object in the middle, floor around it
    assert image[mask].std(axis=0).max() > 5  # shading varies across the object
    colours = [shapes3d.build_object(1, np.random.default_rng([0, 1, i])).albedo[0] for i in range(6)]
    assert np.ptp(np.array(colours), axis=0).max() > 0.3


def test_render_is_idempotent_and_refuses_a_render_with_other_params(tmp_path):
    cfg = tiny(num_classes=2, views_per_object=2, render_size=16)
    root = render_shapes3d(tmp_path / "d", cfg, progress=False)
    marker = root / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    assert render_shapes3d(root, cfg, progress=False) == root and marker.stat().st_mtime_ns == stamp
    assert is_complete(root, cfg) and not is_complete(root, tiny(num_classes=2, views_per_object=2, seed=5))
    before = tree_bytes(root)
    changed = tiny(num_classes=2, views_per_object=3, render_size=16)
    with pytest.raises(UserError, match="data.views_per_object=2, this run asks for 3: point data.root"):
        render_shapes3d(root, changed, progress=False)
    # never deleted: the render with other settings is still there, complete, byte for byte
    assert not is_complete(root, changed) and (np.load(root / "all_latents_train.npy").shape == (2 * 2, 7))
    assert is_complete(root, cfg) and tree_bytes(root) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["d"]  # no temporary folders left


def test_temporaries_of_killed_renders_are_cleaned_up(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".d.tmp-{socket.gethostname()}-{dead.pid}-0000"
    (stale / "90000001").mkdir(parents=True)
    alive = tmp_path / f".d.tmp-{socket.gethostname()}-1-0000"  # pid 1 is alive: a render in progress
    alive.mkdir()
    render_shapes3d(tmp_path / "d", tiny(num_classes=1, views_per_object=1, render_size=8), progress=False)
    assert not stale.exists() and alive.exists()


def test_failed_render_leaves_no_complete_looking_root(tmp_path, monkeypatch):
    calls = []

    def failing(task):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return shapes3d.sample_latents(np.random.default_rng(0), task[4])

    monkeypatch.setattr(shapes3d.writer, "_render_object", failing)  # looked up there
    with pytest.raises(RuntimeError, match="killed"):
        render_shapes3d(tmp_path / "d", tiny(num_classes=2), progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # nothing that could look complete


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        render_shapes3d(tmp_path / "mine", tiny(num_classes=1), progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        render_shapes3d(tmp_path / "x", tiny(num_classes=len(CLASS_NAMES) + 1), progress=False)


def test_registry_factory_renders_into_the_default_cache_and_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUISSL_DATA", str(tmp_path))
    cfg = from_dict(
        DataConfig,
        {
            "name": "shapes3d",
            "num_classes": 2,
            "objects_per_class": 2,
            "val_objects_per_class": 1,
            "views_per_object": 3,
            "render_size": 16,
            "render_workers": 1,
            "image_size": 24,
        },
    )
    assert isinstance(cfg, Shapes3DConfig) and DATASETS.get("shapes3d").config_cls is Shapes3DConfig
    train = DATASETS.build("shapes3d", cfg, split="train", source="image", num_views=1, seed=0)
    # not the default generation parameters: its own folder beside the default one, named by their hash
    root = tmp_path / f"shapes3d-{shapes3d.params_hash(shapes3d.generation_params(cfg))[:10]}"
    assert shapes3d.default_root(cfg) == root and is_complete(root, cfg) and isinstance(train, IE3DDataset)
    assert len(train) == 2 * 2 * 3 and train.num_classes == 2 and train.class_names == ["mug", "table"]
    item = train[5]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.uint8
    assert item["latent"].dtype == torch.float32 and int(item["label"]) == 0
    val = DATASETS.build("shapes3d", cfg, split="val", source="object", num_views=2, seed=0)
    assert len(val) == 2 and val[1]["images"].shape == (2, 3, 24, 24) and int(val[1]["label"]) == 1


def test_default_root_keeps_renders_of_different_parameters_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUISSL_DATA", str(tmp_path))
    assert shapes3d.default_root(Shapes3DConfig()) == tmp_path / "shapes3d"
    assert shapes3d.default_root(Shapes3DConfig(image_size=32, render_workers=1)) == tmp_path / "shapes3d"
    bigger, upright = Shapes3DConfig(objects_per_class=100), Shapes3DConfig(rotations="3diebench")
    roots = {shapes3d.default_root(c) for c in (Shapes3DConfig(), bigger, upright)}
    assert len(roots) == 3 and all(r.parent == tmp_path and r.name.startswith("shapes3d") for r in roots)
    assert shapes3d.default_root(Shapes3DConfig(root=str(tmp_path / "mine"), rotations="3diebench")) == (
        tmp_path / "mine"
    )


def test_3diebench_rotations_draw_each_euler_angle_uniform_in_half_turns():
    many = shapes3d.sample_latents(np.random.default_rng(1), 6000, "3diebench").astype(np.float64)
    angles = many[:, :3]
    assert np.all(np.abs(angles) <= np.pi / 2 + 1e-6)
    # uniform on [-pi/2, pi/2]: mean 0, variance pi^2 / 12, every quarter of the range equally filled
    np.testing.assert_allclose(angles.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(angles.var(axis=0), np.pi**2 / 12, rtol=0.05)
    quarters = np.stack([np.histogram(a, bins=4, range=(-np.pi / 2, np.pi / 2))[0] for a in angles.T])
    np.testing.assert_allclose(quarters / len(angles), 0.25, atol=0.02)
    # unlike uniform SO(3), the rotated z axis keeps a bias towards +z (never drawn upside down as often)
    z_axis = Rotation.from_euler("xyz", angles).apply([0.0, 0.0, 1.0])
    assert z_axis[:, 2].mean() > 0.3
    # the other latents are drawn as for so3; an unknown distribution is refused by name
    low, high = np.array(LATENT_RANGES, dtype=np.float64).T
    assert np.all(many[:, 3:] >= low[3:] - 1e-6) and np.all(many[:, 3:] <= high[3:] + 1e-6)
    with pytest.raises(ValueError, match="rotations"):
        shapes3d.sample_latents(np.random.default_rng(1), 2, "upright")
    with pytest.raises(ValueError, match="data.rotations"):
        shapes3d.generation_params(Shapes3DConfig(rotations="upright"))


def test_rotation_distribution_is_a_generation_parameter_and_default_hash_is_unchanged():
    so3 = shapes3d.generation_params(Shapes3DConfig())
    assert "rotations" not in so3  # renders made before the option existed stay valid
    ie = shapes3d.generation_params(Shapes3DConfig(rotations="3diebench"))
    assert ie["rotations"] == "3diebench" and shapes3d.params_hash(ie) != shapes3d.params_hash(so3)


def test_a_3diebench_render_stores_the_drawn_angles(tmp_path):
    root = render_shapes3d(
        tmp_path / "d", tiny(num_classes=2, rotations="3diebench", render_size=8), progress=False
    )
    latents = np.concatenate([np.load(root / f"all_latents_{s}.npy") for s in ("train", "val")])
    assert latents.shape == (2 * 2 * 3, 7) and np.all(np.abs(latents[:, :3]) <= np.pi / 2 + 1e-6)
    assert json.loads((root / MARKER_NAME).read_text())["params"]["rotations"] == "3diebench"


def test_fixed_lighting_holds_every_lighting_latent_and_keeps_the_poses(tmp_path):
    """data.lighting=fixed: floor hue, light direction and light hue are FIXED_LIGHTING in every view, the
    poses are those of the varied render with the same seed, and it renders to its own cache folder while
    the default's generation parameters (hence its folder and bytes) are unchanged."""
    varied = shapes3d.sample_latents(np.random.default_rng(5), 50, "3diebench")
    fixed = shapes3d.sample_latents(np.random.default_rng(5), 50, "3diebench", "fixed")
    np.testing.assert_array_equal(fixed[:, :3], varied[:, :3])
    np.testing.assert_allclose(fixed[:, 3:], np.tile(shapes3d.FIXED_LIGHTING, (50, 1)), atol=1e-6)
    assert varied[:, 3:].std(axis=0).min() > 0.1  # the default still varies every lighting latent
    with pytest.raises(ValueError, match="data.lighting"):
        shapes3d.generation_params(Shapes3DConfig(lighting="dim"))

    default = shapes3d.generation_params(Shapes3DConfig())
    assert "lighting" not in default  # the default render's key (and so its cache folder) is unchanged
    assert shapes3d.params_hash(default) == (
        "8bd67083d5ab9b76743666ea578ee1a0053ad67e588487ce0ddfe268082ec134"
    )
    fixed_params = shapes3d.generation_params(Shapes3DConfig(lighting="fixed"))
    assert fixed_params == {**default, "lighting": "fixed"}
    cache_root = tmp_path / "cache" / "shapes3d"
    assert shapes3d.keyed_root(cache_root, fixed_params, default) != cache_root

    cfg = tiny(num_classes=2, views_per_object=3, render_size=16, lighting="fixed")
    root = render_shapes3d(tmp_path / "f", cfg, progress=False)
    latents = np.load(root / "all_latents_train.npy")
    np.testing.assert_allclose(latents[:, 3:], np.tile(shapes3d.FIXED_LIGHTING, (len(latents), 1)), atol=1e-6)
    reference = render_shapes3d(
        tmp_path / "v", tiny(num_classes=2, views_per_object=3, render_size=16), progress=False
    )
    np.testing.assert_array_equal(latents[:, :3], np.load(reference / "all_latents_train.npy")[:, :3])
    assert json.loads((root / MARKER_NAME).read_text())["params"]["lighting"] == "fixed"
