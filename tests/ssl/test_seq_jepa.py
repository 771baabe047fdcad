"""seq-JEPA: EMA schedule, relative actions against scipy, action-slot zeroing, the loss and its wiring."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from equissl.config import AugmentConfig
from equissl.latents import sequence_actions
from equissl.ssl.ema import ema_momentum
from equissl.ssl.seq_jepa import (
    SeqJEPA,
    SeqJEPAConfig,
    augmentation_actions,
    augmentation_vectors,
)
from equissl.types import Views, ViewSpec
from tests.helpers import TinyBackbone, make_views

B, M, WIDTH, SIZE = 5, 3, 12, 8


def small_config(**changes) -> SeqJEPAConfig:
    base = SeqJEPAConfig(
        num_observed=M, action_embed_dim=4, num_layers=2, num_heads=4, predictor_hidden_dim=16
    )
    return dataclasses.replace(base, **changes)


def build(**changes) -> SeqJEPA:
    torch.manual_seed(0)
    return SeqJEPA(TinyBackbone(WIDTH), small_config(**changes))


def random_latents(views: int, batch: int = B, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    euler = (torch.rand(views, batch, 3, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    euler[..., 1] /= 2  # scipy's xyz range for the middle angle
    rest = torch.rand(views, batch, 4, generator=g, dtype=torch.float64)
    return list(torch.cat([euler, rest], dim=2).float().unbind(0))


def object_views(seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(B, 3, SIZE, SIZE, generator=g) for _ in range(M + 1)]
    return Views(images=images, params=[{} for _ in images], latents=random_latents(M + 1, seed=seed))


def scipy_relative_quat(euler_1: np.ndarray, euler_2: np.ndarray) -> np.ndarray:
    """Independent reference: R1^-1 R2 with scipy, (x, y, z, w)."""
    return (Rotation.from_euler("xyz", euler_1).inv() * Rotation.from_euler("xyz", euler_2)).as_quat()


# ----------------------------------------------------------------------------------------------------
# EMA


def test_on_step_end_moves_only_the_target_with_the_scheduled_momentum():
    objective = build()
    with torch.no_grad():
        for p in objective.backbone.parameters():
            p.add_(1.0)  # online and target now differ
    online = [p.clone() for p in objective.backbone.parameters()]
    before = [p.clone() for p in objective.target_backbone.parameters()]
    buffers = [b.clone() for b in objective.target_backbone.buffers()]

    objective.on_step_end(1, 10)  # first update: exactly the base momentum
    for new, old, w in zip(objective.target_backbone.parameters(), before, online):
        torch.testing.assert_close(new, 0.996 * old + 0.004 * w)
    middle = [p.clone() for p in objective.target_backbone.parameters()]
    objective.on_step_end(6, 10)  # the update after 0-based step 5 of 10: momentum 0.998
    for new, old, w in zip(objective.target_backbone.parameters(), middle, online):
        torch.testing.assert_close(new, 0.998 * old + 0.002 * w)

    for p, w in zip(objective.backbone.parameters(), online):
        torch.testing.assert_close(p, w)
    for b, old in zip(objective.target_backbone.buffers(), buffers):
        torch.testing.assert_close(b, old)
    assert not any(p.requires_grad for p in objective.target_backbone.parameters())
    assert objective.current_momentum == pytest.approx(ema_momentum(6, 10))


# ----------------------------------------------------------------------------------------------------
# Actions


def test_augmentation_vectors_units_and_order():
    params = [
        {
            "crop": torch.tensor([[2.0, 4.0, 10.0, 20.0]]),
            "jitter": torch.tensor([[1.1, 0.9, 1.2, -0.05]]),
            "blur_sigma": torch.tensor([0.7]),
            "flip": torch.tensor([1.0]),
        }
    ]
    vectors = augmentation_vectors(params, ("crop", "jitter", "blur_sigma"), view_size=16.0)
    expected = torch.tensor([[[0.125, 0.25, 0.5, 1.0, 1.1, 0.9, 1.2, -0.05, 0.7]]])
    torch.testing.assert_close(vectors, expected)
    torch.testing.assert_close(
        augmentation_vectors(params, ("flip", "blur_sigma"), 16.0), torch.tensor([[[1.0, 0.7]]])
    )
    with pytest.raises(ValueError):
        augmentation_vectors(params, ("solarize",), 16.0)
    with pytest.raises(ValueError):
        augmentation_vectors(params, ("gray",), 16.0)  # absent from the views


@pytest.mark.parametrize("norm", ["params", "views", "none"])
def test_augmentation_actions_normalisation_axis(norm):
    vectors = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    v = vectors.numpy()
    reference = np.empty_like(v)
    for b in range(3):
        for view in range(4):
            for p in range(5):
                if norm == "params":  # each view's vector to unit length
                    reference[b, view, p] = v[b, view, p] / np.sqrt((v[b, view] ** 2).sum())
                elif norm == "views":  # each parameter over the sequence (the official code)
                    reference[b, view, p] = v[b, view, p] / np.sqrt((v[b, :, p] ** 2).sum())
                else:
                    reference[b, view, p] = v[b, view, p]
    actions = augmentation_actions(vectors, norm)
    np.testing.assert_allclose(actions.numpy(), reference[:, 1:] - reference[:, :-1], rtol=1e-12)
    if norm == "params":
        assert not torch.allclose(actions, augmentation_actions(vectors, "views"))


# ----------------------------------------------------------------------------------------------------
# Tokens, aggregation, loss


def test_last_observed_action_slot_is_zeroed_and_only_reaches_the_predictor():
    objective = build().eval()  # eval: BatchNorm running statistics, no dropout -> per-sample outputs
    g = torch.Generator().manual_seed(1)
    encodings = torch.randn(B, M, WIDTH, generator=g)
    actions = torch.randn(B, M, 4, generator=g)
    tokens = objective.tokens(encodings, actions)
    assert tokens.shape == (B, M, WIDTH + 4)
    torch.testing.assert_close(tokens[:, :, :WIDTH], encodings)
    assert torch.equal(tokens[:, -1, WIDTH:], torch.zeros(B, 4))
    assert (tokens[:, :-1, WIDTH:].abs().sum(dim=2) > 0).all()

    with torch.no_grad():
        aggregate = objective.aggregate(encodings, actions)
        other_last = actions.clone()
        other_last[:, -1] += 1.0
        torch.testing.assert_close(objective.aggregate(encodings, other_last), aggregate)
        other_first = actions.clone()
        other_first[:, 0] += 1.0
        assert not torch.allclose(objective.aggregate(encodings, other_first), aggregate)
        prediction = objective.predict(aggregate, actions[:, -1])
        assert prediction.shape == (B, WIDTH)
        assert not torch.allclose(objective.predict(aggregate, other_last[:, -1]), prediction)


def test_forward_matches_an_independent_recomputation():
    objective = build().eval()
    with torch.no_grad():  # a target encoder that differs from the online one
        for p in objective.target_backbone.parameters():
            p.mul_(0.5).add_(0.1)
    views = object_views(seed=5)
    out = objective(views)

    with torch.no_grad():
        enc = torch.stack([objective.backbone(x) for x in views.images[:M]], dim=1)
        euler = [lat[:, :3].double().numpy() for lat in views.latents]
        quats = np.stack([scipy_relative_quat(euler[j], euler[j + 1]) for j in range(M)], axis=1)
        quats = np.where(quats[..., 3:] < 0, -quats, quats)  # canonical sign, w >= 0
        actions = torch.from_numpy(quats).float()
        embedded = objective.action_embed(actions.reshape(B * M, 4)).reshape(B, M, -1)
        embedded[:, -1] = 0.0
        sequence = torch.cat([objective.agg_token.expand(B, 1, -1), torch.cat([enc, embedded], 2)], dim=1)
        aggregate = objective.aggregator(sequence)[:, 0]
        prediction = objective.predictor(torch.cat([aggregate, objective.action_embed(actions[:, -1])], 1))
        target = objective.target_backbone(views.images[M])
        expected = 1 - F.cosine_similarity(prediction, target, dim=1).mean()
        online_target = objective.backbone(views.images[M])
        with_online_target = 1 - F.cosine_similarity(prediction, online_target, dim=1).mean()
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert abs(out.loss.item() - with_online_target.item()) > 1e-4  # the target came from the EMA encoder
    torch.testing.assert_close(out.features, enc[:, 0])


def test_gradients_reach_the_online_side_only():
    objective = build().train()
    out = objective(object_views(seed=6))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in objective.backbone.parameters())
    assert objective.agg_token.grad is not None and objective.agg_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.target_backbone.parameters())
    assert out.metrics["ema_momentum"] == pytest.approx(0.996)


# ----------------------------------------------------------------------------------------------------
# Views, interface, configuration


def test_required_views_follow_the_action_source():
    assert build().required_views == ViewSpec(source="object", num_views=M + 1)
    assert build(actions="augment").required_views == ViewSpec(source="image", num_views=M + 1)
    assert build(num_observed=1).required_views == ViewSpec(source="object", num_views=2)
    d = SeqJEPAConfig()
    assert (d.num_observed, d.action_embed_dim, d.num_layers, d.num_heads) == (3, 128, 3, 4)
    assert (d.ema_base, d.ema_schedule, d.predictor_hidden_dim) == (0.996, "cosine", 1024)


def test_augmentation_actions_train_end_to_end_from_the_view_maker():
    objective = build(actions="augment").train()
    g = torch.Generator().manual_seed(7)
    batch = {"image": torch.randint(0, 256, (B, 3, 12, 12), generator=g, dtype=torch.uint8)}
    views = make_views(AugmentConfig(crop_size=SIZE, blur_prob=0.5), objective.required_views, batch, g)
    actions = objective.sequence_actions(views)
    assert actions.shape == (B, M, 9) and torch.isfinite(actions).all()
    out = objective(views)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_representations_and_predictor_interface():
    objective = build().eval()
    x = torch.randn(B, 3, SIZE, SIZE)
    with torch.no_grad():
        reps = objective.representations(x)
        assert reps["equi"].shape == (B, WIDTH) and reps["inv"].shape == (B, WIDTH + 4)
        torch.testing.assert_close(reps["full"], torch.cat([reps["inv"], reps["equi"]], 1))
        torch.testing.assert_close(reps["equi"], objective.backbone(x))
        # One observed view: its action slot is the (zeroed) last one, so any action gives z_agg.
        any_action = torch.randn(B, 1, 4)
        torch.testing.assert_close(reps["inv"], objective.aggregate(reps["equi"][:, None], any_action))
        torch.testing.assert_close(reps["equi_embedding"], reps["equi"])
        latents = random_latents(2, seed=8)
        action = objective.action_from_latents(*latents)
        torch.testing.assert_close(action, sequence_actions(latents)[:, 0])
        predicted = objective.predict_equivariant(reps["equi_embedding"], action)
        torch.testing.assert_close(predicted, objective.predict(reps["inv"], action))
        assert build(actions="rotation_colour").action_from_latents(*latents).shape == (B, 6)
        with pytest.raises(ValueError):
            build(actions="augment").action_from_latents(*latents)


def test_object_representations_aggregate_m_view_sequences_with_their_rotations():
    objective = build().eval()
    views = 5
    g = torch.Generator().manual_seed(9)
    x = torch.randn(views, 3, SIZE, SIZE, generator=g)
    latents = torch.stack([lat[0] for lat in random_latents(views, batch=1, seed=10)])  # (V, 7)
    with torch.no_grad():
        reps = objective.representations(x)
        out = objective.object_representations(reps, latents)
        start = int(torch.randint(views, (1,), generator=g))  # a view whose sequence wraps or not
        order = [(start + j) % views for j in range(M)]
        euler = latents[order, :3].double().numpy()
        quats = np.stack([scipy_relative_quat(euler[j], euler[j + 1]) for j in range(M - 1)])
        quats = np.where(quats[:, 3:] < 0, -quats, quats)
        actions = torch.cat([torch.from_numpy(quats).float(), torch.zeros(1, 4)])[None]  # (1, M, 4)
        expected = objective.aggregate(reps["equi"][order][None], actions)[0]
        torch.testing.assert_close(out["inv"][start], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["full"], torch.cat([out["inv"], reps["equi"]], 1))
        torch.testing.assert_close(out["equi"], reps["equi"])
        # the actions matter: a sequence with other rotations aggregates differently
        other = objective.aggregate(reps["equi"][order][None], actions.flip(1).roll(-1, 1))[0]
        assert (other - expected).abs().max() > 1e-4
        assert (out["inv"][start] - reps["inv"][start]).abs().max() > 1e-4  # not the one-view z_agg
        # augmentation actions cannot be read from latents: one-view sequences are kept
        augment = build(actions="augment").eval()
        kept = augment.representations(x)
        assert augment.object_representations(kept, latents) is kept


def test_configuration_errors():
    with pytest.raises(ValueError, match="divisible"):
        build(num_heads=5)
    with pytest.raises(ValueError):
        build(num_observed=0)
    with pytest.raises(ValueError):
        build(actions="augment", aug_action_params=("posterize",))
    views = object_views()
    with pytest.raises(ValueError, match="latents"):
        build()(Views(images=views.images, params=views.params))
    with pytest.raises(ValueError, match="views"):
        build()(Views(images=views.images[:M], params=views.params[:M], latents=views.latents[:M]))


def test_ema_options_per_epoch_and_time_constant():
    """cosine_per_epoch holds m through an epoch (the trainer gives the epoch's length); ema_time_constant
    replaces the base by 1 - 1 / (fraction * total); a per-epoch schedule without the length is refused."""
    per_epoch = build(ema_schedule="cosine_per_epoch")
    with pytest.raises(ValueError, match="epoch's length"):
        per_epoch.on_step_end(1, 100)
    per_epoch.set_steps_per_epoch(10)
    assert [per_epoch.momentum(k, 100) for k in (0, 9)] == [pytest.approx(0.996)] * 2
    assert per_epoch.momentum(10, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 10) + 1) / 2)

    fast = build(ema_time_constant=0.01)  # time constant 10 steps of 1000: base 0.9
    assert fast.momentum(0, 1000) == pytest.approx(0.9)
    with torch.no_grad():
        for p in fast.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in fast.target_backbone.parameters()]
    fast.on_step_end(1, 1000)
    for new, old, w in zip(fast.target_backbone.parameters(), before, fast.backbone.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * w)
    with pytest.raises(ValueError, match="ema_time_constant"):
        build(ema_time_constant=-1.0)


def test_predict_from_context_is_the_training_prediction():
    """The evaluation's M-view prediction, compared with the EMA target's encoding, gives the training
    loss exactly (eval mode: no dropout, BatchNorm from running statistics)."""
    objective = build().eval()
    with torch.no_grad():
        for p in objective.target_backbone.parameters():
            p.mul_(0.7).add_(0.05)
    views = object_views(seed=11)
    with torch.no_grad():
        loss = objective(views).loss
        context = torch.stack([objective.representations(x)["equi_embedding"] for x in views.images[:M]], 1)
        latents = torch.stack(views.latents[:M], dim=1)
        action = objective.action_from_latents(views.latents[M - 1], views.latents[M])
        predicted = objective.predict_from_context(context, latents, action)
        target = objective.representations(views.images[M])["target_embedding"]
        torch.testing.assert_close(target, objective.target_backbone(views.images[M]))
        recomputed = 1 - F.cosine_similarity(predicted, target, dim=1).mean()
    torch.testing.assert_close(recomputed, loss, atol=1e-5, rtol=1e-5)
    assert objective.prediction_context == M


def test_the_trainer_gives_the_objective_its_epoch_length(tiny_shapes3d_root, tmp_path):
    """cosine_per_epoch counts epochs in optimizer steps: batches per epoch / accumulation, set once."""
    from equissl.config import build_config
    from equissl.launch.trainer import Trainer
    from tests.conftest import TINY_DATA

    overrides = [
        f"data.root={tiny_shapes3d_root}",
        *TINY_DATA,
        "augment.crop_size=32",
        "backbone.stem=strided",
        "trainer.batch_size=4",
        "trainer.grad_accum_steps=2",
        "trainer.device=cpu",
        f"trainer.run_dir={tmp_path}/run",
    ]
    trainer = Trainer(build_config("seqjepa_resnet18_shapes3d", overrides))
    objective = trainer.accelerator.unwrap_model(trainer.model).objective
    assert len(trainer.dataset) == 20  # 10 classes x 2 training objects, one item per object
    assert objective.steps_per_epoch == pytest.approx(20 // 4 / 2)
    assert objective.momentum(0, 10) == objective.momentum(2, 10) < objective.momentum(3, 10)
