"""The real Trainer on 2 gloo processes with B/2 images each equals 1 process with B images.

What must agree for this to hold, and how the test arranges it:
- the data: the sampler shards one global permutation, so the 2 ranks' first batches together are the
  1-process first batch (in another order; every loss here is invariant to the batch order);
- the losses: contrastive negatives and VICReg / SIE batch statistics are gathered with gradient
  (equissl.distributed), and DDP averages the per-rank gradients;
- BatchNorm: per-process statistics over B/2 images differ from those over B, so the runs use
  ``trainer.sync_batchnorm=true`` (GlobalBatchNorm: statistics over every process's batch);
- the augmentations: each rank draws its parameters from its own generator, so a rank's B/2 draws are not
  the 1-process draws for the same images. The test uses deterministic views (full-image crop, no flip /
  colour / grey / blur; SIE's object views are not augmented anyway) so that only the maths is compared;
- the arithmetic: the runs use ``trainer.precision=fp64``. In fp32 the early-layer gradients of these
  losses cancel heavily through BatchNorm: even a single process computing the same BatchNorm with an
  equivalent formula differs from torch's kernel by ~3e-3 of the first update of ``conv1``, and after 3
  SGD steps the 1- vs 2-process fp32 runs differ by up to ~8% (in norm) on zero-initialised BN biases. In
  fp64 they agree to ~1e-12, which shows the 2-process maths is exact; without sync_batchnorm they differ
  by > 100%.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from equissl.config import build_config
from equissl.launch import checkpoint as ckpt
from equissl.launch.launcher import free_port
from equissl.recipes import recipe_paths
from equissl.registry import OBJECTIVES

WORLD, GLOBAL_BATCH, STEPS = 2, 8, 2

DETERMINISTIC_VIEWS = [
    "augment.crop_scale=[1.0,1.0]",
    "augment.crop_ratio=[1.0,1.0]",
    "augment.hflip_prob=0.0",
    "augment.jitter_prob=0.0",
    "augment.grayscale_prob=0.0",
    "augment.blur_prob=0.0",
]
RECIPES = {
    "simclr": (
        "simclr_resnet18_shapes3d",
        ["objective.proj_hidden_dim=64", "objective.proj_out_dim=32"],
    ),
    "vicreg": ("vicreg_resnet18_shapes3d", ["objective.expander_dims=[64,64]"]),
    "sie": (
        "sie_resnet18_shapes3d",
        ["objective.equi_dim=16", "objective.inv_proj_dims=[32,32]", "objective.equi_proj_dims=[32,32]"],
    ),
    "byol": ("byol_resnet18_shapes3d", ["objective.proj_hidden_dim=32", "objective.pred_hidden_dim=32"]),
    "simsiam": (
        "simsiam_resnet18_shapes3d",
        ["objective.proj_hidden_dim=32", "objective.proj_out_dim=32", "objective.pred_hidden_dim=16"],
    ),
    "barlowtwins": ("barlowtwins_resnet18_shapes3d", ["objective.projector_dims=[32,32]"]),
    "mocov3": ("mocov3_resnet18_shapes3d", ["objective.proj_hidden_dim=32", "objective.pred_hidden_dim=32"]),
    "dino": (
        "dino_resnet18_shapes3d",
        [
            "objective.out_dim=64",
            "objective.hidden_dim=32",
            "objective.bottleneck_dim=16",
            "objective.local_crops=2",
            "objective.local_crop_size=16",
            "objective.global_crop_scale=[1.0,1.0]",
            "objective.local_crop_scale=[1.0,1.0]",
        ],
    ),
}
OBJECTIVE_NAMES = [
    name for name in RECIPES if name in OBJECTIVES.names() and RECIPES[name][0] in recipe_paths()
]


def _overrides(name: str, data_overrides: list[str], run_dir: Path, batch_size: int) -> list[str]:
    return [
        *data_overrides,
        *DETERMINISTIC_VIEWS,
        *RECIPES[name][1],
        "augment.crop_size=16",  # 16 px through the strided stem: a 1x1 map at layer4, seconds a run in fp64
        "backbone.stem=strided",
        "optim.name=sgd",
        "optim.lr=0.05",
        "optim.warmup_steps=0",
        "trainer.device=cpu",
        "trainer.precision=fp64",
        "trainer.sync_batchnorm=true",
        f"trainer.batch_size={batch_size}",
        f"trainer.max_steps={STEPS}",
        "trainer.checkpoint_every=1000",
        "trainer.log_every=1",
        "trainer.progress=false",
        f"trainer.run_dir={run_dir}",
    ]


def _worker(rank: int, port: int, jobs: list[tuple[str, list[str]]]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    from equissl.launch.trainer import pretrain

    for recipe, overrides in jobs:
        result = pretrain(build_config(recipe, overrides))
        assert result.status == "finished", result


@pytest.fixture(scope="module")
def runs(tiny_shapes3d_root, module_tmp_path):
    from tests.conftest import TINY_DATA

    data = [f"data.root={tiny_shapes3d_root}", *TINY_DATA]
    root = module_tmp_path
    jobs = [
        (RECIPES[n][0], _overrides(n, data, root / f"{n}-2proc", GLOBAL_BATCH // WORLD))
        for n in OBJECTIVE_NAMES
    ]
    mp.spawn(_worker, args=(free_port(), jobs), nprocs=WORLD, join=True)
    from equissl.launch.trainer import pretrain

    for name in OBJECTIVE_NAMES:
        launch = (root / f"{name}-2proc" / "launch.json").read_text()
        assert '"world_size": 2' in launch and f'"global_batch": {GLOBAL_BATCH}' in launch
        assert (
            pretrain(
                build_config(RECIPES[name][0], _overrides(name, data, root / f"{name}-1proc", GLOBAL_BATCH))
            ).step
            == STEPS
        )
    return root


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_two_gloo_processes_with_half_batches_match_one_process(runs, name):
    one = ckpt.load_model_state(ckpt.latest_checkpoint(runs / f"{name}-1proc"))
    two = ckpt.load_model_state(ckpt.latest_checkpoint(runs / f"{name}-2proc"))
    assert one.keys() == two.keys()
    worst = 0.0
    for key, value in one.items():
        if not value.is_floating_point():
            continue
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-8, msg=key)
        worst = max(worst, ((two[key] - value).abs() / (value.abs() + 1e-5)).max().item())
    print(f"{name}: worst relative difference {worst:.2e}")
    for run in (
        "1proc",
        "2proc",
    ):  # the steps moved the weights: the comparison is not between initialisations
        last = (runs / f"{name}-{run}" / "metrics.jsonl").read_text().splitlines()[-1]
        assert json.loads(last)["grad_norm"] > 1e-3


def test_launch_commands_for_processes_nodes_and_slurm(capsys):
    from equissl.cli import main
    from equissl.launch.launcher import LaunchSpec, build_command

    recipe = RECIPES["simclr"][0]
    single = build_command(LaunchSpec(recipe, ["trainer.max_steps=5"]))
    assert single[1:] == ["-m", "equissl.cli", "pretrain", "--config", recipe, "trainer.max_steps=5"]
    cpu = build_command(LaunchSpec(recipe, [], nproc_per_node=2, device="cpu"))
    assert cpu[cpu.index("--standalone") :] == [
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "equissl.cli",
        "pretrain",
        "--config",
        recipe,
        "trainer.device=cpu",
    ]
    nodes = build_command(
        LaunchSpec(recipe, [], nproc_per_node=8, nnodes=2, rdzv_endpoint="node0:29500", rdzv_id="job1")
    )
    assert " ".join(nodes).endswith(
        "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id job1 "
        f"--nproc-per-node 8 -m equissl.cli pretrain --config {recipe}"
    )
    with pytest.raises(ValueError, match="rdzv-endpoint"):
        build_command(LaunchSpec(recipe, [], nnodes=2))
    assert main(["launch", "--config", recipe, "--nproc-per-node", "2", "--device", "cpu", "--dry-run"]) == 0
    assert "--standalone --nproc-per-node 2" in capsys.readouterr().out
    assert (
        main(["launch", "--config", recipe, "--slurm", "--nodes", "2", "--gpus-per-node", "4", "--dry-run"])
        == 0
    )
    assert "'nodes': 2, 'tasks_per_node': 4, 'gpus_per_node': 4" in capsys.readouterr().out
    assert (
        main(["launch", "--config", recipe, "trainer.bogus=1", "--dry-run"]) == 2
    )  # bad keys refused up front


def test_slurm_without_submitit_says_how_to_install(capsys):
    try:
        import submitit  # noqa: F401
    except ImportError:
        from equissl.cli import main

        assert main(["launch", "--config", RECIPES["simclr"][0], "--slurm"]) == 2
        assert "pip install submitit" in capsys.readouterr().err
    else:
        pytest.skip("submitit is installed")
