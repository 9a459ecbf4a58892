"""Checks that need a real 2-process gloo group. tests/test_distributed.py runs them in the ranks of its
BYOL launch, before the script (`DDP_CHECKS=1`, see tests/write_spy.py); alone:

    torchrun --standalone --nproc_per_node 2 tests/ddp_checks.py

Each rank prints `rank R ok` when every check passed (an assertion error fails the launch).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw1.errors import UserError  # noqa: E402
from hw1.p1.byol import GlobalBatchNorm1d, build_byol  # noqa: E402
from hw1.train import distributed, stopping  # noqa: E402


def check_global_batchnorm(rank: int, world: int) -> None:
    """GlobalBatchNorm1d on each rank's share == nn.BatchNorm1d on the whole batch: outputs, input
    gradients, the (summed) weight/bias gradients and the running statistics."""
    torch.manual_seed(0)
    x_all = torch.randn(8, 5) * 3 + 1
    probe = torch.randn(8, 5)  # the loss sum(y * probe) gives every output its own gradient
    ref = nn.BatchNorm1d(5, momentum=0.3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    synced = GlobalBatchNorm1d(5, momentum=0.3)
    synced.load_state_dict(ref.state_dict())

    x_ref = x_all.clone().requires_grad_()
    y_ref = ref(x_ref)
    (y_ref * probe).sum().backward()

    mine = slice(rank * 8 // world, (rank + 1) * 8 // world)
    x = x_all[mine].clone().requires_grad_()
    y = synced(x)
    (y * probe[mine]).sum().backward()
    grads = torch.cat([synced.weight.grad, synced.bias.grad])
    dist.all_reduce(grads)  # each rank holds its share of the parameter gradient; DDP would sum (then average) them

    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref[mine], **tol)
    torch.testing.assert_close(x.grad, x_ref.grad[mine], **tol)
    torch.testing.assert_close(grads, torch.cat([ref.weight.grad, ref.bias.grad]), **tol)
    torch.testing.assert_close(synced.running_mean, ref.running_mean, **tol)
    torch.testing.assert_close(synced.running_var, ref.running_var, **tol)
    assert int(synced.num_batches_tracked) == int(ref.num_batches_tracked) == 1


def check_byol_heads_synced() -> None:
    """Under a process group every projector/predictor batch-norm of BYOL is a GlobalBatchNorm1d."""
    byol = build_byol("resnet18", 32, torch.device("cpu"), projection_size=8, projection_hidden_size=16)
    heads = (byol.online_encoder.projector, byol.online_predictor, byol.target_encoder.projector)
    norms = [m for head in heads for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert norms and all(type(m) is GlobalBatchNorm1d for m in norms), [type(m).__name__ for m in norms]


def check_ranks_agree_to_stop(rank: int) -> None:
    """A SIGTERM seen by one rank stops all ranks at the same step; a NaN on one rank is an error on all."""
    no_nan = torch.tensor(math.inf)
    assert stopping.agree_to_stop(no_nan, stop_requested=rank == 1, out=Path("out")) is True
    assert stopping.agree_to_stop(no_nan, stop_requested=False, out=Path("out")) is False
    try:
        stopping.agree_to_stop(torch.tensor(5.0 if rank == 1 else math.inf), stop_requested=False, out=Path("out"))
    except UserError as err:
        assert "NaN/inf at step 5" in err.line(), err.line()
    else:
        raise AssertionError("a NaN loss on rank 1 did not stop rank 0")


def check_rank_streams(world: distributed.World) -> None:
    """Seeded alike, the ranks build identical weights; the engine's per-step reseeding then gives each rank its own
    dropout masks, and the same ones again when a step is redone after a resume."""
    distributed.seed_everything(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5))
    weights = [torch.empty_like(model[0].weight) for _ in range(world.size)]
    dist.all_gather(weights, model[0].weight.detach())
    assert all(torch.equal(w, weights[0]) for w in weights)
    distributed.seed_step(0, world, step=3)
    mask = model[1](torch.ones(64, 16)) > 0
    masks = [torch.empty_like(mask, dtype=torch.uint8) for _ in range(world.size)]
    dist.all_gather(masks, mask.to(torch.uint8))
    assert not torch.equal(masks[0], masks[1]), "both ranks drew the same dropout mask"
    distributed.seed_step(0, world, step=3)
    assert torch.equal(model[1](torch.ones(64, 16)) > 0, mask)


def run_all() -> None:
    """Join the gloo group (left open for a script to use) and run every check."""
    ranks, _ = distributed.init_distributed("cpu")
    rank, world = ranks.rank, ranks.size
    assert world == 2 and dist.get_backend() == "gloo"
    check_global_batchnorm(rank, world)
    check_byol_heads_synced()
    check_ranks_agree_to_stop(rank)
    check_rank_streams(ranks)
    print(f"rank {rank} ok", flush=True)


if __name__ == "__main__":
    run_all()
    distributed.cleanup_distributed()
