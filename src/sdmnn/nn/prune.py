"""Structured pruning: a narrower SDMNN that starts from a wider one's weights (``sdmnn train --init WIDER --channels
NARROWER``), so a faster width is fine-tuned from the trained one instead of trained from scratch.

torch-pruning does this generically (dependency graphs over any network); on the SDMNN's few layers the selection is
a few lines, so no dependency is added for it.
"""
from __future__ import annotations

import math

import torch

from ..errors import ModelError
from .model import SDMNN, SDMNNConfig


def _top(score: torch.Tensor, new: int, grouped: bool = True) -> torch.Tensor:
    """Sorted indices of the ``new`` best of ``len(score)`` channels. Under a GroupNorm (groups of contiguous channels,
    gcd(channels, 8) of them) the statistics stay over channels of one former group: the same count from each group
    where the group count stays, else the best whole groups where the group size stays, else the best channels."""
    old = len(score)
    g_old, g_new = math.gcd(old, 8), math.gcd(new, 8)
    if grouped and g_new == g_old:
        keep = score.view(g_old, -1).topk(new // g_old, dim=1).indices
        return (keep + torch.arange(g_old, device=score.device)[:, None] * (old // g_old)).flatten().sort().values
    if grouped and old // g_old == new // g_new:
        size = old // g_old
        groups = score.view(g_old, size).sum(1).topk(g_new).indices
        return (groups[:, None] * size + torch.arange(size, device=score.device)).flatten().sort().values
    return score.topk(new).indices.sort().values


def narrowed(net: SDMNN, channels: tuple[int, ...], n_probe: int = 64) -> SDMNN:
    """``net`` (trained) narrowed to ``channels``, to be fine-tuned. Of each scale it keeps the channels that contribute
    most to the next layers, with their weights: a channel's score is its mean |activation| over ``n_probe`` parameter
    vectors spread over the normalised range (Sobol), times the norm of the weights that read it. Each stage's two
    convolutions have their own channels (the middle ones, read by the second convolution; the output ones, read by the
    next stage, the head and the shuffle), chosen separately."""
    c = net.config
    channels = tuple(int(n) for n in channels)
    if len(channels) != len(c.channels) or any(n > m or n < 1 for n, m in zip(channels, c.channels)):
        raise ModelError(f"channels must have {len(c.channels)} scales, none wider than {c.channels}; got {channels}")
    device = next(net.parameters()).device
    middle, output = [None] * len(net.stages), [None] * len(net.stages)  # mean |activation| per channel

    def keeper(store, i):
        return lambda _module, _inputs, out: store.__setitem__(i, out.detach().abs().mean((0, 2, 3, 4)))

    hooks = [stage.body[2].register_forward_hook(keeper(middle, i)) for i, stage in enumerate(net.stages)]
    hooks += [stage.body[5].register_forward_hook(keeper(output, i)) for i, stage in enumerate(net.stages)]
    probe = torch.quasirandom.SobolEngine(c.n_params, scramble=True, seed=0).draw(n_probe).to(device) * 2 - 1
    try:
        with torch.no_grad():
            coarse = net.mlp(probe).view(n_probe, c.channels[0], -1).abs().mean((0, 2))  # the MLP's volume
            net(probe)
    finally:
        for hook in hooks:
            hook.remove()

    def readers(i):
        """Norm of the weights that read scale i's output channels: its head, then the next stage or the shuffle."""
        nxt = net.stages[i].body[0].weight[:, : c.channels[i]] if i < len(net.stages) else net.shuffle.weight
        return (net.heads[i].weight.flatten(1).norm(dim=0) ** 2 + nxt.transpose(0, 1).flatten(1).norm(dim=1) ** 2).sqrt()

    keep_out = [_top(coarse * readers(0), channels[0], grouped=False)]  # no GroupNorm on the MLP's volume
    keep_mid = []
    for i, stage in enumerate(net.stages):
        keep_mid.append(_top(middle[i] * stage.body[3].weight.transpose(0, 1).flatten(1).norm(dim=1), channels[i + 1]))
        keep_out.append(_top(output[i] * readers(i + 1), channels[i + 1]))

    src, V = net.state_dict(), math.prod(c.base_shape)
    rows = (keep_out[0][:, None] * V + torch.arange(V, device=device)).flatten()  # the view is (C0, X0, Y0, Z0)
    dst = {k: src[k] for k in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")}
    dst["mlp.4.weight"], dst["mlp.4.bias"] = src["mlp.4.weight"][rows], src["mlp.4.bias"][rows]
    for i, keep in enumerate(keep_out):
        dst[f"heads.{i}.weight"], dst[f"heads.{i}.bias"] = src[f"heads.{i}.weight"][:, keep], src[f"heads.{i}.bias"]
    for i in range(len(net.stages)):
        extra = torch.arange(c.channels[i], c.channels[i] + 3 + c.n_params, device=device)  # coordinates, parameters
        seen, mid, out, p = torch.cat([keep_out[i], extra]), keep_mid[i], keep_out[i + 1], f"stages.{i}.body."
        dst[p + "0.weight"], dst[p + "0.bias"] = src[p + "0.weight"][mid][:, seen], src[p + "0.bias"][mid]
        dst[p + "1.weight"], dst[p + "1.bias"] = src[p + "1.weight"][mid], src[p + "1.bias"][mid]
        dst[p + "3.weight"], dst[p + "3.bias"] = src[p + "3.weight"][out][:, mid], src[p + "3.bias"][out]
        dst[p + "4.weight"], dst[p + "4.bias"] = src[p + "4.weight"][out], src[p + "4.bias"][out]
    dst["shuffle.weight"], dst["shuffle.bias"] = src["shuffle.weight"][:, keep_out[-1]], src["shuffle.bias"]
    small = SDMNN(SDMNNConfig(n_params=c.n_params, out_shape=c.out_shape, channels=channels, hidden=c.hidden)).to(device)
    small.load_state_dict(dst)  # strict: a weight left out would be an error, not a random one
    return small
