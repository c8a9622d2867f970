"""The SDMNN network: normalised shape parameters (B, d) -> SDM volume (B, nx, ny, nz) in mm.

A decoder in the spirit of the poster's U-net-inspired network: an MLP lifts the parameters to a
coarse feature volume, then stages of (nearest upsampling, two 3x3x3 convolutions, GroupNorm, SiLU)
double the resolution up to half the output's; a last 3x3x3 convolution predicts the 2x2x2 output
voxels of each half-resolution voxel (a sub-voxel shuffle), so no convolution runs at full resolution
(measured: 5-10x faster than a full-resolution stage at equal accuracy, see docs/benchmarks.md). Layers are merged across scales in two ways: every stage receives the
parameter vector and the voxel coordinates again as extra channels (the skip connections from the
"encoder", here the parameters), and every scale has a 1x1x1 head whose SDM is upsampled (trilinear)
and added to the next one, so coarse stages carry the smooth far field and fine stages the detail
near the surface.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class SDMNNConfig:
    n_params: int = 4
    out_shape: tuple[int, int, int] = (64, 56, 32)
    #: Channels of the coarsest volume, then of each upsampling stage (each doubles the resolution);
    #: the last stage runs at half the output resolution.
    channels: tuple[int, ...] = (32, 32, 24)
    hidden: int = 256

    def __post_init__(self):
        self.out_shape = tuple(int(n) for n in self.out_shape)
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.out_shape) != 3 or min(self.out_shape) < 1 or len(self.channels) < 2 or min(self.channels) < 1 or self.n_params < 1:
            raise ValueError(f"out_shape must be 3 sizes >= 1, channels at least two numbers >= 1 (the coarsest volume, "
                             f"then one per stage) and n_params >= 1; got {self.out_shape}, {self.channels}, {self.n_params}")

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """The volume the network computes: ``out_shape`` rounded up to a multiple of 2^len(channels), of
        which the centre ``out_shape`` is returned (so any grid shape works)."""
        f = 2 ** len(self.channels)
        return tuple(-(-n // f) * f for n in self.out_shape)

    @property
    def base_shape(self) -> tuple[int, int, int]:
        f = 2 ** len(self.channels)
        return tuple(n // f for n in self.padded_shape)

    def to_dict(self) -> dict:
        return asdict(self)


def _coords(shape, device, dtype) -> torch.Tensor:
    """(1, 3, *shape) voxel coordinates in [-1, 1]."""
    axes = [torch.linspace(-1, 1, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


class Conv3d(nn.Conv3d):
    """nn.Conv3d that always takes oneDNN's convolution on CPU. At batch 1, PyTorch picks its slow im2col
    convolution when batch x channels x depth x height is below 20480 (a heuristic for small 2-D inputs), which on
    some grid shapes made a prediction several times slower. Same weights, same results to float rounding,
    differentiable."""

    def forward(self, x):
        if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
                and not torch.jit.is_tracing()):  # exporters (ONNX) trace the standard convolution
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
        return super().forward(x)


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        groups = math.gcd(cout, 8)
        self.body = nn.Sequential(
            Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
            Conv3d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.body[0].weight.dtype

    def forward(self, x):
        return self.body(x)


class SDMNN(nn.Module):
    def __init__(self, config: SDMNNConfig):
        super().__init__()
        self.config = c = config
        base = c.base_shape
        self.mlp = nn.Sequential(
            nn.Linear(c.n_params, c.hidden), nn.SiLU(),
            nn.Linear(c.hidden, c.hidden), nn.SiLU(),
            nn.Linear(c.hidden, c.channels[0] * base[0] * base[1] * base[2]),
        )
        extra = 3 + c.n_params  # coordinates + parameters, re-injected at every scale
        self.stages = nn.ModuleList(Stage(cin + extra, cout) for cin, cout in zip(c.channels[:-1], c.channels[1:]))
        self.heads = nn.ModuleList(Conv3d(ch, 1, 1) for ch in c.channels)
        self.shuffle = Conv3d(c.channels[-1], 8, 3, padding=1)  # 2x2x2 sub-voxels of each voxel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, d) parameters normalised to [-1, 1] -> (B, nx, ny, nz) SDM in mm."""
        B = x.shape[0]
        h = self.mlp(x).view(B, self.config.channels[0], *self.config.base_shape)  # (B, C0, X0, Y0, Z0)
        out = self.heads[0](h)  # (B, 1, X0, Y0, Z0)
        for stage, head in zip(self.stages, self.heads[1:]):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            shape = h.shape[2:]
            extra = torch.cat([_coords(shape, x.device, x.dtype).expand(B, -1, *shape),
                               x[:, :, None, None, None].expand(-1, -1, *shape)], 1)
            # a stage runs in its weights' precision (bfloat16 in a Predictor's fast path), the sums in x's
            h = stage(torch.cat([h, extra], 1).to(stage.dtype).contiguous(memory_format=torch.channels_last_3d)).to(x.dtype)
            out = F.interpolate(out, size=shape, mode="trilinear", align_corners=False) + head(h)
        X, Y, Z = shape
        fine = self.shuffle(h).view(B, 2, 2, 2, X, Y, Z).permute(0, 4, 1, 5, 2, 6, 3).reshape(B, 2 * X, 2 * Y, 2 * Z)
        sdm = F.interpolate(out, scale_factor=2, mode="trilinear", align_corners=False)[:, 0] + fine
        if self.config.padded_shape != self.config.out_shape:
            (a, b, c), (n0, n1, n2) = ((p - n) // 2 for p, n in zip(self.config.padded_shape, self.config.out_shape)), self.config.out_shape
            sdm = sdm[:, a : a + n0, b : b + n1, c : c + n2]
        return sdm
