"""Equivariance metrics on hand-computed cases (R^2 with q vs -q, MRR / Hits@k, PRE), view pairs, and
``evaluate_equivariance`` end to end on a two-step SIE run over a tiny 3DIEBench-format tree."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from equissl.eval import rotation_metrics as rm
from equissl.latents import absolute_quat, relative_action
from equissl.ssl.base import EquivariantObjective


def unit_quats(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(Rotation.random(n, random_state=seed).as_quat())


# ----------------------------------------------------------------------------------------------------
# R^2


def test_r2_hand_computed_three_averages():
    pred, target = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [2.0], [4.0]])
    # mean 7/3; SS_tot = 16/9 + 1/9 + 25/9 = 42/9; SS_res = 1
    for average in rm.R2_AVERAGES:
        assert rm.r2_score(pred, target, average) == pytest.approx(1 - 9 / 42)
    pred2 = torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, 14.0]])
    target2 = torch.tensor([[1.0, 10.0], [2.0, 12.0], [4.0, 14.0]])
    # column 0 as above; column 1: mean 12, SS_tot 8, SS_res 4
    assert rm.r2_score(pred2, target2, "uniform") == pytest.approx((1 - 9 / 42 + 0.5) / 2)
    assert rm.r2_score(pred2, target2) == pytest.approx(1 - 5 / (42 / 9 + 8))  # variance-weighted default
    # one mean over all entries (SIE's r2_score): mean 43/6
    total = ((target2 - 43 / 6) ** 2).sum()
    assert rm.r2_score(pred2, target2, "sie") == pytest.approx(float(1 - 5 / total))
    # predicting each column's mean: 0 per column, but SIE's single mean rewards it
    means = target2.mean(0).expand(3, 2)
    assert rm.r2_score(means, target2, "uniform") == pytest.approx(0.0)
    assert rm.r2_score(means, target2) == pytest.approx(0.0)
    assert rm.r2_score(means, target2, "sie") > 0.5
    with pytest.raises(ValueError, match="average"):
        rm.r2_score(pred2, target2, "macro")


def test_quaternion_r2_is_blind_to_the_sign_of_q():
    q = rm.canonical_quat(unit_quats(50, 0))
    assert rm.quat_r2_score(q, q) == pytest.approx(1.0)
    assert rm.quat_r2_score(-q, q) == pytest.approx(1.0)  # -q is the same rotation
    assert rm.r2_score(-q, q) < -1  # a sign-blind-less R^2 calls it worse than the mean
    flips = torch.where(
        torch.rand(50, 1, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0
    ).double()
    assert rm.quat_r2_score(flips * q, -flips * q) == pytest.approx(1.0)
    # a noisy prediction: residual to the nearer sign, total sum of squares of the canonical targets
    noisy = -(q + 0.1 * torch.randn(50, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    residual, total = ((noisy + q) ** 2).sum(0), ((q - q.mean(0)) ** 2).sum(0)
    assert rm.quat_r2_score(noisy, q) == pytest.approx(float(1 - residual.sum() / total.sum()))
    assert rm.quat_r2_score(noisy, q, "uniform") == pytest.approx(float((1 - residual / total).mean()))
    expected = 1 - ((noisy + q) ** 2).sum() / ((q - q.mean()) ** 2).sum()
    assert rm.quat_r2_score(noisy, q, "sie") == pytest.approx(float(expected))
    assert float(rm.sign_invariant_quat_mse(-q, q)) == 0.0


def test_every_constant_minimising_the_sign_blind_loss_scores_zero_variance_weighted():
    """For uniform rotations the sign-blind loss has the same minimum along any component k (a constant of
    length E|q_k|); the default R^2 scores each ~0, the uniform average calls the x-pointing one a failure."""
    q = rm.canonical_quat(unit_quats(20000, 4))
    along_w = torch.zeros(4, dtype=torch.float64)
    along_w[3] = q[:, 3].abs().mean()
    along_x = torch.zeros(4, dtype=torch.float64)
    along_x[0] = q[:, 0].abs().mean()
    losses = [float(rm.sign_invariant_quat_mse(c.expand_as(q), q)) for c in (along_w, along_x)]
    assert losses[0] == pytest.approx(losses[1], rel=0.02)
    for constant in (along_w, along_x):
        assert abs(rm.quat_r2_score(constant.expand_as(q), q)) < 0.02
    assert rm.quat_r2_score(along_x.expand_as(q), q, "uniform") < -0.3


def test_relative_quat_targets_and_absolute_quats_match_scipy():
    g = torch.Generator().manual_seed(3)
    l1, l2 = (
        (torch.rand(20, 7, generator=g, dtype=torch.float64) - 0.5) * 3,
        (torch.rand(20, 7, generator=g, dtype=torch.float64) - 0.5) * 3,
    )
    r1, r2 = Rotation.from_euler("xyz", l1[:, :3].numpy()), Rotation.from_euler("xyz", l2[:, :3].numpy())
    dots = (relative_action(l1, l2).double() * torch.from_numpy((r1.inv() * r2).as_quat())).sum(1)
    assert torch.allclose(dots.abs(), torch.ones(20, dtype=torch.float64), atol=1e-5)
    dots = (absolute_quat(l1).double() * torch.from_numpy(r1.as_quat())).sum(1)
    assert torch.allclose(dots.abs(), torch.ones(20, dtype=torch.float64), atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Retrieval: MRR / Hits@k and PRE


def test_mrr_and_hits_on_a_constructed_retrieval():
    e = torch.eye(3)
    candidates = torch.cat([e, e])  # rows 0-2: object 0; rows 3-5: object 1
    objects = torch.tensor([0, 0, 0, 1, 1, 1])
    predicted = torch.stack(
        [
            e[0],  # object 0, true row 0: rank 1
            0.9 * e[0] + 0.5 * e[1],  # object 0, true row 1 (e1): e0 is closer -> rank 2
            3 * e[0] + 2 * e[1] + e[2],  # object 1, true row 5 (e2): rank 3 among object 1's views only
            e[1],  # object 1, true row 4: rank 1
        ]
    )
    ranks = rm.target_ranks(
        predicted, candidates, objects, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 5, 4])
    )
    assert ranks.tolist() == [1, 2, 3, 1]
    scores = rm.mrr_hits_at_k(ranks, (1, 2, 5))
    assert scores["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)
    assert (scores["H@1"], scores["H@2"], scores["H@5"]) == (0.5, 0.75, 1.0)
    with pytest.raises(ValueError, match="no candidates"):
        rm.target_ranks(
            predicted, candidates, objects, torch.tensor([0, 0, 1, 7]), torch.tensor([0, 1, 5, 4])
        )
    with pytest.raises(ValueError, match="not among its object's candidates"):
        rm.target_ranks(
            predicted, candidates, objects, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 5, 0])
        )


def test_prediction_retrieval_error_hand_computed():
    identity = [0.0, 0.0, 0.0, 1.0]
    z90 = [0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)]
    x180 = [1.0, 0.0, 0.0, 0.0]
    candidates = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    candidate_quats = torch.tensor([identity, z90, x180])
    predicted = torch.tensor([[2.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.1, 5.0, 0.0]])  # -> rows 0, 2, 1
    true_quats = torch.tensor([identity, z90, [-v for v in z90]])
    # errors: 1 - 1 = 0; 1 - <z90, x180>^2 = 1; 1 - <-z90, z90>^2 = 0 (q ~ -q)
    assert rm.prediction_retrieval_error(predicted, candidates, candidate_quats, true_quats) == pytest.approx(
        1 / 3
    )
    assert rm.nearest_neighbours(predicted, candidates).tolist() == [0, 2, 1]
    # cosine vs dot product retrieval (SIE's --no-norm)
    keys = torch.tensor([[1.0, 0.0], [10.0, 10.0]])
    assert rm.nearest_neighbours(torch.tensor([[1.0, 0.1]]), keys).tolist() == [0]
    assert rm.nearest_neighbours(torch.tensor([[1.0, 0.1]]), keys, normalize=False).tolist() == [1]
    # blocks: the same answer with tiny chunks
    many = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(7, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rm.nearest_neighbours(queries, many, chunk=2), rm.nearest_neighbours(queries, many))


# ----------------------------------------------------------------------------------------------------
# Pairs and queries


def test_view_pairs_are_distinct_views_of_one_object():
    objects = torch.tensor([3, 3, 3, 1, 1, 7, 5, 5, 5, 5])  # object 7 has one view: no pair
    first, second = rm.sample_view_pairs(objects, 200, torch.Generator().manual_seed(0))
    assert len(first) == 3 * 200
    assert (first != second).all() and torch.equal(objects[first], objects[second])
    assert set(objects[first].tolist()) == {1, 3, 5}
    pairs = {(int(a), int(b)) for a, b in zip(first, second) if objects[a] == 5}
    assert len(pairs) == 12  # every ordered pair of object 5's four views is drawn


def test_predictor_queries_start_from_each_objects_first_view():
    objects = torch.tensor([2, 2, 0, 0, 0])
    source, target = rm.predictor_queries(objects)
    assert sorted(zip(source.tolist(), target.tolist())) == [(0, 0), (0, 1), (2, 2), (2, 3), (2, 4)]


def test_pair_regression_learns_from_informative_features_only():
    g = torch.Generator().manual_seed(0)
    n_objects, views = 60, 4
    latents = torch.rand(n_objects * views, 7, generator=g)
    objects = torch.arange(n_objects).repeat_interleave(views)
    informative = torch.cat([latents, torch.randn(len(latents), 3, generator=g)], dim=1)
    noise = torch.randn(len(latents), 10, generator=g)
    protocol = rm.RegressionProtocol(
        epochs=30, batch_size=64, lr=3e-3, hidden_dims=(32,), pairs_per_object=8, val_pairs_per_object=4
    )
    half = n_objects // 2 * views

    def data(features, rows):
        return rm.PairData(features[rows], objects[rows], latents[rows])

    train, val = slice(0, half), slice(half, None)
    good = rm.colour_prediction_r2(data(informative, train), data(informative, val), protocol)
    bad = rm.colour_prediction_r2(data(noise, train), data(noise, val), protocol)
    assert good["r2"] > 0.8 and bad["r2"] < 0.2 and good["val_pairs"] == 30 * 4
    rotation = rm.rotation_prediction_r2(data(noise, train), data(noise, val), protocol)
    assert rotation["r2"] < 0.2


# ----------------------------------------------------------------------------------------------------
# End to end: a two-step SIE run, then evaluate_equivariance


@pytest.fixture
def tiny_3diebench(tmp_path):
    """4 train and 2 val objects of 3 views (16 px), two classes, random rotations and colours."""
    return write_tiny_3diebench(tmp_path / "3DIEBench")


def write_tiny_3diebench(root, fixed_lighting: bool = False):
    """The ``tiny_3diebench`` files; ``fixed_lighting``: every view's lighting latents are equal."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for obj in range(6):
        synset, name = f"0{obj % 2}000000", f"{obj:032x}"
        folder = root / synset / name
        folder.mkdir(parents=True)
        for view in range(3):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"image_{view}.jpg", quality=95)
            latent = np.concatenate([rng.uniform(-np.pi / 2, np.pi / 2, 3), rng.uniform(0, 1, 4)])
            if fixed_lighting:
                latent[3:] = (0.5, np.pi / 8, np.pi, 0.5)
            np.save(folder / f"latent_{view}.npy", latent)
        paths.append(f"/{synset}/{name}")
        labels.append(obj % 2)
    for split, rows in (("train", slice(0, 4)), ("val", slice(4, 6))):
        np.save(root / f"{split}_images.npy", np.array(paths[rows]))
        np.save(root / f"{split}_labels.npy", np.array(labels[rows]))
    return root


def test_evaluate_equivariance_end_to_end(tiny_3diebench, tmp_path):
    from equissl.config import build_config, parse_settings
    from equissl.eval.equivariance_report import (
        EquivarianceEvalConfig,
        evaluate_equivariance,
        format_equivariance,
    )
    from equissl.launch.trainer import pretrain

    run_dir = tmp_path / "run"
    config = build_config(
        overrides=[
            "data.name=3diebench",
            f"data.root={tiny_3diebench}",
            "data.views_per_object=3",
            "data.image_size=16",
            "data.num_workers=0",
            "augment.crop_size=16",
            "backbone.stem=strided",
            "objective.name=sie",
            "objective.equi_dim=64",
            "objective.inv_proj_dims=[16]",
            "objective.equi_proj_dims=[16]",
            "trainer.max_steps=2",
            "trainer.batch_size=4",
            "trainer.checkpoint_every=2",
            "trainer.progress=false",
            f"trainer.run_dir={run_dir}",
            "trainer.device=cpu",
        ]
    )
    pretrain(config)
    settings = parse_settings(
        EquivarianceEvalConfig,
        [
            "regression.epochs=2",
            "regression.hidden_dims=[8]",
            "probe.epochs=2",
            "probe.weight_decays=[0.0]",
            "num_workers=0",
        ],
    )
    report = evaluate_equivariance(run_dir, settings=settings, device="cpu")
    results = report["results"]
    assert report["views"] == {"train": 12, "val": 6} and report["step"] == 2
    assert results["parts"] == ["inv", "equi", "full"]
    for metric in ("classification_top1", "rotation_r2", "colour_r2"):
        assert set(results[metric]) == {"inv", "equi", "full"}
    assert all(math.isfinite(results["rotation_r2"][part]["r2"]) for part in results["parts"])
    prediction = results["prediction"]
    assert prediction["train"]["queries"] == 12 and prediction["val"]["queries"] == 6
    assert 0 <= prediction["val"]["PRE"] <= 1 and 1 / 3 <= prediction["val"]["MRR"] <= 1
    assert prediction["val"]["H@5"] == 1.0  # only 3 views per object
    saved = json.loads((run_dir / "eval" / "equivariance.json").read_text())
    assert saved["results"]["prediction"]["val"]["MRR"] == prediction["val"]["MRR"]
    table = format_equivariance(report)
    assert "rot R2" in table and "MRR" in table and "equi" in table


def test_equivariance_cli_prints_the_table_and_refuses_bad_settings(tiny_3diebench, tmp_path, capsys):
    from equissl.cli import main
    from equissl.config import build_config
    from equissl.launch.trainer import pretrain

    run_dir = tmp_path / "run"
    pretrain(
        build_config(
            overrides=[
                "data.name=3diebench",
                f"data.root={tiny_3diebench}",
                "data.views_per_object=3",
                "data.image_size=16",
                "data.num_workers=0",
                "augment.crop_size=16",
                "backbone.stem=strided",
                "objective.name=sie",
                "objective.equi_dim=64",
                "objective.inv_proj_dims=[16]",
                "objective.equi_proj_dims=[16]",
                "trainer.max_steps=2",
                "trainer.batch_size=4",
                "trainer.progress=false",
                f"trainer.run_dir={run_dir}",
            ]
        )
    )
    quick = ["regression.epochs=2", "regression.hidden_dims=[8]", "probe.epochs=2", "num_workers=0"]
    out = tmp_path / "figures.json"
    assert main(["equivariance", "--run", str(run_dir), "--out", str(out), *quick]) == 0
    printed = capsys.readouterr().out
    assert "rot R2" in printed and "MRR" in printed
    assert json.loads(out.read_text())["step"] == 2
    assert main(["equivariance", "--run", str(run_dir), "regression.epoch=2"]) == 2
    assert "regression.epoch" in capsys.readouterr().err


def test_objectives_without_a_split_report_full_only_and_no_predictor():
    from torch import nn

    from equissl.eval.equivariance_report import format_equivariance
    from equissl.ssl.base import EquivariantObjective, Objective

    class Plain(Objective):  # e.g. SimCLR / CARE: a backbone, the default representations(), no predictor
        def __init__(self):
            super().__init__(nn.Flatten())

    images = torch.randn(2, 3, 2, 2)
    reps = Plain().representations(images)
    assert list(reps) == ["full"] and reps["full"].shape == (2, 12)
    assert not isinstance(Plain(), EquivariantObjective)
    report = {
        "objective": "simclr",
        "backbone": "resnet18",
        "dataset": "shapes3d",
        "step": 5,
        "run": "r",
        "seconds": 1.0,
        "results": {
            "classification_top1": {"full": 50.0},
            "rotation_r2": {"full": {"r2": 0.25}},
            "colour_r2": {"full": {"r2": 0.5}},
            "prediction": None,
        },
    }
    table = format_equivariance(report)
    assert "full       50.0    0.250" in table and "inv           -        -" in table
    assert "predictor: none" in table


def test_extraction_hands_each_objects_views_to_object_representations(tiny_3diebench):
    from torch import nn

    from equissl.config import build_config
    from equissl.eval.equivariance_report import EquivarianceEvalConfig, extract_split
    from equissl.ssl.base import EquivariantObjective

    class ObjectMean(
        EquivariantObjective
    ):  # inv of a view = mean of its object's views (a sequence-level rep)
        def __init__(self):
            super().__init__(nn.Flatten())
            self.calls = []

        def representations(self, images):
            flat = self.backbone(images)
            return {"inv": flat, "equi": flat, "full": flat}

        def object_representations(self, reps, latents):
            self.calls.append(len(latents))
            mean = reps["equi"].mean(0, keepdim=True).expand_as(reps["equi"])
            return {**reps, "inv": mean}

    config = build_config(
        overrides=[
            "data.name=3diebench",
            f"data.root={tiny_3diebench}",
            "data.views_per_object=3",
            "data.image_size=16",
            "data.num_workers=0",
            "augment.crop_size=16",
        ]
    )
    objective = ObjectMean()
    data = extract_split(objective, config, "train", EquivarianceEvalConfig(batch_size=6, num_workers=0))
    assert objective.calls == [3, 3, 3, 3]  # 4 objects of 3 views, 2 objects a batch
    for obj in range(4):
        rows = data["objects"] == obj
        torch.testing.assert_close(data["inv"][rows], data["equi"][rows].mean(0).expand(3, -1))
    assert not torch.allclose(data["inv"], data["equi"])


class _RotatingPredictor(EquivariantObjective):
    """Embedding of a view = its flattened rotation matrix; the predictor right-multiplies it by the action
    (the relative rotation ``R_src^-1 R_tgt``), exactly -- or ignores the action when ``uses_action`` is off."""

    def __init__(self, uses_action: bool) -> None:
        super().__init__(torch.nn.Identity())
        self.uses_action = uses_action

    @staticmethod
    def matrices(latents):
        return torch.from_numpy(Rotation.from_euler("xyz", latents[:, :3].double().numpy()).as_matrix())

    def action_from_latents(self, latents_1, latents_2):
        return (self.matrices(latents_1).transpose(1, 2) @ self.matrices(latents_2)).reshape(-1, 9)

    def predict_equivariant(self, embedding, action):
        if not self.uses_action:
            return embedding
        return (embedding.reshape(-1, 3, 3).double() @ action.reshape(-1, 3, 3)).reshape(-1, 9)


def test_mrr_with_shuffled_actions_tells_a_predictor_that_uses_its_action_from_one_that_does_not():
    from equissl.eval.equivariance_report import EquivarianceEvalConfig, predictor_metrics

    generator = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    objects = torch.arange(6).repeat_interleave(8)  # 6 objects x 8 views, random poses
    latents = torch.cat([(torch.rand(48, 3, generator=generator) - 0.5) * math.pi, torch.rand(48, 4)], dim=1)
    data = {
        "objects": objects,
        "latents": latents,
        "equi_embedding": _RotatingPredictor.matrices(latents).reshape(-1, 9).float(),
    }
    settings = EquivarianceEvalConfig()
    exact = predictor_metrics(_RotatingPredictor(uses_action=True), data, settings)
    assert exact["MRR"] == pytest.approx(1.0) and exact["PRE"] == pytest.approx(0.0, abs=1e-6)
    assert exact["MRR_shuffled"] < 0.7  # another view's rotation lands on the wrong view
    blind = predictor_metrics(_RotatingPredictor(uses_action=False), data, settings)
    assert blind["MRR"] == pytest.approx(blind["MRR_shuffled"])  # the source view itself, whatever the action
    assert blind["queries"] == exact["queries"] == 48


def test_context_predictor_metrics_with_a_perfect_predictor_and_an_action_blind_one():
    """M-view queries against target embeddings: a predictor that composes the last context view's pose
    with the action retrieves every target (MRR 1, PRE 0) and loses it with shuffled actions; one that
    ignores its action scores MRR == MRR_shuffled. Contexts are each object's first M views."""
    from torch import nn

    from equissl.errors import UserError
    from equissl.eval.equivariance_report import EquivarianceEvalConfig, context_predictor_metrics
    from equissl.rotations import euler_xyz_to_matrix, quat_to_matrix
    from equissl.ssl.base import EquivariantObjective

    class PoseOracle(EquivariantObjective):
        prediction_context = 3

        def __init__(self, blind: bool = False):
            super().__init__(nn.Identity())
            self.blind, self.context_shapes = blind, []

        def action_from_latents(self, latents_1, latents_2):
            return relative_action(latents_1, latents_2)

        def predict_from_context(self, equi_embeddings, latents, action):
            self.context_shapes.append(tuple(equi_embeddings.shape))
            last = euler_xyz_to_matrix(latents[:, -1, :3].double())
            moved = last if self.blind else last @ quat_to_matrix(action.double())
            return moved.flatten(1).float()

    g = torch.Generator().manual_seed(3)
    objects, views = 6, 8
    latents = torch.cat(
        [(torch.rand(objects * views, 3, generator=g) - 0.5) * math.pi, torch.rand(48, 4, generator=g)], 1
    )
    poses = euler_xyz_to_matrix(latents[:, :3].double()).flatten(1).float()  # (N, 9): one per pose
    data = {
        "objects": torch.arange(objects).repeat_interleave(views),
        "latents": latents,
        "equi_embedding": torch.randn(objects * views, 5, generator=g),
        "target_embedding": poses,
    }
    settings = EquivarianceEvalConfig()
    oracle = PoseOracle()
    scores = context_predictor_metrics(oracle, data, settings)
    assert scores["queries"] == objects * views and scores["context_views"] == 3
    assert scores["MRR"] == pytest.approx(1.0) and scores["PRE"] == pytest.approx(0.0, abs=1e-9)
    assert scores["MRR_shuffled"] < 0.6 and oracle.context_shapes[0][1:] == (3, 5)
    blind = context_predictor_metrics(PoseOracle(blind=True), data, settings)
    assert blind["MRR"] == pytest.approx(blind["MRR_shuffled"]) and blind["MRR"] < 0.6
    with pytest.raises(UserError):
        context_predictor_metrics(PoseOracle(), {**data, "objects": torch.arange(48)}, settings)


def test_seqjepa_report_adds_the_predictor_as_trained_and_skips_constant_colours(tmp_path):
    """seq-JEPA's report: the one-view figures against online encodings and the M-view figures against
    the EMA target's (``prediction_target``); on a render whose lighting never changes, colour R^2 is
    skipped with its reason instead of dividing by a zero variance."""
    from equissl.config import build_config, parse_settings
    from equissl.eval.equivariance_report import (
        EquivarianceEvalConfig,
        evaluate_equivariance,
        format_equivariance,
    )
    from equissl.launch.trainer import pretrain

    root = write_tiny_3diebench(tmp_path / "3DIEBench", fixed_lighting=True)
    run_dir = tmp_path / "run"
    overrides = [
        "data.name=3diebench",
        f"data.root={root}",
        "data.views_per_object=3",
        "data.image_size=16",
        "data.num_workers=0",
        "augment.crop_size=16",
        "augment.object_views=none",
        "backbone.stem=strided",
        "objective.name=seqjepa",
        "objective.num_observed=2",
        "objective.predictor_hidden_dim=16",
        "trainer.max_steps=2",
        "trainer.batch_size=4",
        "trainer.progress=false",
        f"trainer.run_dir={run_dir}",
        "trainer.device=cpu",
    ]
    pretrain(build_config(overrides=overrides))
    quick = ["regression.epochs=2", "regression.hidden_dims=[8]", "probe.epochs=2", "num_workers=0"]
    report = evaluate_equivariance(
        run_dir, settings=parse_settings(EquivarianceEvalConfig, quick), device="cpu"
    )
    results = report["results"]
    assert results["colour_r2"]["equi"] == {"r2": None, "skipped": "the colour latents are constant"}
    online, trained = results["prediction"], results["prediction_target"]
    assert online["val"]["queries"] == 6 and trained["val"]["queries"] == 6
    assert trained["val"]["context_views"] == 2 and 1 / 3 <= trained["val"]["MRR"] <= 1
    table = format_equivariance(report)
    assert "2 views -> target encodings" in table and "one view -> online encodings" in table


def test_sie_r2_of_a_constant_predictor_is_the_published_floor():
    """SIE's / EquiCaps' r2_score (one mean over all entries) on their targets, scipy's as_quat() of
    R1^-1 R2 for 3DIEBench's poses: predicting each component's mean scores 0.229 (the documented floor),
    0.244 on canonical targets, and 0 with our variance-weighted average."""
    rng = np.random.default_rng(0)
    first, second = (rng.uniform(-np.pi / 2, np.pi / 2, (40000, 3)) for _ in range(2))
    quats = (Rotation.from_euler("xyz", first).inv() * Rotation.from_euler("xyz", second)).as_quat()
    targets = torch.from_numpy(quats)
    constant = targets.mean(0, keepdim=True).expand_as(targets)
    assert rm.r2_score(constant, targets, "sie") == pytest.approx(0.229, abs=0.005)
    assert rm.r2_score(constant, targets, "variance_weighted") == pytest.approx(0.0, abs=1e-9)
    canonical = torch.where(targets[:, 3:] < 0, -targets, targets)
    assert rm.r2_score(
        canonical.mean(0, keepdim=True).expand_as(canonical), canonical, "sie"
    ) == pytest.approx(0.244, abs=0.005)
