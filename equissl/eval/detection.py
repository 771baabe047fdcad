"""Does the pretrained backbone help a real detector? A short torchvision Faster R-CNN fine-tune.

The detector is torchvision's ``FasterRCNN`` on a ``resnet_fpn_backbone`` (ResNet-18 FPN by default)
whose ``body`` loads a ``--format torchvision`` export with ``strict=True`` -- the same file a user
hands to torchvision -- or stays at its random initialisation. Both runs share everything else: data,
order, head initialisation, schedule and budget. Every layer is fine-tuned with trainable BatchNorm
(the MoCo / "Rethinking ImageNet pre-training" protocol, which uses (Sync)BN for pretrained and random
init alike, since a frozen BN is meaningless for a random backbone). Anchors are scaled to the small
images (8..128 px over P2..P6). Data: the embedded :mod:`equissl.datasets.shapes3d_det` (``--data
shapes3d_det``, the default) or the user's own COCO-format set (``--data coco:ANNOTATIONS.json:IMAGES_DIR``,
:mod:`equissl.datasets.coco_det`; its categories set the number of classes); metric: COCO mAP
(pycocotools' ``COCOeval``, AP@[.5:.95], AP50, AP75).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from equissl.config import Fraction
from equissl.datasets.coco_det import coco_splits
from equissl.datasets.shapes3d_det import DetectionSetSpec, Shapes3DDetection, default_cache_dir
from equissl.errors import UserError, import_extra

SHAPES3D_DET = "shapes3d_det"

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class FinetuneDetConfig:
    """A fine-tune sized for 2 CPU cores: both runs and the data in well under 15 minutes."""

    arch: str = "resnet18"
    image_size: int = 128
    num_classes: int = 10
    train_images: int = 400
    val_images: int = 100
    iterations: int = 200
    batch_size: int = 8
    lr: float = 0.02  # SGD, momentum 0.9; linear warm-up then cosine to 0
    warmup: int = 50
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    val_fraction: Fraction = 0.2  # COCO data without --val-data: this share of its images is held out for val


def load_torchvision_export(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """A ``--format torchvision`` export (``.pth`` or ``.safetensors``) and its ``<path>.json`` metadata."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no backbone file at {path}: run `equissl export --format torchvision` first")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    sidecar = Path(str(path) + ".json")
    metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return state, metadata


def build_detector(
    cfg: FinetuneDetConfig, backbone_state: dict[str, Tensor] | None, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> FasterRCNN:
    """Faster R-CNN, ResNet FPN; ``backbone.body`` loads ``backbone_state`` strictly (None: random init)."""
    backbone = resnet_fpn_backbone(
        backbone_name=cfg.arch, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    if backbone_state is not None:
        backbone.body.load_state_dict(backbone_state, strict=True)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(
        backbone,
        num_classes=cfg.num_classes + 1,
        min_size=cfg.image_size,
        max_size=cfg.image_size,
        image_mean=list(mean),
        image_std=list(std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_detections_per_img=50,
        box_score_thresh=0.01,
    )


def _collate(batch):
    return [image.float() / 255.0 for image, _ in batch], [target for _, target in batch]


def _lr_factor(step: int, cfg: FinetuneDetConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train_detector(
    model: FasterRCNN, dataset: Shapes3DDetection, cfg: FinetuneDetConfig, log=None
) -> list[float]:
    """``cfg.iterations`` SGD steps; returns the loss of every step. Same seed -> same batches."""
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
        collate_fn=_collate,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, cfg))
    model.train()
    losses: list[float] = []
    while len(losses) < cfg.iterations:
        for images, targets in loader:
            loss = sum(model(images, targets).values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite detection loss at step {len(losses)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if log is not None and (len(losses) % 25 == 0 or len(losses) == cfg.iterations):
                log(f"  step {len(losses)}/{cfg.iterations} loss {np.mean(losses[-25:]):.3f}")
            if len(losses) == cfg.iterations:
                break
    return losses


def coco_ground_truth(dataset) -> dict:
    """The split as a COCO annotation dict (bbox ``[x, y, w, h]``, category ids 1..num_classes, image ids
    the item indices); a COCO-format set gives its own (:meth:`CocoDetection.coco_ground_truth`)."""
    if hasattr(dataset, "coco_ground_truth"):
        return dataset.coco_ground_truth()
    images, annotations = [], []
    size = dataset.spec.image_size
    for index in range(len(dataset)):
        images.append({"id": index, "width": size, "height": size})
        _, target = dataset[index]
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": label,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": str(k)} for k in range(dataset.spec.num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def require_pycocotools() -> None:
    """The COCO evaluation's package, or a one-line error naming the ``det`` extra (checked before work)."""
    import_extra("pycocotools", "the detection fine-tune (COCO box AP)", "det")


@torch.no_grad()
def evaluate_coco(model: FasterRCNN, dataset: Shapes3DDetection, batch_size: int = 16) -> dict[str, float]:
    """COCO box AP of ``model`` on ``dataset``, in percent: ``AP`` (IoU .5:.95), ``AP50``, ``AP75``."""
    require_pycocotools()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model.eval()
    detections = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    index = 0
    for images, _ in loader:
        for output in model(images):
            for box, score, label in zip(
                output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist(), strict=True
            ):
                detections.append(
                    {
                        "image_id": index,
                        "category_id": label,
                        "score": score,
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    }
                )
            index += 1
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = coco_ground_truth(dataset)
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"AP": 100 * float(stats[0]), "AP50": 100 * float(stats[1]), "AP75": 100 * float(stats[2])}


def detection_splits(cfg: FinetuneDetConfig, cache_dir: str | Path | None = None):
    """(train, val) detection sets; val uses another seed, so every object instance is new."""
    cache_dir = cache_dir or default_cache_dir()
    sizes = (cfg.image_size * 5 // 16, cfg.image_size * 9 // 16)  # 40..72 px renders at 128 px
    common = {"image_size": cfg.image_size, "num_classes": cfg.num_classes, "object_render_sizes": sizes}
    train = Shapes3DDetection(
        DetectionSetSpec(num_images=cfg.train_images, seed=1000 + cfg.seed, **common), cache_dir
    )
    val = Shapes3DDetection(
        DetectionSetSpec(num_images=cfg.val_images, seed=2000 + cfg.seed, **common), cache_dir
    )
    return train, val


def finetune_once(
    cfg: FinetuneDetConfig,
    backbone_state: dict[str, Tensor] | None,
    train,
    val,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    log=None,
) -> dict:
    """Fine-tune one detector and evaluate it: ``{"AP", "AP50", "AP75", "final_loss", "seconds"}``."""
    start = time.time()
    torch.manual_seed(cfg.seed)  # same head initialisation for every backbone
    model = build_detector(cfg, backbone_state, mean, std)
    losses = train_detector(model, train, cfg, log)
    result = evaluate_coco(model, val)
    result["final_loss"] = float(np.mean(losses[-20:]))
    result["seconds"] = round(time.time() - start, 1)
    return result


def detection_data(
    cfg: FinetuneDetConfig, data: str = SHAPES3D_DET, val_data: str | None = None, cache_dir=None
) -> tuple[Dataset, Dataset, dict, FinetuneDetConfig]:
    """(train, val, description, cfg): the embedded set, or a COCO-format one (``coco:ANN:IMAGES``), whose
    category count replaces ``cfg.num_classes``."""
    if data == SHAPES3D_DET:
        if val_data:
            raise UserError("--val-data goes with --data coco:...; shapes3d_det makes its own val split")
        train, val = detection_splits(cfg, cache_dir)
        return train, val, {"name": SHAPES3D_DET}, cfg
    train, val = coco_splits(data, val_data, cfg.val_fraction, cfg.seed)
    where = hashlib.sha256(str(train.annotations_file.resolve()).encode()).hexdigest()[:8]
    description = {
        "name": f"coco-{train.annotations_file.stem}-{where}",  # the path's digest tells same-named files apart
        "annotations": str(train.annotations_file.resolve()),
        "images_dir": str(train.images_dir.resolve()),
        "val_annotations": str(val.annotations_file.resolve()) if val_data else None,
        "classes": train.class_names,
    }
    return train, val, description, dataclasses.replace(cfg, num_classes=train.num_classes)


def finetune_compare(
    weights: str | Path,
    cfg: FinetuneDetConfig,
    compare_random: bool = True,
    cache_dir: str | Path | None = None,
    log=print,
    data: str = SHAPES3D_DET,
    val_data: str | None = None,
) -> dict:
    """Fine-tune from the export at ``weights`` (and from random init) on ``data`` (``shapes3d_det`` or
    ``coco:ANNOTATIONS.json:IMAGES_DIR``, val from ``val_data`` or held out); the report as a dict."""
    require_pycocotools()
    torch.set_num_threads(cfg.threads)
    state, metadata = load_torchvision_export(weights)
    # capsnet_resnet18 exports its ResNet-18 trunk (the capsule layer has no torchvision counterpart).
    if {"capsnet_resnet18": "resnet18"}.get(metadata.get("backbone"), metadata.get("backbone")) not in (
        None,
        cfg.arch,
    ):
        raise ValueError(f"{weights} holds a {metadata['backbone']} backbone, but arch={cfg.arch!r}")
    norm = metadata.get("normalization", {})
    mean, std = norm.get("mean", IMAGENET_MEAN), norm.get("std", IMAGENET_STD)
    start = time.time()
    train, val, description, cfg = detection_data(cfg, data, val_data, cache_dir)
    description.update(train_images=len(train), val_images=len(val))
    report = {
        "evaluation": "detection",
        "protocol": SHAPES3D_DET if data == SHAPES3D_DET else description["name"],
        "data": description,
        "config": asdict(cfg),
        "settings": asdict(cfg),
        "weights": str(Path(weights).resolve()),
        "source": {k: metadata.get(k) for k in ("objective", "source_checkpoint", "config_hash")},
        "data_seconds": round(time.time() - start, 1),
        "results": {},
    }
    log(
        f"detection set {description['name']} ready: {len(train)} train / {len(val)} val images "
        f"({report['data_seconds']} s)"
    )
    runs = [("pretrained", state)] + ([("random init", None)] if compare_random else [])
    for name, backbone_state in runs:
        report["results"][name] = finetune_once(cfg, backbone_state, train, val, mean, std, log)
        log(f"{name}: {json.dumps(report['results'][name])}")
    return report


def format_detection_report(report: dict) -> str:
    lines = [
        (
            f"Faster R-CNN {report['config']['arch']} FPN, {report['config']['iterations']} iterations x "
            f"{report['config']['batch_size']} images, {report.get('data', {}).get('name', SHAPES3D_DET)} val "
            f"({report.get('data', {}).get('val_images', report['config']['val_images'])} images)"
        ),
        f"{'backbone':<14}{'AP':>7}{'AP50':>7}{'AP75':>7}{'seconds':>9}",
    ]
    for name, result in report["results"].items():
        lines.append(
            f"{name:<14}{result['AP']:>7.1f}{result['AP50']:>7.1f}{result['AP75']:>7.1f}"
            f"{result['seconds']:>9.0f}"
        )
    return "\n".join(lines)
