"""gather_with_grad and the global-batch losses in a real 2-process gloo group.

2 processes x B/2 samples must give the loss and gradients of 1 process x B samples: the mean over
ranks of the per-rank losses equals the single-process loss, parameter gradients averaged over ranks
(what DDP does) equal the single-process ones, and the input gradient on each rank is world_size
times the single-process one (the summing backward, before DDP's division; see
equissl/distributed.py). Every case runs with both backward collectives of the gather: the all-reduce
(gloo's path) and the reduce-scatter (NCCL's path, forced here in the gloo group).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from equissl.distributed import force_gather_backward, gather_with_grad, is_distributed, rank, world_size
from equissl.launch.launcher import free_port
from equissl.ssl.losses import barlow_twins_loss, dino_loss, momentum_infonce, nt_xent, vicreg_loss

WORLD = 2
COLLECTIVES = ("all_reduce", "reduce_scatter")
BATCH, IN_DIM, OUT_DIM = 8, 6, 5


def _nt_xent(z_a, z_b):
    return nt_xent(z_a, z_b, temperature=0.3)


def _nt_xent_cross_view(z_a, z_b):
    return nt_xent(z_a, z_b, temperature=0.3, same_view_negatives=False)


def _vicreg(z_a, z_b):
    return vicreg_loss(z_a, z_b)[0]


def _vicreg_averaged(z_a, z_b):
    return vicreg_loss(z_a, z_b, sim=2.0, var=3.0, cov=0.7, average_branches=True)[0]


def _barlow(z_a, z_b):
    return barlow_twins_loss(z_a, z_b, lambda_offdiag=0.3)[0]


def _barlow_batchnorm(z_a, z_b):
    return barlow_twins_loss(z_a, z_b, lambda_offdiag=0.3, standardisation="batchnorm")[0]


def _mocov3(z_a, z_b):  # queries with gradient against the other view's keys (constants), both ways
    return momentum_infonce(z_a, z_b, 0.3) + momentum_infonce(z_b, z_a, 0.3)


def _dino(z_a, z_b):  # student on both views, teacher (no gradient) on both
    center = torch.linspace(-0.5, 0.5, z_a.shape[1])
    return dino_loss([z_a, z_b], [z_b.detach(), z_a.detach()], center, 0.1, 0.04)


CASES = {
    "nt_xent": _nt_xent,
    "nt_xent_cross_view": _nt_xent_cross_view,
    "vicreg": _vicreg,
    "vicreg_averaged": _vicreg_averaged,
    "barlow_twins": _barlow,
    "barlow_twins_batchnorm": _barlow_batchnorm,
    "mocov3": _mocov3,
    "dino": _dino,
}


def _problem():
    """The global batch and a linear 'model', identical on every process."""
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(BATCH, IN_DIM, generator=g)
    x_b = x_a + 0.3 * torch.randn(BATCH, IN_DIM, generator=g)
    weight = torch.randn(IN_DIM, OUT_DIM, generator=g)
    return x_a, x_b, weight


def _loss_and_grads(loss_fn, x_a, x_b, weight):
    x_a, x_b, weight = (t.clone().requires_grad_(True) for t in (x_a, x_b, weight))
    loss = loss_fn(x_a @ weight, x_b @ weight)
    loss.backward()
    return loss.detach(), x_a.grad, x_b.grad, weight.grad


def _all_gather(t):
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _gather_and_losses(process: int) -> dict:
    results = {}
    # gather_with_grad itself: forward is the rank-ordered concatenation; backward sums over the
    # ranks' losses (rank q weighs the gathered rows with (q + 1) * coefficients).
    x = torch.full((2, 3), float(process + 1), requires_grad=True)
    gathered = gather_with_grad(x)
    coefficients = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered)
    (gathered * coefficients * (process + 1)).sum().backward()
    results["gathered"] = gathered.detach()
    results["gather_grad"] = _all_gather(x.grad)

    x_a, x_b, weight = _problem()
    n = BATCH // WORLD
    rows = slice(process * n, (process + 1) * n)
    for name, loss_fn in CASES.items():
        loss, grad_a, grad_b, grad_w = _loss_and_grads(loss_fn, x_a[rows], x_b[rows], weight)
        dist.all_reduce(loss)
        dist.all_reduce(grad_w)  # DDP: average of the parameter gradients
        results[name] = {
            "loss": loss / WORLD,
            "grad_w": grad_w / WORLD,
            "grad_a": _all_gather(grad_a),
            "grad_b": _all_gather(grad_b),
        }
    return results


def _worker(process, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=process,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = {"rank": rank(), "world_size": world_size(), "is_distributed": is_distributed()}
        for collective in COLLECTIVES:
            with force_gather_backward(collective):
                results[collective] = _gather_and_losses(process)
        if process == 0:
            torch.save(results, Path(out_dir) / "results.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(module_tmp_path):
    out_dir = module_tmp_path
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return torch.load(out_dir / "results.pt", weights_only=True)


def test_helpers_without_process_group():
    assert not dist.is_initialized()
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x
    assert (world_size(), rank(), is_distributed()) == (1, 0, False)


@pytest.mark.parametrize("collective", COLLECTIVES)
def test_gather_with_grad_forward_and_summed_backward(distributed_results, collective):
    assert (distributed_results["rank"], distributed_results["world_size"]) == (0, WORLD)
    assert distributed_results["is_distributed"]
    r = distributed_results[collective]
    expected = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    assert torch.equal(r["gathered"], expected)
    coefficients = torch.arange(12, dtype=torch.float32).view(4, 3)
    summed_weight = sum(q + 1 for q in range(WORLD))  # every rank's loss reaches every slice
    assert torch.allclose(r["gather_grad"], coefficients * summed_weight)


@pytest.mark.parametrize("collective", COLLECTIVES)
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process(distributed_results, name, collective):
    got = distributed_results[collective][name]
    loss, grad_a, grad_b, grad_w = _loss_and_grads(CASES[name], *_problem())
    assert torch.allclose(got["loss"], loss, atol=1e-5, rtol=0)
    assert torch.allclose(got["grad_w"], grad_w, atol=1e-5, rtol=0)
    assert torch.allclose(got["grad_a"] / WORLD, grad_a, atol=1e-5, rtol=0)
    assert torch.allclose(got["grad_b"] / WORLD, grad_b, atol=1e-5, rtol=0)
    assert grad_w.abs().max() > 1e-3  # the comparison is not between zeros


def test_the_backward_collective_can_only_be_forced_to_a_known_one():
    with pytest.raises(ValueError, match="all_reduce"), force_gather_backward("all_gather"):
        pass
