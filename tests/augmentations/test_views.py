import pytest
import torch

from equissl.augmentations.image import PARAM_KEYS, apply_params, chunk_index, normalize
from equissl.augmentations.views import ImageViewMaker, ObjectViewMaker
from equissl.config import AugmentConfig
from equissl.errors import ConfigError
from equissl.types import Views, ViewSpec
from tests.helpers import make_views

CFG = AugmentConfig(crop_size=24, small_crop_size=12, blur_prob=0.3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_batch(batch: int = 6, size: int = 32) -> dict:
    g = gen(11)
    return {
        "image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
        "label": torch.arange(batch),
        "latent": torch.rand(batch, 7, generator=g),
    }


def object_batch(batch: int = 4, views: int = 3, size: int = 24) -> dict:
    g = gen(12)
    return {
        "images": torch.randint(0, 256, (batch, views, 3, size, size), dtype=torch.uint8, generator=g),
        "label": torch.arange(batch) + 10,
        "latents": torch.rand(batch, views, 7, generator=g),
    }


def test_image_views_shapes_params_and_labels():
    batch = image_batch()
    views = make_views(CFG, ViewSpec(source="image", num_views=3, num_small=2), batch, gen())
    assert isinstance(views, Views) and views.batch_size == 6
    assert [v.shape for v in views.images] == [(6, 3, 24, 24)] * 3
    assert [v.shape for v in views.small] == [(6, 3, 12, 12)] * 2
    assert len(views.params) == 3 and len(views.small_params) == 2
    assert all(set(p) == set(PARAM_KEYS) for p in views.params + views.small_params)
    assert torch.equal(views.labels, batch["label"]) and views.latents is None
    assert not torch.allclose(views.images[0], views.images[1])  # independent draws per view
    for image, params in zip(views.images, views.params):
        torch.testing.assert_close(apply_params(batch["image"], params, CFG, 24), image, atol=1e-5, rtol=0)
    for image, params in zip(views.small, views.small_params):
        torch.testing.assert_close(apply_params(batch["image"], params, CFG, 12), image, atol=1e-5, rtol=0)
    small_area = [
        (p["crop"][:, 2] - p["crop"][:, 0]) * (p["crop"][:, 3] - p["crop"][:, 1]) for p in views.small_params
    ]
    assert max(float(a.max()) for a in small_area) <= 0.45 * 32 * 32  # small_crop_scale, not crop_scale


def test_views_are_normalised_with_the_config_mean_and_std():
    cfg = AugmentConfig(
        crop_size=16, jitter_prob=0.0, grayscale_prob=0.0, mean=(0.5, 0.25, 0.75), std=(0.5, 0.25, 0.125)
    )
    batch = image_batch()
    batch["image"] = torch.full_like(batch["image"], 51)  # 0.2 everywhere: crops and flips change nothing
    views = make_views(cfg, ViewSpec(num_views=2), batch, gen())
    expected = torch.tensor([(0.2 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, (0.2 - 0.75) / 0.125]).view(1, 3, 1, 1)
    for image in views.images:
        torch.testing.assert_close(image, expected.expand_as(image), atol=1e-5, rtol=0)


def test_object_views_none_are_only_resized_and_normalised():
    batch = object_batch(size=24)
    views = make_views(CFG, ViewSpec(source="object", num_views=2), batch, gen())
    assert len(views.images) == 2 and views.small == []
    for k in range(2):
        expected = normalize(batch["images"][:, k].float() / 255, CFG.mean, CFG.std)
        torch.testing.assert_close(views.images[k], expected, atol=1e-6, rtol=0)
        assert torch.equal(views.latents[k], batch["latents"][:, k])
        params = views.params[k]
        assert torch.equal(params["crop"], torch.tensor([0.0, 0.0, 24.0, 24.0]).expand(4, 4))
        assert torch.equal(params["flip"], torch.zeros(4)) and torch.equal(params["gray"], torch.zeros(4))
        assert torch.equal(params["jitter"], torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(4, 4))
        assert torch.equal(params["blur_sigma"], torch.zeros(4))
    assert torch.equal(views.labels, batch["label"])


def test_object_views_none_resize_to_crop_size():
    batch = object_batch(size=48)
    views = make_views(CFG, ViewSpec(source="object", num_views=3), batch, gen())
    assert [v.shape for v in views.images] == [(4, 3, 24, 24)] * 3
    for k in range(3):
        torch.testing.assert_close(
            apply_params(batch["images"][:, k], views.params[k], CFG, 24), views.images[k]
        )


def test_object_views_full_augment_each_rendered_view():
    cfg = AugmentConfig(crop_size=16, object_views="full")
    batch = object_batch(batch=8, views=2)
    spec = ViewSpec(source="object", num_views=2, num_small=1, shared_chunks=2)
    views = make_views(cfg, spec, batch, gen())
    assert [v.shape for v in views.images] == [(8, 3, 16, 16)] * 2 and views.small[0].shape == (8, 3, 32, 32)
    for k in range(2):
        torch.testing.assert_close(
            apply_params(batch["images"][:, k], views.params[k], cfg, 16), views.images[k], atol=1e-5, rtol=0
        )
        assert torch.equal(views.latents[k], batch["latents"][:, k])
    torch.testing.assert_close(
        apply_params(batch["images"][:, 0], views.small_params[0], cfg, 32), views.small[0], atol=1e-5, rtol=0
    )
    # shared_chunks passed through: one crop per chunk
    chunks = chunk_index(8, 2)
    for params in views.params:
        crops = params["crop"]
        assert torch.equal(crops[chunks == 0], crops[:1].expand(4, 4))
        assert torch.equal(crops[chunks == 1], crops[4:5].expand(4, 4))
        assert not torch.equal(crops[0], crops[4])


def test_image_views_shared_chunks_and_seed():
    batch = image_batch(batch=9)
    spec = ViewSpec(num_views=2, shared_chunks=3)
    views = make_views(CFG, spec, batch, gen(5))
    chunks = chunk_index(9, 3)
    for params in views.params:
        for key in PARAM_KEYS:
            value = params[key].reshape(9, -1)
            for chunk in range(3):
                assert torch.equal(value[chunks == chunk], value[chunks == chunk][:1].expand(3, -1))
    again = make_views(CFG, spec, batch, gen(5))
    assert all(torch.equal(a, b) for a, b in zip(views.images, again.images))


def test_float_batches_work_like_uint8():
    batch = image_batch()
    as_float = dict(batch, image=batch["image"].float() / 255)
    spec = ViewSpec(num_views=2, num_small=1)
    a = make_views(CFG, spec, batch, gen(2))
    b = make_views(CFG, spec, as_float, gen(2))
    for x, y in zip(a.images + a.small, b.images + b.small):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_mismatched_batches_raise():
    with pytest.raises(ValueError, match="images"):
        make_views(CFG, ViewSpec(source="object"), image_batch(), gen())
    with pytest.raises(ValueError, match="image"):
        make_views(CFG, ViewSpec(source="image"), object_batch(), gen())
    with pytest.raises(ValueError, match="views per object"):
        make_views(CFG, ViewSpec(source="object", num_views=3), object_batch(views=2), gen())
    with pytest.raises(ValueError):
        make_views(CFG, ViewSpec(num_views=0), image_batch(), gen())
    with pytest.raises(ValueError, match="source"):  # a maker is bound to the source it makes
        ImageViewMaker(CFG, ViewSpec(source="object"))
    with pytest.raises(ValueError, match="source"):
        ObjectViewMaker(CFG, ViewSpec(source="image"))


@pytest.mark.parametrize("source", ["image", "object"])
def test_per_view_probabilities_make_byols_asymmetric_pair(source):
    cfg = AugmentConfig(
        crop_size=24, object_views="full", view_blur_prob=(1.0, 0.0), view_solarize_prob=(0.0, 1.0)
    )
    batch = image_batch() if source == "image" else object_batch()
    images = batch["image"] if source == "image" else batch["images"]
    views = make_views(cfg, ViewSpec(source=source, num_views=2, num_small=1), batch, gen())
    first, second = views.params
    assert bool((first["blur_sigma"] > 0).all()) and bool((first["solarize"] == 0).all())
    assert bool((second["blur_sigma"] == 0).all()) and bool((second["solarize"] == 1).all())
    assert bool((views.small_params[0]["solarize"] == 0).all())  # small crops: augment.solarize_prob (0)
    for k, (view, params) in enumerate(zip(views.images, views.params)):
        source_images = images if source == "image" else images[:, k]
        torch.testing.assert_close(apply_params(source_images, params, cfg, 24), view, atol=1e-5, rtol=0)


def test_per_view_probabilities_of_another_length_than_the_views_are_refused():
    cfg = AugmentConfig(view_solarize_prob=(0.0, 0.2, 0.2))
    with pytest.raises(ConfigError, match="augment.view_solarize_prob has 3 entries .* 2 global views"):
        ImageViewMaker(cfg, ViewSpec(source="image", num_views=2))
