"""A user's own photos from the command line: a nested, unlabelled folder of mixed formats and modes is
pretrained on (the corrupt file skipped, counted and named), then probed on a labelled folder; resumes
over crops cut from the full images are exact."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from equissl.cli import main
from equissl.config import build_config
from equissl.launch import checkpoint as ckpt
from equissl.launch.trainer import pretrain
from tests.helpers import write_labelled_folder, write_user_photos

TINY = [
    "data.image_size=32",
    "augment.crop_size=32",
    "augment.small_crop_size=16",
    "backbone.stem=strided",
    "objective.proj_hidden_dim=64",
    "objective.proj_out_dim=32",
    "trainer.log_every=1",
    "trainer.progress=false",
    "trainer.precision=fp32",
    "trainer.device=cpu",
    "probe.epochs=2",
    "probe.weight_decays=[0.0]",
    "probe.knn_k=3",
]


def test_pretrain_on_a_users_photos_then_probe_on_a_labelled_folder(tmp_path, capsys):
    photos, labelled, run = tmp_path / "photos", tmp_path / "labelled", tmp_path / "run"
    readable = write_user_photos(photos)
    write_labelled_folder(labelled)
    settings = [
        "data={name: imagefolder, root: " + str(photos) + ", num_workers: 2, max_bad_fraction: 0.2}",
        *TINY,
        f"trainer.batch_size={len(readable) + 1}",  # every file, the corrupt one too, in every step
        "trainer.max_steps=2",
        "trainer.checkpoint_every=2",
        f"trainer.run_dir={run}",
    ]
    assert main(["pretrain", "--config", "simclr_resnet18_shapes3d", *settings, "--probe"]) == 0
    out = capsys.readouterr().out
    assert f"finished: {run} at step 2" in out and "no probe: the data is unlabelled" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["data/bad_reads"] for r in rows] == [1, 2]  # the corrupt file, skipped once a step
    assert "probe/acc" not in rows[-1]  # unlabelled: no online probe
    config = build_config(run / "config.yaml")
    assert config.data.name == "imagefolder" and config.data.crops == "full"

    assert main(["probe", "--run", str(run)]) == 2  # unlabelled data: nothing to score, says --data
    assert "--data FOLDER" in capsys.readouterr().err
    assert main(["probe", "--run", str(run), "--data", str(labelled), "--compare-random"]) == 0
    printed = capsys.readouterr().out
    assert f"imagefolder {labelled}" in printed
    report = json.loads((run / "eval" / "probe_fast.json").read_text())
    assert set(report["results"]) == {"pretrained", "random init"}
    for scores in report["results"].values():  # 4 val images: top-1 in steps of 25 %
        top1 = {name: scores[name] for name in ("linear", "knn")}
        assert set(scores) == {"linear", "knn", "seconds"} and all(
            v in (0, 25, 50, 75, 100) for v in top1.values()
        )


def test_a_corrupt_file_is_named_when_too_many_are_bad(tmp_path, capsys):
    photos = tmp_path / "photos"
    readable = write_user_photos(photos)
    settings = [
        "data={name: imagefolder, root: " + str(photos) + ", num_workers: 0}",
        *TINY,
        f"trainer.batch_size={len(readable) + 1}",
        "trainer.max_steps=2",
        f"trainer.run_dir={tmp_path / 'run'}",
    ]
    with pytest.warns(RuntimeWarning, match="corrupt.jpg"):
        assert main(["pretrain", "--config", "simclr_resnet18_shapes3d", *settings]) == 3
    error = capsys.readouterr().err
    assert "data.max_bad_fraction=0.05" in error and "trip/corrupt.jpg" in error


@pytest.mark.parametrize(
    "loading",
    ["num_workers: 0", "num_workers: 2, decode: device"],  # the second: workers kept over epochs, JPEGs
    # decoded by the training process
)
def test_resumes_over_full_image_crops_are_exact(tmp_path, loading):
    photos = tmp_path / "photos"
    write_labelled_folder(photos, per_class=3, size=40)  # labelled: the online probe trains too
    for png in sorted((photos / "train").rglob("*.png"))[1:]:  # JPEGs, and one PNG
        Image.open(png).save(png.with_suffix(".jpg"), quality=95)
        png.unlink()

    def config(run: str, steps: int):
        return build_config(
            "simclr_resnet18_shapes3d",
            [
                "data={name: imagefolder, root: " + str(photos) + ", " + loading + "}",
                *TINY,
                "trainer.batch_size=4",
                f"trainer.max_steps={steps}",
                "trainer.checkpoint_every=2",
                "trainer.keep_checkpoints=3",
                f"trainer.run_dir={tmp_path / run}",
            ],
        )

    assert pretrain(config("straight", 3)).step == 3  # 6 images, batch 4: a new epoch every step
    step_two = tmp_path / "straight" / "checkpoints" / "step-00000002"
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(step_two, tmp_path / "resumed" / "checkpoints" / step_two.name)  # as if stopped there
    assert pretrain(config("resumed", 3)).step == 3
    straight = ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "straight"))
    resumed = ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "resumed"))
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
