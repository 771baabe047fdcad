"""trainer.precision=fp16 (loss scaling), trainer.channels_last and trainer.compile on the CPU.

Channels-last and compile must train what the plain step trains: they reorder memory or fuse kernels,
and change no maths. The comparison runs in float64, where rounding cannot hide a wrong result: one step's
loss, gradient norm and whole weight update agree to 1e-9. (In float32 the CPU's channels-last kernels
reduce in another order; on this tiny network, whose last stage has 2x2 maps, the update then differs
from float64's by about 1e-2 relative, against 1e-5 for the default layout: measured, not asserted.) The
fp16 SIGKILL-resume case is in test_trainer.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equissl.config import build_config
from equissl.launch import checkpoint as ckpt
from equissl.launch.precision import as_channels_last, as_float64
from equissl.launch.sync_bn import GlobalBatchNorm, convert_sync_batchnorm
from equissl.launch.trainer import Trainer
from equissl.types import Views

RECIPE = "simclr_resnet18_shapes3d"
# timm's tiny ResNet: float16 convolutions are emulated, and slow, on CPUs without native float16, and
# the compiled test compiles every layer.
TEST_RESNET = "backbone={name: timm, model_name: test_resnet}"


def _one_step(overrides: list[str], run_dir) -> tuple[dict, torch.Tensor]:
    """(the step's metrics, the flattened weight update of one plain-SGD step)."""
    config = build_config(RECIPE, [*overrides, f"trainer.run_dir={run_dir}"])
    trainer = Trainer(config)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    result = trainer.fit()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return result.last_metrics, after - before


@pytest.fixture
def fp64_reference(tiny_overrides, tmp_path):
    # One SGD step without momentum: the update is -lr * gradient, so comparing updates compares the
    # gradients of the whole model (Adam's first step, about -lr * sign(gradient), would turn rounding in
    # near-zero gradients into whole-lr differences).
    overrides = [
        *tiny_overrides,
        "trainer.max_steps=1",
        "data.num_workers=0",
        "optim.name=sgd",
        "optim.momentum=0",
        "optim.lr=0.01",
        "trainer.precision=fp64",
        TEST_RESNET,
    ]
    return overrides, _one_step(overrides, tmp_path / "eager")


def _assert_same_step(got, reference, tolerance: float) -> None:
    (metrics, update), (expected_metrics, expected_update) = got, reference
    assert metrics["loss"] == pytest.approx(expected_metrics["loss"], rel=tolerance)
    assert metrics["grad_norm"] == pytest.approx(expected_metrics["grad_norm"], rel=tolerance)
    assert expected_update.norm() > 0
    assert float((update - expected_update).norm() / expected_update.norm()) < tolerance


def test_channels_last_trains_what_the_default_layout_trains(fp64_reference, tmp_path):
    overrides, reference = fp64_reference
    _assert_same_step(
        _one_step([*overrides, "trainer.channels_last=true"], tmp_path / "nhwc"), reference, 1e-4
    )


def test_compiled_step_trains_what_the_eager_step_trains(fp64_reference, tmp_path):
    # aot_eager: dynamo's capture and AOT autograd's forward / backward graphs, run with eager kernels. The
    # inductor backend (kernel generation, about 100 s for this model on 2 cores) runs in
    # benchmarks/gpu_check.sh.
    overrides, reference = fp64_reference
    compiled = [*overrides, "trainer.compile=true", "trainer.compile_backend=aot_eager"]
    _assert_same_step(_one_step(compiled, tmp_path / "compiled"), reference, 1e-9)


def test_fp16_overflow_halves_the_scale_and_retakes_the_step(tiny_overrides, tmp_path):
    config = build_config(
        RECIPE,
        [
            *tiny_overrides,
            "trainer.max_steps=2",
            "trainer.precision=fp16",
            TEST_RESNET,
            f"trainer.run_dir={tmp_path}/r",
        ],
    )
    trainer = Trainer(config)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # float16 gradients overflow at once
    result = trainer.fit()
    assert result.step == 2  # overflowed steps are taken again with the next batch, not counted
    assert trainer.state.overflow_steps >= 1 and trainer.state.skipped_steps == 0
    assert trainer.scaler.get_scale() == 2.0 ** (24 - trainer.state.overflow_steps)
    assert torch.isfinite(torch.tensor(result.last_metrics["loss"]))
    assert result.last_metrics["train/overflow_steps"] == trainer.state.overflow_steps
    saved = ckpt.load_torch(ckpt.latest_checkpoint(tmp_path / "r"), "scaler.pt")
    assert saved["scale"] == trainer.scaler.get_scale()


def test_fp16_autocasts_the_backbone_and_keeps_the_loss_in_float32(tiny_overrides, tmp_path):
    config = build_config(
        RECIPE,
        [
            *tiny_overrides,
            "trainer.max_steps=1",
            "trainer.precision=fp16",
            TEST_RESNET,
            f"trainer.run_dir={tmp_path}/r",
        ],
    )
    trainer = Trainer(config)
    dtypes = []
    backbone = trainer.accelerator.unwrap_model(trainer.model).objective.backbone
    backbone.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    trainer.fit()
    assert dtypes and set(dtypes) == {torch.float16}
    assert trainer.model.training  # the loop ran the step, not an eval pass


def test_views_are_converted_with_their_structure():
    images = torch.randn(2, 3, 5, 4)
    flips = [{"flip": torch.tensor([1, 0])}] * 2
    views = Views(images=[images, images.clone()], params=flips, labels=torch.tensor([0, 1]))
    nhwc = as_channels_last(views)
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in nhwc.images)
    assert torch.equal(nhwc.images[0], images)  # same values, other strides
    assert nhwc.labels.dtype == torch.int64 and nhwc.params[0]["flip"].dtype == torch.int64
    doubled = as_float64(views)
    assert doubled.images[1].dtype == torch.float64 and doubled.labels.dtype == torch.int64


def test_sync_batchnorm_is_torchs_on_cuda_and_ours_elsewhere():
    def model():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))

    on_cuda = convert_sync_batchnorm(model(), torch.device("cuda"))  # converting needs no GPU
    on_cpu = convert_sync_batchnorm(model(), torch.device("cpu"))
    assert [type(m) for m in on_cuda.modules() if "BatchNorm" in type(m).__name__] == [nn.SyncBatchNorm] * 2
    assert [type(m) for m in on_cpu.modules() if "BatchNorm" in type(m).__name__] == [GlobalBatchNorm] * 2
    assert on_cuda.state_dict().keys() == on_cpu.state_dict().keys() == model().state_dict().keys()
