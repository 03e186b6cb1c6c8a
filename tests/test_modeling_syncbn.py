"""SyncBN as resolved for CPU runs, across 2 real processes (gloo on 127.0.0.1).

The norms are the ones ``apply_norm_config`` writes for ``RETHINK.NORM "SyncBN"`` with two CPU
processes: Detectron2's ``NaiveSyncBatchNorm`` ("naiveSyncBN") in the backbone and FPN and its
per-sample weighted variant ("naiveSyncBN_N") in the RoI heads. Both are compared with a plain
``nn.BatchNorm2d`` that sees the concatenated batch in one process.
"""

import torch
from detectron2.config import get_cfg
from detectron2.layers import NaiveSyncBatchNorm, ShapeSpec, get_norm
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.utils import comm
from torch import nn

from cluster_utils import launch_gloo
from rethink_d2 import add_rethink_config
from rethink_d2.modeling import apply_norm_config

CHANNELS = 6
PER_RANK = 2  # images per process in the backbone-side test
# RoIs per process in the head tests: the second process has none, then fewer than the first
HEAD_ROIS = {"empty": (3, 0), "unequal": (3, 1)}


def resolved_norm_names():
    cfg = get_cfg()
    add_rethink_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.RETHINK.NORM = "SyncBN"
    apply_norm_config(cfg)
    return cfg.MODEL.RESNETS.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM


def batch_data():
    """The whole batch and the upstream gradient, identical in every process."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2 * PER_RANK, CHANNELS, 5, 5, generator=generator) * 3 + 1
    grad = torch.randn(x.shape, generator=generator)
    return x, grad


def head_inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 8, 7, 7, generator=generator)


def make_head(norm):
    torch.manual_seed(2)
    return FastRCNNConvFCHead(
        ShapeSpec(channels=8, height=7, width=7), conv_dims=[8, 8], fc_dims=[16], conv_norm=norm
    )


def norm_step(norm, x, grad):
    """One training forward/backward of ``norm`` on ``x``; returns everything to compare."""
    x = x.clone().requires_grad_(True)
    norm.train()
    (norm(x) * grad).sum().backward()
    return {
        "running_mean": norm.running_mean.clone(),
        "running_var": norm.running_var.clone(),
        "x_grad": x.grad.clone(),
        "weight_grad": norm.weight.grad.clone(),
        "bias_grad": norm.bias.grad.clone(),
    }


def head_step(head, rois):
    head.train()
    out = head(rois)
    out.sum().backward()
    return {
        "out_shape": tuple(out.shape),
        "running_mean": head.conv1.norm.running_mean.clone(),
        "running_var": head.conv1.norm.running_var.clone(),
    }


def _worker(out_dir):
    rank = comm.get_rank()
    backbone_norm, head_norm = resolved_norm_names()
    x, grad = batch_data()
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    norm = get_norm(backbone_norm, CHANNELS)
    result = {"types": (type(norm).__name__, norm._stats_mode)}
    result["backbone"] = norm_step(norm, x[rows], grad[rows])

    for case, counts in HEAD_ROIS.items():
        start = sum(counts[:rank])
        head = make_head(head_norm)
        result["head_norm"] = (type(head.conv1.norm).__name__, head.conv1.norm._stats_mode)
        result[case] = head_step(head, head_inputs()[start : start + counts[rank]])
    torch.save(result, f"{out_dir}/rank{rank}.pt")


def test_syncbn_on_two_cpu_processes_matches_bn_on_the_whole_batch(tmp_path):
    launch_gloo(_worker, 2, args=(str(tmp_path),))
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for result in results:
        assert result["types"] == (NaiveSyncBatchNorm.__name__, "")
        assert result["head_norm"] == (NaiveSyncBatchNorm.__name__, "N")

    x, grad = batch_data()
    reference = norm_step(nn.BatchNorm2d(CHANNELS), x, grad)
    # Detectron2's NaiveSyncBatchNorm updates running_var with the biased batch variance,
    # nn.BatchNorm2d with the unbiased one: undo Bessel's correction to compare.
    count = x.numel() / CHANNELS
    momentum = 0.1
    batch_var_unbiased = (reference["running_var"] - (1 - momentum)) / momentum
    reference_biased_var = (1 - momentum) + momentum * batch_var_unbiased * (count - 1) / count
    for rank, result in enumerate(results):
        got = result["backbone"]
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        assert torch.allclose(got["running_mean"], reference["running_mean"], atol=1e-5)
        assert torch.allclose(got["running_var"], reference_biased_var, atol=1e-5)
        assert torch.allclose(got["x_grad"], reference["x_grad"][rows], atol=1e-5)
    # each process holds the gradient of its own part (DDP sums and averages them)
    for name in ("weight_grad", "bias_grad"):
        total = results[0]["backbone"][name] + results[1]["backbone"][name]
        assert torch.allclose(total, reference[name], atol=1e-4)

    # the heads: with no RoI in process 1 nothing crashed, and with 3 + 1 RoIs the statistics are
    # weighted per sample; both equal one BN over the RoIs of all processes
    for case, counts in HEAD_ROIS.items():
        assert [r[case]["out_shape"] for r in results] == [(n, 16) for n in counts]
        single = head_step(make_head("BN"), head_inputs()[: sum(counts)])
        n = sum(counts) * 7 * 7
        expected_var = (1 - momentum) + (single["running_var"] - (1 - momentum)) * (n - 1) / n
        for result in results:
            got = result[case]
            assert torch.allclose(got["running_mean"], single["running_mean"], atol=1e-5), case
            assert torch.allclose(got["running_var"], expected_var, atol=1e-5), case
