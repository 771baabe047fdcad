import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from equissl.augmentations.image import (
    PARAM_KEYS,
    ImageAugment,
    apply_params,
    blur_kernel_size,
    chunk_index,
    color_jitter,
    gaussian_blur,
    grayscale,
    identity_params,
    normalize,
    resized_crop,
    sample_crop_boxes,
    sample_params,
    solarize,
)
from equissl.config import AugmentConfig

# Every stage fires often, so the reproduction tests cover all of them.
BUSY = AugmentConfig(jitter_prob=0.8, grayscale_prob=0.3, blur_prob=0.5, hflip_prob=0.5, solarize_prob=0.3)
PLAIN = AugmentConfig(
    hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1)
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int = 16, size: int = 32, seed: int = 0, dtype=torch.uint8) -> torch.Tensor:
    # smooth colourful images: random low-resolution noise upsampled, so every op changes them visibly
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)


def unnormalize(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    return x * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shared_chunks", [0, 5])
def test_params_reproduce_the_applied_transform(dtype, shared_chunks):
    x = images(dtype=dtype)
    aug = ImageAugment(BUSY, out_size=24, crop_scale=(0.2, 1.0))
    out, params = aug(x, gen(0), shared_chunks=shared_chunks)
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    assert set(params) == set(PARAM_KEYS)
    assert all(value.shape[0] == 16 for value in params.values())
    if shared_chunks == 0:
        assert (
            params["gray"].sum() > 0
            and params["solarize"].sum() > 0
            and (params["blur_sigma"] > 0).any()
            and (params["jitter"][:, 3] != 0).any()
        )
    again = apply_params(x, params, BUSY, 24)
    torch.testing.assert_close(again, out, atol=1e-5, rtol=0)
    # a permuted batch with its permuted params gives the permuted output: params are truly per sample
    perm = torch.randperm(16, generator=gen(1))
    permuted = apply_params(x[perm], {k: v[perm] for k, v in params.items()}, BUSY, 24)
    torch.testing.assert_close(permuted, out[perm], atol=1e-5, rtol=0)


def test_uint8_and_float_input_agree():
    x = images()
    aug = ImageAugment(BUSY, out_size=24)
    out_u8, params_u8 = aug(x, gen(3))
    out_f, params_f = aug(x.float() / 255, gen(3))
    torch.testing.assert_close(out_f, out_u8, atol=1e-5, rtol=0)
    for key in PARAM_KEYS:
        assert torch.equal(params_u8[key], params_f[key])


def test_crop_box_on_a_coordinate_image():
    # channel 0 holds the column, channel 1 the row: the output shows which input pixels were read
    # out >= every box side: pure upsampling, so the outermost samples land exactly on the box edges
    height, width, out = 40, 48, 64
    cols = torch.arange(width, dtype=torch.float64).view(1, 1, 1, width).expand(8, 1, height, width)
    rows = torch.arange(height, dtype=torch.float64).view(1, 1, height, 1).expand(8, 1, height, width)
    x = torch.cat([cols / (width - 1), rows / (height - 1), torch.zeros_like(cols)], dim=1)
    y, params = ImageAugment(PLAIN, out_size=out)(x, gen(5))
    crop = params["crop"].double()
    x0, y0, x1, y1 = crop.unbind(1)
    seen_col = y[:, 0] * (width - 1)
    seen_row = y[:, 1] * (height - 1)
    torch.testing.assert_close(seen_col.amin((1, 2)), x0)
    torch.testing.assert_close(seen_col.amax((1, 2)), x1 - 1)
    torch.testing.assert_close(seen_row.amin((1, 2)), y0)
    torch.testing.assert_close(seen_row.amax((1, 2)), y1 - 1)
    # interior pixel centres: output column j reads input x0 + (j + 0.5) * w / out - 0.5
    j = torch.arange(out, dtype=torch.float64)
    expected = (x0[:, None] + (j + 0.5) * (x1 - x0)[:, None] / out - 0.5).clamp(
        min=x0[:, None], max=(x1 - 1)[:, None]
    )
    torch.testing.assert_close(seen_col[:, 5], expected, atol=1e-9, rtol=0)


def test_resized_crop_matches_torchvision():
    x = images(batch=6, size=40, dtype=torch.float32)
    boxes = sample_crop_boxes(6, 40, 40, (0.05, 1.0), (0.75, 4 / 3), gen(2))
    for size in (64, 24):  # up- and down-sampling
        out = resized_crop(x, boxes, size)
        for b, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            ref = TF.resized_crop(x[b], y0, x0, y1 - y0, x1 - x0, [size, size], antialias=False)
            torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=0)


def test_antialiased_resized_crop_matches_torch_and_pil():
    """augment.antialias: equal to F.interpolate(antialias=True) of each cropped patch (to float
    precision), and to torchvision's RandomResizedCrop path on PIL images -- what the official codes run --
    to within uint8 rounding; shrinking without it aliases (differs by far more)."""
    from PIL import Image

    x = images(batch=6, size=40, dtype=torch.float32)
    boxes = sample_crop_boxes(6, 40, 40, (0.05, 1.0), (0.75, 4 / 3), gen(3))
    for size in (64, 24, 9):  # up-sampling, mild and strong shrinking
        out = resized_crop(x, boxes, size, antialias=True)
        for b, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            ref = torch.nn.functional.interpolate(
                x[b : b + 1, :, y0:y1, x0:x1], (size, size), mode="bilinear", antialias=True
            )[0]
            torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=0)
    pixels = (x * 255).round().to(torch.uint8)
    out = resized_crop(pixels.float() / 255, boxes, 16, antialias=True)
    aliased = resized_crop(pixels.float() / 255, boxes, 16, antialias=False)
    for b, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        pil = Image.fromarray(pixels[b].permute(1, 2, 0).numpy())
        ref = TF.pil_to_tensor(TF.resized_crop(pil, y0, x0, y1 - y0, x1 - x0, [16, 16])).float() / 255
        assert (out[b] - ref).abs().max() <= 1.5 / 255  # PIL rounds to uint8 (and works in fixed point)
    noise = torch.rand(1, 3, 40, 40, generator=gen(4))  # fine detail: a 4x shrink without the filter aliases
    whole = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    filtered, sampled = resized_crop(noise, whole, 10, antialias=True), resized_crop(noise, whole, 10)
    assert sampled.std() > 2 * filtered.std() and (aliased - out).abs().max() > 0.003


def test_crop_boxes_follow_scale_and_ratio():
    boxes = sample_crop_boxes(2000, 64, 80, (0.2, 0.6), (0.75, 4 / 3), gen(0))
    x0, y0, x1, y1 = boxes.unbind(1)
    w, h = x1 - x0, y1 - y0
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 80).all() and (y1 <= 64).all()
    assert torch.equal(boxes, boxes.round())
    area = w * h / (64 * 80)
    assert area.min() > 0.18 and area.max() < 0.63  # the range, up to integer rounding of the sides
    assert area.min() < 0.22 and area.max() > 0.57
    aspect = w / h
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    assert x0.max() > 40 and y0.max() > 30  # offsets spread over the image


def test_crop_fallback_as_torchvision():
    # a 10 x 100 strip admits no box of area >= 0.9 with aspect <= 4/3: torchvision's fallback
    boxes = sample_crop_boxes(5, 10, 100, (0.9, 1.0), (0.75, 4 / 3), gen(0))
    w = round(10 * 4 / 3)
    expected = torch.tensor([(100 - w) // 2, 0, (100 - w) // 2 + w, 10], dtype=torch.float32)
    assert torch.equal(boxes, expected.expand(5, 4))


def test_flip_is_a_mirror():
    x = images()
    flipped, params_flipped = ImageAugment(AugmentConfig(hflip_prob=1.0), out_size=24)(x, gen(4))
    kept, params_kept = ImageAugment(AugmentConfig(hflip_prob=0.0), out_size=24)(x, gen(4))
    assert torch.equal(params_flipped["flip"], torch.ones(16)) and torch.equal(
        params_kept["flip"], torch.zeros(16)
    )
    assert torch.equal(params_flipped["crop"], params_kept["crop"])  # the draw count does not depend on probs
    # 1e-5, not exact: the contrast means sum the mirrored pixels in another order
    torch.testing.assert_close(flipped, kept.flip(-1), atol=1e-5, rtol=0)
    assert not torch.allclose(flipped, kept)


def test_identity_params_leave_the_image_unchanged():
    x = images(dtype=torch.float32)
    identity = identity_params(16, 32, 32)
    shuffled_order = torch.argsort(torch.rand(16, 4, generator=gen(0)), dim=1)
    assert torch.equal(color_jitter(x, identity["jitter"], shuffled_order), x)
    out = apply_params(x, identity, BUSY, 32)
    torch.testing.assert_close(out, normalize(x, BUSY.mean, BUSY.std), atol=1e-6, rtol=0)


def test_jitter_matches_torchvision_ops_in_the_given_order():
    x = images(batch=4, dtype=torch.float32)
    factors = torch.tensor(
        [[1.3, 0.7, 1.2, 0.08], [0.6, 1.4, 0.8, -0.1], [1.0, 1.0, 0.0, 0.5], [1.1, 1.0, 1.0, 0.0]]
    )
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]])
    out = color_jitter(x, factors, order)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for b in range(4):
        ref = x[b]
        for op_index in order[b].tolist():
            ref = ops[op_index](ref, factors[b, op_index].item())
        torch.testing.assert_close(out[b], ref, atol=1e-4, rtol=0)
    # the order matters, so a test that ignored it could not pass
    assert not torch.allclose(out[1], color_jitter(x[1:2], factors[1:2], order[:1])[0], atol=1e-3)


def test_jitter_params_follow_the_config():
    cfg = AugmentConfig(jitter_prob=0.8, brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1)
    _, params = ImageAugment(cfg, out_size=8)(images(batch=400, size=8), gen(0))
    applied = (params["jitter"] != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
    assert 0.7 < applied.float().mean() < 0.9
    factors = params["jitter"][applied]
    for column, (low, high) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        assert factors[:, column].min() >= low and factors[:, column].max() <= high
    order = params["jitter_order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(400, 4))  # permutations
    assert len({tuple(row) for row in order[applied].tolist()}) > 12  # all orders occur, not one fixed order
    assert torch.equal(order[~applied], torch.arange(4).expand(int((~applied).sum()), 4))


def test_grayscale_output_has_equal_channels():
    cfg = AugmentConfig(grayscale_prob=1.0)
    out, params = ImageAugment(cfg, out_size=24)(images(), gen(0))
    assert torch.equal(params["gray"], torch.ones(16))
    pixels = unnormalize(out, cfg)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels[:, 1], pixels[:, 2], atol=1e-6, rtol=0)
    colour, _ = ImageAugment(AugmentConfig(grayscale_prob=0.0), out_size=24)(images(), gen(0))
    assert (unnormalize(colour, cfg)[:, 0] - unnormalize(colour, cfg)[:, 1]).abs().max() > 0.05


def test_blur_matches_torchvision_and_sigma_range():
    x = images(batch=3, dtype=torch.float32)
    sigma = torch.tensor([0.0, 0.7, 1.9])
    out = gaussian_blur(x, sigma, blur_kernel_size(32))
    assert blur_kernel_size(32) == 3 and blur_kernel_size(64) == 7 and blur_kernel_size(224) == 23
    assert torch.equal(out[0], x[0])
    for b in (1, 2):
        ref = TF.gaussian_blur(x[b], [3, 3], [sigma[b].item()] * 2)
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=0)
    _, params = ImageAugment(AugmentConfig(blur_prob=0.5, blur_sigma=(0.1, 2.0)), out_size=8)(
        images(200, 8), gen(0)
    )
    on = params["blur_sigma"] > 0
    assert 0.35 < on.float().mean() < 0.65
    assert params["blur_sigma"][on].min() >= 0.1 and params["blur_sigma"][on].max() <= 2.0


def test_solarize_by_hand_against_torchvision_and_threshold_zero_inverts():
    column = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0]).view(1, 1, 5, 1).expand(1, 3, 5, 1)
    by_hand = torch.tensor([0.0, 0.2, 0.5, 0.2, 0.0]).view(1, 1, 5, 1).expand(1, 3, 5, 1)
    torch.testing.assert_close(solarize(column, torch.ones(1), 0.5), by_hand)  # values >= 0.5 become 1 - v
    x = images(batch=3, dtype=torch.float32)
    out = solarize(x, torch.tensor([0.0, 1.0, 1.0]), 0.5)
    assert torch.equal(out[0], x[0])
    for b in (1, 2):
        torch.testing.assert_close(out[b], TF.solarize(x[b], 0.5), atol=0, rtol=0)
    torch.testing.assert_close(solarize(x, torch.ones(3), 0.0), 1.0 - x, atol=0, rtol=0)


def test_solarize_coin_is_drawn_last_and_only_when_asked_for():
    for prob, low, high in ((0.0, 0.0, 0.0), (0.3, 0.2, 0.4), (1.0, 1.0, 1.0)):
        g = gen(4)
        params = sample_params(AugmentConfig(solarize_prob=prob), 400, 32, 32, (0.2, 1.0), g)
        assert low <= float(params["solarize"].mean()) <= high
        if prob == 0.0:
            without, after_without = params, torch.rand(1, generator=g)
        else:  # every other parameter as without solarisation; the stream then moved by the coin
            assert all(torch.equal(params[k], without[k]) for k in PARAM_KEYS if k != "solarize")
            assert not torch.equal(torch.rand(1, generator=g), after_without)


def test_same_seed_same_output_different_seed_different():
    aug = ImageAugment(BUSY, out_size=24)
    x = images()
    out_a, params_a = aug(x, gen(7))
    out_b, params_b = aug(x, gen(7))
    out_c, params_c = aug(x, gen(8))
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(params_a[k], params_b[k]) for k in PARAM_KEYS)
    assert not torch.allclose(out_a, out_c)
    assert not torch.equal(params_a["crop"], params_c["crop"])
    # successive calls advance the generator: two views of one batch differ
    g = gen(7)
    first, _ = aug(x, g)
    second, _ = aug(x, g)
    assert not torch.allclose(first, second)


def test_chunk_index():
    assert chunk_index(10, 0).tolist() == list(range(10))
    assert chunk_index(10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert chunk_index(4, 4).tolist() == [0, 1, 2, 3]
    assert chunk_index(6, 4).unique().numel() == 4  # torch.chunk would give 3 chunks here
    with pytest.raises(ValueError):
        chunk_index(4, 5)
    with pytest.raises(ValueError):
        chunk_index(4, -1)


@pytest.mark.parametrize("batch, chunks", [(12, 3), (10, 4), (8, 1)])
def test_shared_mode_one_draw_per_chunk(batch, chunks):
    x = images(batch=batch)
    x = x[:1].expand_as(x).contiguous()  # identical images: identical params must give identical views
    out, params = ImageAugment(BUSY, out_size=16)(x, gen(0), shared_chunks=chunks)
    index = chunk_index(batch, chunks)
    for key in PARAM_KEYS:
        value = params[key].reshape(batch, -1)
        for chunk in range(chunks):
            members = value[index == chunk]
            assert torch.equal(members, members[:1].expand_as(members)), key
    distinct_crops = {tuple(row) for row in params["crop"].tolist()}
    assert len(distinct_crops) == chunks  # different draws across chunks
    for chunk in range(chunks):
        members = out[index == chunk]
        assert torch.equal(members, members[:1].expand_as(members))


def test_per_sample_mode_draws_differ_within_batch():
    _, params = ImageAugment(BUSY, out_size=16)(images(batch=32), gen(0))
    assert len({tuple(row) for row in params["crop"].tolist()}) > 20


def test_non_square_output_and_errors():
    aug = ImageAugment(PLAIN, out_size=(12, 20))
    out, _ = aug(images(batch=2), gen(0))
    assert out.shape == (2, 3, 12, 20)
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 1, 8, 8), gen(0))
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.int32), gen(0))
    with pytest.raises(ValueError):
        ImageAugment(PLAIN, out_size=8, crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError):
        apply_params(images(batch=2), {"crop": torch.zeros(2, 4)}, PLAIN, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_with_a_cuda_generator():
    x = images().cuda()
    aug = ImageAugment(BUSY, out_size=24)
    out, params = aug(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and all(value.is_cuda for value in params.values())
    torch.testing.assert_close(apply_params(x, params, BUSY, 24), out, atol=1e-5, rtol=0)
    # a CPU generator drives a CUDA batch to the same result as on the CPU
    out_gpu, _ = aug(x, gen(1))
    out_cpu, _ = aug(x.cpu(), gen(1))
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-4, rtol=0)


def test_hue_param_units_are_turns():
    # a hue shift of half a turn maps pure red to cyan
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    out = color_jitter(red, torch.tensor([[1.0, 1.0, 1.0, 0.5]]), torch.tensor([[3, 0, 1, 2]]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0]), atol=1e-5, rtol=0)
    assert math.isclose(float(out.mean()), 2 / 3, rel_tol=1e-5)


def test_grayscale_uses_bt601_luma():
    x = images(batch=4, dtype=torch.float32)
    out = grayscale(x, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[[0, 2], channel], luma[[0, 2]], atol=1e-6, rtol=0)
    assert torch.equal(out[[1, 3]], x[[1, 3]])
