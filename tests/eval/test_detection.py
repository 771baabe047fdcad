"""The embedded detection set and the Faster R-CNN fine-tune (tiny settings: seconds on 2 cores)."""

import json

import numpy as np
import pytest
import torch

import equissl.datasets.shapes3d_det as det
from equissl.cli import main
from equissl.config import build_config
from equissl.datasets.shapes3d_det import DetectionSetSpec, Shapes3DDetection, compose_image
from equissl.eval.detection import (
    FinetuneDetConfig,
    build_detector,
    coco_ground_truth,
    load_torchvision_export,
)
from equissl.launch.trainer import pretrain


def _square_objects(monkeypatch, squares):
    """Replace rendering by solid squares: (label, side, colour) in paste order."""
    queue = list(squares)

    def fake(rng, spec):
        label, side, colour = queue.pop(0)
        return label, np.full((side, side, 3), colour, np.uint8), np.ones((side, side), bool)

    monkeypatch.setattr(det, "_render_object", fake)


def test_boxes_bound_the_visible_pixels_after_occlusion(monkeypatch):
    spec = DetectionSetSpec(
        image_size=32, objects_per_image=(2, 2), max_overlap_iou=1.01, min_visible_pixels=4
    )
    _square_objects(monkeypatch, [(3, 12, 255), (5, 8, 0)])
    image, boxes, labels = compose_image(np.random.default_rng(0), spec)
    assert labels.tolist() == [3, 5]
    white = np.all(image == 255, axis=2)  # the first square's visible pixels (the floor is never pure white)
    rows, cols = np.flatnonzero(white.any(1)), np.flatnonzero(white.any(0))
    assert boxes[0].tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    x0, y0, x1, y1 = boxes[1].astype(int)
    assert (x1 - x0, y1 - y0) == (8, 8) and np.all(image[y0:y1, x0:x1] == 0)  # on top: whole


def test_a_hidden_object_is_erased_and_not_annotated(monkeypatch):
    spec = DetectionSetSpec(
        image_size=16, objects_per_image=(2, 2), max_overlap_iou=1.01, min_visible_pixels=4
    )
    _square_objects(monkeypatch, [(1, 16, 255), (2, 16, 0)])  # the second covers the first completely
    _image, boxes, labels = compose_image(np.random.default_rng(0), spec)
    assert labels.tolist() == [2] and boxes.tolist() == [[0, 0, 16, 16]]


def test_detection_set_is_deterministic_cached_and_in_range(tmp_path):
    spec = DetectionSetSpec(num_images=3, image_size=48, object_render_sizes=(16, 24), seed=7)
    dataset = Shapes3DDetection(spec, tmp_path)
    again = det.render_detection_set(spec, tmp_path / "other")
    np.testing.assert_array_equal(dataset.arrays["images"], again["images"])
    np.testing.assert_array_equal(dataset.arrays["boxes"], again["boxes"])
    assert len(list(tmp_path.glob("*.npz"))) == 1
    image, _target = dataset[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8
    boxes = torch.from_numpy(dataset.arrays["boxes"])
    assert len(boxes) >= 3 and bool((boxes[:, 2:] > boxes[:, :2]).all())
    assert bool((boxes >= 0).all() and (boxes <= 48).all())
    labels = torch.cat([dataset[i][1]["labels"] for i in range(3)])
    assert bool(((labels >= 1) & (labels <= spec.num_classes)).all())
    truth = coco_ground_truth(dataset)
    assert len(truth["annotations"]) == len(boxes) and len(truth["images"]) == 3


def _imagenet_stem_run(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "backbone.stem=imagenet", "trainer.max_steps=2"]
    pretrain(build_config("simclr_resnet18_shapes3d", overrides))
    return tmp_path / "run"


def test_finetune_det_cli_reports_pretrained_and_random_map(tiny_overrides, tmp_path, capsys):
    run = _imagenet_stem_run(tiny_overrides, tmp_path)
    settings = ["image_size=64", "train_images=4", "val_images=2", "iterations=2", "batch_size=2", "warmup=1"]
    assert main(["finetune-det", "--run", str(run), "--cache-dir", str(tmp_path / "det"), *settings]) == 0
    assert "random init" in capsys.readouterr().out
    report = json.loads((run / "eval" / "detection.json").read_text())
    for name in ("pretrained", "random init"):
        result = report["results"][name]
        assert 0.0 <= result["AP"] <= result["AP50"] <= 100.0 and np.isfinite(result["final_loss"])
    assert report["source"]["objective"] == "simclr"

    # the detector's body holds exactly the exported (pretrained) weights
    state, metadata = load_torchvision_export(run / "export" / "backbone_torchvision.pth")
    detector = build_detector(FinetuneDetConfig(image_size=64), state)
    for key, value in detector.backbone.body.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert metadata["export_format"] == "torchvision"


def test_finetune_det_refuses_unknown_settings_and_missing_weights(tmp_path, capsys):
    assert main(["finetune-det", "--weights", str(tmp_path / "none.pth"), "iters=3"]) == 2
    assert "unknown config key 'iters'" in capsys.readouterr().err  # the one strict converter names the key
    assert main(["finetune-det", "--weights", str(tmp_path / "none.pth")]) == 2
    assert "equissl export --format torchvision" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["resnet18"])
def test_random_init_detector_builds_without_weights(arch):
    model = build_detector(FinetuneDetConfig(arch=arch, image_size=64), None).eval()
    with torch.no_grad():
        (output,) = model([torch.rand(3, 64, 64)])
    assert set(output) == {"boxes", "scores", "labels"}
