"""Batched SimCLR-style image augmentation on the training device, returning its parameters.

Pipeline, in this order (SimCLR / torchvision)::

    RandomResizedCrop -> horizontal flip -> colour jitter (prob) -> grayscale (prob) -> Gaussian blur (prob)
    -> solarisation (prob; BYOL's) -> normalise with mean / std

Every random number is drawn from an explicit :class:`torch.Generator`, in a fixed count per call (so a
resumed run draws the same stream), and the parameters that were drawn are returned. The image ops are
kornia's functional ops applied to the whole batch (or, where an op applies to only some samples, to
that subset in one call).

Parameters (``params`` dict; every tensor has the batch size B as its first dimension):

``crop``          (B, 4) float32: ``x0, y0, x1, y1`` of the crop box in *input* pixels, pixel-edge
                  coordinates: the box covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1`` of the
                  input (integers, as torchvision's RandomResizedCrop draws them), so its width is
                  ``x1 - x0``. The box is resampled bilinearly to the output size with half-pixel
                  centres: with ``augment.antialias`` (default) as ``F.interpolate(..., mode="bilinear",
                  antialias=True)`` of the cropped patch, which is PIL's bilinear resize (the filter
                  widened by the shrink factor, so a shrunk crop averages every input pixel it covers),
                  what the official codes' torchvision-on-PIL ``RandomResizedCrop`` does; without,
                  ``antialias=False`` (each output pixel samples 2 x 2 input pixels).
``antialias``     (B,) float32, optional: 1 where the crop box was resampled with the antialiasing filter
                  whatever ``augment.antialias`` says: views cut from the full image in the data workers
                  (:mod:`equissl.augmentations.crops`), whose box is the crop in the *original* image's
                  pixels. Absent or 0: ``augment.antialias`` decides. The two filters agree wherever the
                  box is no larger than the output (upsampling).
``flip``          (B,) float32: 1 where the view is mirrored left-right (after the crop), else 0.
``jitter``        (B, 4) float32: brightness, contrast, saturation factors (multiplicative, 1 = identity,
                  torchvision's definitions) and hue shift as a fraction of a full turn in [-0.5, 0.5]
                  (0 = identity). Identity values ``(1, 1, 1, 0)`` where jitter was not applied.
``jitter_order``  (B, 4) int64: ``jitter_order[b, i]`` is the op (0 brightness, 1 contrast,
                  2 saturation, 3 hue) applied i-th; ``(0, 1, 2, 3)`` where jitter was not applied.
``gray``          (B,) float32: 1 where the view was converted to grayscale (three equal channels).
``blur_sigma``    (B,) float32: standard deviation of the Gaussian blur in *output* pixels, 0 = no blur.
                  The kernel side is :func:`blur_kernel_size` of the output side.
``solarize``      (B,) float32: 1 where the view was solarised: every value (of each channel, in [0, 1]) at
                  or above ``augment.solarize_threshold`` replaced by 1 minus it (BYOL's and torchvision's
                  definition; threshold 0 inverts the whole image).

``shared_chunks = n > 0`` splits the batch into ``n`` contiguous chunks (sizes differ by at most one,
like :func:`torch.tensor_split`) and draws one parameter set per chunk (CARE's batch-shared mode).
"""

from __future__ import annotations

import math

import kornia
import torch
from torch import Tensor, nn

from equissl.config import AugmentConfig

# every view's parameters; "antialias" is optional (1 on views cut from full images)
PARAM_KEYS = ("crop", "flip", "jitter", "jitter_order", "gray", "blur_sigma", "solarize")
IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def blur_kernel_size(out_size: Size) -> int:
    """Odd Gaussian kernel side: 10% of the output side, as SimCLR, at least 3 pixels."""
    side = min(_pair(out_size))
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def chunk_index(batch_size: int, shared_chunks: int, device: torch.device | str = "cpu") -> Tensor:
    """(B,) int64 index of the parameter set each sample uses.

    ``shared_chunks == 0``: one set per sample (``arange(B)``); ``n > 0``: ``n`` contiguous chunks whose
    sizes differ by at most one, sample ``i`` in chunk ``floor(i * n / B)``.
    """
    if shared_chunks < 0:
        raise ValueError(f"shared_chunks must be >= 0, got {shared_chunks}")
    if shared_chunks > batch_size:
        raise ValueError(f"shared_chunks={shared_chunks} exceeds the batch size {batch_size}")
    positions = torch.arange(batch_size, device=device)
    if shared_chunks == 0:
        return positions
    return positions * shared_chunks // batch_size


def to_float_image(x: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; float32/float64 kept, other floats become float32."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {x.dtype}")
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ----------------------------------------------------------------------------------------------------
# Parameter sampling.


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(n, 4) float32 boxes x0, y0, x1, y1 drawn as torchvision's ``RandomResizedCrop.get_params``.

    Vectorised: all 10 attempts are drawn for every box; each box takes its first valid attempt, or
    torchvision's fallback (whole image clamped to the ratio range, centred) when none is valid.
    """
    if not (0 < scale[0] <= scale[1]):
        raise ValueError(f"crop scale must satisfy 0 < lo <= hi, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {ratio}")
    f64 = {"generator": generator, "device": device, "dtype": torch.float64}
    area = float(height * width)
    draws = torch.rand(n, _CROP_ATTEMPTS, 2, **f64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid attempt
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        w_fb, h_fb = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w_fb, h_fb = round(height * max(ratio)), height
    else:
        w_fb, h_fb = width, height
    any_valid = valid.any(dim=1)
    w = torch.where(any_valid, w, torch.full_like(w, w_fb))
    h = torch.where(any_valid, h, torch.full_like(h, h_fb))

    offsets = torch.rand(n, 2, **f64)
    top = torch.minimum(torch.floor(offsets[:, 0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(offsets[:, 1] * (width - w + 1)), width - w)
    top = torch.where(any_valid, top, torch.floor((height - h) / 2))
    left = torch.where(any_valid, left, torch.floor((width - w) / 2))
    return torch.stack([left, top, left + w, top + h], dim=1).float()


def identity_params(
    batch_size: int, height: int, width: int, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Parameters of the identity augmentation: full-image box, no flip/jitter/gray/blur/solarisation."""
    crop = torch.tensor([0.0, 0.0, float(width), float(height)], device=device)
    return {
        "crop": crop.expand(batch_size, 4).clone(),
        "flip": torch.zeros(batch_size, device=device),
        "jitter": torch.tensor(IDENTITY_JITTER, device=device).expand(batch_size, 4).clone(),
        "jitter_order": torch.arange(4, device=device).expand(batch_size, 4).clone(),
        "gray": torch.zeros(batch_size, device=device),
        "blur_sigma": torch.zeros(batch_size, device=device),
        "solarize": torch.zeros(batch_size, device=device),
    }


def sample_params(
    cfg: AugmentConfig,
    batch_size: int,
    height: int,
    width: int,
    crop_scale: tuple[float, float],
    generator: torch.Generator | None = None,
    shared_chunks: int = 0,
) -> dict[str, Tensor]:
    """Draw the parameters of one batch (units in the module docstring), on the generator's device.

    Exactly the same number of random values is drawn whatever the probabilities, so the stream stays
    aligned across configurations of equal batch size and chunk count. One exception: the solarisation
    coin is drawn only when ``cfg.solarize_prob > 0``, so settings without solarisation draw the stream
    they drew before it existed (and reproduce the figures measured then).
    """
    index = chunk_index(batch_size, shared_chunks)
    n = batch_size if shared_chunks == 0 else shared_chunks
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float) -> Tensor:
        return _uniform(n, low, high, generator, device)

    def coin(prob: float) -> Tensor:
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64) < prob

    crop = sample_crop_boxes(n, height, width, crop_scale, cfg.crop_ratio, generator, device)
    flip = coin(cfg.hflip_prob)

    jitter_on = coin(cfg.jitter_prob)
    factors = torch.stack(
        [
            uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
            uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
            uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
            uniform(-cfg.hue, cfg.hue),
        ],
        dim=1,
    )
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)  # uniform permutation
    identity = torch.tensor(IDENTITY_JITTER, device=device, dtype=torch.float64)
    factors = torch.where(jitter_on[:, None], factors, identity)
    order = torch.where(jitter_on[:, None], order, torch.arange(4, device=device))

    gray = coin(cfg.grayscale_prob)
    blur_on = coin(cfg.blur_prob)
    sigma = torch.where(blur_on, uniform(*cfg.blur_sigma), 0.0)
    solarize = (
        coin(cfg.solarize_prob) if cfg.solarize_prob > 0 else torch.zeros(n, dtype=torch.bool, device=device)
    )

    params = {
        "crop": crop,
        "flip": flip.float(),
        "jitter": factors.float(),
        "jitter_order": order,
        "gray": gray.float(),
        "blur_sigma": sigma.float(),
        "solarize": solarize.float(),
    }
    index = index.to(device)
    return {key: value[index] for key, value in params.items()}


# ----------------------------------------------------------------------------------------------------
# Deterministic ops, each applied to a whole batch given per-sample parameters.


def _on_subset(x: Tensor, mask: Tensor, op, *args: Tensor) -> Tensor:
    """``op(x[mask], *(a[mask] for a in args))`` written back into a copy of ``x``; skips empty masks."""
    index = mask.detach().cpu().nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    if index.numel() == x.shape[0]:
        return op(x, *args)
    index = index.to(x.device)
    return x.index_copy(0, index, op(x.index_select(0, index), *(a.index_select(0, index) for a in args)))


def resized_crop(x: Tensor, crop: Tensor, out_size: Size, antialias: bool = False) -> Tensor:
    """Crop every image to its box (B, 4; x0, y0, x1, y1 in input pixel edges) and resize bilinearly.

    Equivalent to ``F.interpolate(x[:, :, y0:y1, x0:x1], out_size, mode="bilinear", align_corners=False,
    antialias=antialias)`` per sample, done as one batched operation: a bilinear remap without
    antialiasing, two batched matrix products with antialiasing (:func:`_resampling_matrix`).
    """
    out_h, out_w = _pair(out_size)
    height, width = x.shape[-2:]
    crop = crop.to(device=x.device, dtype=torch.float64)
    full = torch.tensor([0.0, 0.0, width, height], device=x.device, dtype=torch.float64)
    if (out_h, out_w) == (height, width) and bool((crop == full).all()):
        return x
    x0, y0, x1, y1 = (c[:, None] for c in crop.unbind(1))
    if antialias:
        rows = _resampling_matrix(y0, y1 - y0, height, out_h).to(x.dtype)  # (B, out_h, H)
        cols = _resampling_matrix(x0, x1 - x0, width, out_w).to(x.dtype)  # (B, out_w, W)
        return torch.einsum("boh,bchw,bpw->bcop", rows, x, cols)
    # Output pixel centre j samples input coordinate x0 + (j + 0.5) * w / out_w - 0.5 (pixel-centre units),
    # clamped to the box's outer pixel centres as interpolate clamps to the cropped patch.
    cols = torch.arange(out_w, device=x.device, dtype=torch.float64)
    rows = torch.arange(out_h, device=x.device, dtype=torch.float64)
    sample_x = torch.maximum(torch.minimum(x0 + (cols + 0.5) * (x1 - x0) / out_w - 0.5, x1 - 1), x0)
    sample_y = torch.maximum(torch.minimum(y0 + (rows + 0.5) * (y1 - y0) / out_h - 0.5, y1 - 1), y0)
    batch = x.shape[0]
    map_x = sample_x.to(x.dtype)[:, None, :].expand(batch, out_h, out_w)
    map_y = sample_y.to(x.dtype)[:, :, None].expand(batch, out_h, out_w)
    return kornia.geometry.transform.remap(
        x, map_x, map_y, mode="bilinear", padding_mode="border", align_corners=True
    )


def _resampling_matrix(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """(B, out_size, in_size) float64 weights resampling the span [start, start + length) of B rows.

    PIL's (and ``F.interpolate(antialias=True)``'s) bilinear filter: output pixel i is centred at
    ``start + (i + 0.5) * s`` with ``s = length / out_size``; input pixel j (centre j + 0.5) weighs
    ``max(0, 1 - |j + 0.5 - centre| / max(s, 1))``, pixels outside the span weigh 0, and the weights are
    normalised to sum to 1 (so the border renormalises, as both libraries do). For ``s <= 1`` this is
    plain bilinear interpolation.
    """
    scale = length / out_size  # (B, 1)
    centres = start + (torch.arange(out_size, device=start.device, dtype=torch.float64) + 0.5) * scale
    pixels = torch.arange(in_size, device=start.device, dtype=torch.float64) + 0.5
    distance = (pixels[None, None, :] - centres[:, :, None]) / scale.clamp_min(1.0)[:, :, None]
    inside = (pixels[None, None, :] > start[:, :, None]) & (
        pixels[None, None, :] < (start + length)[:, :, None]
    )
    weights = (1.0 - distance.abs()).clamp_min(0.0) * inside
    return weights / weights.sum(dim=2, keepdim=True)


def horizontal_flip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the images where ``flip`` (B,) is nonzero."""
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1) > 0, x.flip(-1), x)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return kornia.enhance.adjust_brightness_accumulative(x, factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    return kornia.enhance.adjust_contrast_with_mean_subtraction(x, factor)


def _saturation(x: Tensor, factor: Tensor) -> Tensor:
    return kornia.enhance.adjust_saturation_with_gray_subtraction(x, factor)


def _hue(x: Tensor, turns: Tensor) -> Tensor:
    return kornia.enhance.adjust_hue(x, turns * (2 * math.pi))  # kornia takes radians


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def color_jitter(x: Tensor, jitter: Tensor, jitter_order: Tensor) -> Tensor:
    """torchvision's ColorJitter with per-sample factors (B, 4) and op order (B, 4); see module docstring.

    Each op is applied only to the samples whose factor differs from identity, so identity factors
    leave an image bit-for-bit unchanged.
    """
    jitter = jitter.to(device=x.device, dtype=x.dtype)
    identity = torch.tensor(IDENTITY_JITTER, device=x.device, dtype=x.dtype)
    active = (jitter != identity).cpu()
    order = jitter_order.cpu()
    for position in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            mask = (order[:, position] == op_index) & active[:, op_index]
            x = _on_subset(x, mask, op, jitter[:, op_index])
    return x


def grayscale(x: Tensor, gray: Tensor) -> Tensor:
    """ITU-R BT.601 luma repeated on three channels where ``gray`` (B,) is nonzero."""
    luma = kornia.color.rgb_to_grayscale(x).expand_as(x)
    return torch.where(gray.to(x.device).view(-1, 1, 1, 1) > 0, luma, x)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Isotropic Gaussian blur with per-sample ``sigma`` (B,) in pixels (0 = none), reflect borders."""

    def blur(images: Tensor, sigmas: Tensor) -> Tensor:
        return kornia.filters.gaussian_blur2d(images, kernel_size, sigmas[:, None].expand(-1, 2))

    return _on_subset(x, sigma.cpu() > 0, blur, sigma.to(device=x.device, dtype=x.dtype))


def solarize(x: Tensor, flags: Tensor, threshold: float) -> Tensor:
    """Where ``flags`` (B,) is nonzero, every value of x (B, C, H, W) in [0, 1] at or above ``threshold``
    becomes ``1 - value`` (BYOL's ``where(x < t, x, 1 - x)``; torchvision's ``solarize``)."""
    selected = (flags.to(x.device) > 0).view(-1, 1, 1, 1) & (x >= threshold)
    return torch.where(selected, 1.0 - x, x)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(x - mean) / std per channel."""
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def crop_resize_antialiased(image: Tensor, box: Tensor, out_size: Size) -> Tensor:
    """One image (3, H, W) float cut to ``box`` (x0, y0, x1, y1 in its pixel edges, integers) and resized
    bilinearly with antialiasing to ``out_size``: the crop of a view whose ``antialias`` parameter is 1."""
    x0, y0, x1, y1 = (int(v) for v in box.tolist())
    patch = image[None, :, y0:y1, x0:x1]
    return torch.nn.functional.interpolate(
        patch, size=_pair(out_size), mode="bilinear", antialias=True, align_corners=False
    )[0]


def crop_views(x: Tensor, params: dict[str, Tensor], out_size: Size, antialias_all: bool = False) -> Tensor:
    """The crop step of :func:`apply_params`: every sample antialiased with ``antialias_all``
    (``augment.antialias``; one batched operation), else plain bilinear for samples whose ``antialias``
    parameter is 0 (one batched remap) and antialiased per sample where it is 1."""
    antialias = params.get("antialias")
    if antialias_all:
        return resized_crop(x, params["crop"], out_size, antialias=True)
    if antialias is None or not bool((antialias > 0).any()):
        return resized_crop(x, params["crop"], out_size)
    out = torch.empty(x.shape[0], x.shape[1], *_pair(out_size), dtype=x.dtype, device=x.device)
    smooth = (antialias.detach().cpu() > 0).nonzero().squeeze(1).tolist()
    plain = [b for b in range(x.shape[0]) if b not in set(smooth)]
    if plain:
        index = torch.tensor(plain, device=x.device)
        out[index] = resized_crop(x[index], params["crop"].to(x.device)[index], out_size)
    for b in smooth:
        out[b] = crop_resize_antialiased(x[b], params["crop"][b], out_size)
    return out


def finish_view(x: Tensor, params: dict[str, Tensor], cfg: AugmentConfig, out_size: Size) -> Tensor:
    """Every step of :func:`apply_params` after the crop, on crops (B, 3, out_h, out_w) float in [0, 1]:
    flip, colour jitter, grayscale, blur, solarisation, normalisation."""
    x = horizontal_flip(x, params["flip"])
    x = color_jitter(x, params["jitter"], params["jitter_order"])
    x = grayscale(x, params["gray"])
    x = gaussian_blur(x, params["blur_sigma"], blur_kernel_size(out_size))
    x = solarize(x, params["solarize"], cfg.solarize_threshold)
    return normalize(x, cfg.mean, cfg.std)


def apply_params(x: Tensor, params: dict[str, Tensor], cfg: AugmentConfig, out_size: Size) -> Tensor:
    """Apply given parameters deterministically: the pure function behind :class:`ImageAugment` and the
    full-image crops (:mod:`equissl.augmentations.crops`).

    x: (B, 3, H, W) uint8 or float in [0, 1] (for views cut from full images: the original images, which
    may then be given one at a time, B = 1); params: as in the module docstring (any device);
    cfg: supplies ``mean`` / ``std``; out_size: output side (int) or (height, width).
    Returns (B, 3, out_h, out_w) float, normalised.
    """
    missing = [key for key in PARAM_KEYS if key not in params]
    if missing:
        raise ValueError(f"params lack {missing}")
    x = to_float_image(x)
    return finish_view(crop_views(x, params, out_size, cfg.antialias), params, cfg, out_size)


class ImageAugment(nn.Module):
    """SimCLR-style batched augmentation: ``aug(x, generator, shared_chunks=0) -> (x_out, params)``.

    cfg: probabilities, jitter strengths, blur range, crop ratio, mean/std.
    out_size: output side in pixels (``cfg.crop_size`` for global views, ``cfg.small_crop_size`` for
        small crops); crop_scale: RandomResizedCrop area range (``cfg.crop_scale`` / ``cfg.small_crop_scale``).
    """

    def __init__(
        self, cfg: AugmentConfig, out_size: Size | None = None, crop_scale: tuple[float, float] | None = None
    ):
        super().__init__()
        self.cfg = cfg
        self.out_size = _pair(out_size if out_size is not None else cfg.crop_size)
        self.crop_scale = tuple(crop_scale if crop_scale is not None else cfg.crop_scale)
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")

    def sample_params(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        shared_chunks: int = 0,
    ) -> dict[str, Tensor]:
        return sample_params(self.cfg, batch_size, height, width, self.crop_scale, generator, shared_chunks)

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        return apply_params(x, params, self.cfg, self.out_size)

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, shared_chunks: int = 0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """x: (B, 3, H, W) uint8 or float in [0, 1] -> ((B, 3, *out_size) normalised float, params)."""
        batch_size, _, height, width = x.shape
        params = self.sample_params(batch_size, height, width, generator, shared_chunks)
        out = self.apply(x, params)
        return out, {key: value.to(x.device) for key, value in params.items()}

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, crop_scale={self.crop_scale}"
