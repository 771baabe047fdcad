"""Detection on the user's own COCO-format data: the reader on a tiny set the test writes (exact boxes,
labels, crowd and degenerate annotations), the held-out split, and ``finetune-det --data coco:...``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from equissl.datasets.coco_det import CocoDetection, coco_splits, parse_coco_spec
from equissl.errors import UserError


@pytest.fixture
def tiny_coco(tmp_path):
    """6 images (64 x 48 and 48 x 64, JPEG and PNG) of coloured rectangles; categories 3 'square' and
    7 'bar'; image 1 also holds a crowd region and a box without area."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index in range(6):
        height, width = (48, 64) if index % 2 == 0 else (64, 48)
        pixels = np.full((height, width, 3), 90, np.uint8) + rng.integers(
            0, 10, (height, width, 3), dtype=np.uint8
        )
        x, y = 4 + 3 * index, 6 + 2 * index
        pixels[y : y + 16, x : x + 16] = (220, 30, 30)
        pixels[30:36, 5:45] = (30, 30, 220)
        name = f"img_{index}.{'jpg' if index % 2 == 0 else 'png'}"
        Image.fromarray(pixels).save(images_dir / name)
        image_id = 100 + index
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 3,
                "bbox": [x, y, 16, 16],
                "area": 256,
                "iscrowd": 0,
            }
        )
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 7,
                "bbox": [5, 30, 40, 6],
                "area": 240,
                "iscrowd": 0,
            }
        )
    annotations.append({"id": 99, "image_id": 101, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 1})
    annotations.append({"id": 98, "image_id": 101, "category_id": 3, "bbox": [3, 3, 0, 5], "iscrowd": 0})
    categories = [{"id": 7, "name": "bar"}, {"id": 3, "name": "square"}]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, images_dir


def test_reader_gives_xyxy_boxes_and_labels_in_category_order(tiny_coco):
    path, images_dir = tiny_coco
    with pytest.warns(UserWarning, match="1 boxes without area dropped"):
        dataset = CocoDetection(path, images_dir)
    assert len(dataset) == 6 and dataset.num_classes == 2 and dataset.class_names == ["square", "bar"]
    image, target = dataset[1]  # id 101: 48 wide, 64 high
    assert image.shape == (3, 64, 48) and image.dtype == torch.uint8
    # square at x=7, y=8 (16 x 16) -> label 1 (id 3 < 7); bar [5, 30, 40, 6] -> label 2
    assert target["boxes"].tolist() == [[7.0, 8.0, 23.0, 24.0], [5.0, 30.0, 45.0, 36.0]]
    assert target["labels"].tolist() == [1, 2]
    assert tuple(image[:, 10, 10].tolist()) == (220, 30, 30)  # inside the square (PNG: exact)
    truth = dataset.coco_ground_truth()
    crowd = [a for a in truth["annotations"] if a["iscrowd"]]
    assert crowd == [
        {
            "id": crowd[0]["id"],
            "image_id": 1,
            "category_id": 2,
            "bbox": [0.0, 0.0, 10.0, 10.0],
            "area": 100.0,
            "iscrowd": 1,
        }
    ]
    assert len(truth["annotations"]) == 13 and truth["images"][1] == {"id": 1, "width": 48, "height": 64}


@pytest.mark.filterwarnings("ignore:.*boxes without area dropped")
def test_split_holds_out_a_seeded_fraction_and_refuses_bad_specs(tiny_coco, tmp_path):
    path, images_dir = tiny_coco
    spec = f"coco:{path}:{images_dir}"
    train, val = coco_splits(spec, val_fraction=0.34, seed=0)
    assert len(train) == 4 and len(val) == 2  # round(0.34 * 6) = 2
    assert sorted(train.image_ids + val.image_ids) == list(range(100, 106))
    again_train, _ = coco_splits(spec, val_fraction=0.34, seed=0)
    assert again_train.image_ids == train.image_ids
    with pytest.raises(UserError, match="no annotation file"):
        parse_coco_spec(f"coco:{tmp_path / 'none.json'}:{images_dir}")
    with pytest.raises(UserError, match="expected shapes3d_det or coco:"):
        parse_coco_spec("voc:somewhere")
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="missing annotations, categories"):
        CocoDetection(tmp_path / "bad.json", images_dir)


@pytest.mark.filterwarnings("ignore:.*boxes without area dropped")
def test_finetune_det_runs_on_a_coco_folder(tiny_coco, tiny_overrides, tmp_path, capsys):
    from equissl.cli import main
    from equissl.config import build_config
    from equissl.launch.trainer import pretrain

    path, images_dir = tiny_coco
    pretrain(
        build_config(
            "simclr_resnet18_shapes3d",
            [*tiny_overrides, "backbone.stem=imagenet", "trainer.max_steps=2"],
        )
    )
    run = tmp_path / "run"
    settings = ["image_size=64", "iterations=2", "batch_size=2", "warmup=1", "val_fraction=0.34"]
    assert main(["finetune-det", "--run", str(run), "--data", f"coco:{path}:{images_dir}", *settings]) == 0
    printed = capsys.readouterr().out
    assert "coco-annotations" in printed and "random init" in printed
    (report_path,) = (run / "eval").glob("detection_coco-annotations-*.json")
    report = json.loads(report_path.read_text())
    assert report["evaluation"] == "detection" and report["protocol"].startswith("coco-annotations-")
    assert report["data"]["train_images"] == 4 and report["data"]["val_images"] == 2
    assert report["config"]["num_classes"] == 2  # from the categories, not the shapes3d default of 10
    for model in ("pretrained", "random init"):
        result = report["results"][model]
        assert 0.0 <= result["AP"] <= result["AP50"] <= 100.0 and np.isfinite(result["final_loss"])
    assert (
        main(["finetune-det", "--run", str(run), "--data", f"coco:{tmp_path / 'x.json'}:{images_dir}"]) == 2
    )
    assert "no annotation file" in capsys.readouterr().err
