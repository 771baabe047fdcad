import random

import numpy as np
import pytest
import torch
from torch import nn

from equissl.launch import checkpoint as ckpt


def _write(run_dir, step, keep=2, generators=None):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    tmp = ckpt.temp_dir(run_dir, step)
    ckpt.write_shared(
        tmp, model.state_dict(), optimizer, scheduler, None, ckpt.TrainerState(step=step), "name: x\n"
    )
    ckpt.write_rank_rng(tmp, 0, generators or {})
    return model, ckpt.finalize(run_dir, step, keep)


def test_round_trip_of_weights_state_and_rng(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.rand(3, generator=generator)
    model, path = _write(tmp_path, 7, generators={"augment": generator})
    state = ckpt.load_model_state(path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert ckpt.load_trainer_state(path).step == 7
    expected = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    restored = torch.Generator()
    ckpt.set_rng_state(ckpt.load_rank_rng(path, 0), {"augment": restored})
    again = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=restored))
    assert expected[0] == again[0] and expected[1] == again[1]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


def test_newest_complete_is_used_and_torn_one_skipped(tmp_path):
    _write(tmp_path, 10)
    _write(tmp_path, 20)
    torn = ckpt.checkpoint_root(tmp_path) / "step-00000030"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="torn"):
        assert ckpt.latest_checkpoint(tmp_path).name == "step-00000020"


def test_keeps_only_the_last_k(tmp_path):
    for step in (1, 2, 3, 4):
        _write(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]


def test_no_checkpoint_gives_none(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
