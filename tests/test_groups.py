import math

import pytest
import torch

from equissl.augmentations.image import chunk_index
from equissl.augmentations.rotation import RandomFourFoldRotation
from equissl.groups import Group, rotate_by_index, rotate_four_ways


def test_rotate_four_ways_labels_match_rot90_and_undo():
    x = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    rotated, labels = rotate_four_ways(x)
    assert rotated.shape == (20, 3, 6, 6) and labels.dtype == torch.int64
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for row in range(20):
        k = int(labels[row])
        original = x[row % 5]
        assert torch.equal(rotated[row], torch.rot90(original, k, dims=(1, 2)))
        assert torch.equal(torch.rot90(rotated[row], -k, dims=(1, 2)), original)
    assert not torch.equal(rotated[5:10], x)  # the rotations are not the identity


def test_label_one_is_counter_clockwise_as_displayed():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 2] = 1.0  # top-right corner (row 0 is the top of the displayed image)
    rotated, _ = rotate_four_ways(x)
    assert rotated[1, 0, 0, 0] == 1.0  # quarter turn counter-clockwise: top-right -> top-left
    assert rotated[2, 0, 2, 0] == 1.0  # half turn: -> bottom-left
    assert rotated[3, 0, 2, 2] == 1.0  # three quarters: -> bottom-right


def test_random_rotation_params_describe_the_output():
    x = torch.rand(64, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    out, params = RandomFourFoldRotation()(x, torch.Generator().manual_seed(0))
    index = params["rotation_index"]
    assert index.shape == (64,) and index.dtype == torch.int64
    assert set(index.tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(params["angle"], index.float() * math.pi / 2)
    for b in range(64):
        assert torch.equal(out[b], torch.rot90(x[b], int(index[b]), dims=(1, 2)))
    assert torch.equal(rotate_by_index(out, -index), x)


def test_random_rotation_is_seeded():
    x = torch.rand(32, 1, 4, 4)
    rot = RandomFourFoldRotation()
    first = rot(x, torch.Generator().manual_seed(3))[1]["rotation_index"]
    same = rot(x, torch.Generator().manual_seed(3))[1]["rotation_index"]
    other = rot(x, torch.Generator().manual_seed(4))[1]["rotation_index"]
    assert torch.equal(first, same) and not torch.equal(first, other)


def test_random_rotation_shared_chunks():
    x = torch.rand(40, 1, 4, 4)
    index = RandomFourFoldRotation()(x, torch.Generator().manual_seed(0), shared_chunks=4)[1][
        "rotation_index"
    ]
    chunks = chunk_index(40, 4)
    for chunk in range(4):
        assert index[chunks == chunk].unique().numel() == 1
    seeds = [
        RandomFourFoldRotation()(x, torch.Generator().manual_seed(s), shared_chunks=4)[1]["rotation_index"]
        for s in range(5)
    ]
    assert any(s[chunks == 0][0] != s[chunks == 3][0] for s in seeds)  # chunks draw independently


def test_rotation_needs_square_images():
    with pytest.raises(ValueError):
        rotate_four_ways(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError):
        RandomFourFoldRotation()(torch.zeros(2, 3, 4, 5), torch.Generator())


def test_quarter_turn_is_rot90_and_exports_to_onnx(tmp_path):
    from equissl.groups import quarter_turn

    x = torch.randn(2, 3, 5, 5)
    for k in range(-5, 6):
        assert torch.equal(quarter_turn(x, k), torch.rot90(x, k, dims=(-2, -1)))
    onnx = pytest.importorskip("onnx")

    class Turn(torch.nn.Module):
        def forward(self, images):
            return Group("D", 4).transform_image(images, 5)  # a mirror, then a quarter turn

    torch.onnx.export(Turn(), (x,), str(tmp_path / "t.onnx"), opset_version=17, dynamo=False)
    assert onnx.load(str(tmp_path / "t.onnx")).graph.node  # rot90 itself has no ONNX export
