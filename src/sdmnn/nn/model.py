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

import copy
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
    differentiable; ``Predictor.predict``'s traced network records this convolution too."""

    def forward(self, x):
        if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
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
            h = stage(torch.cat([h, extra], 1).contiguous(memory_format=torch.channels_last_3d))
            out = F.interpolate(out, size=shape, mode="trilinear", align_corners=False) + head(h)
        fine = _unshuffle(self.shuffle(h))
        return _crop(F.interpolate(out, scale_factor=2, mode="trilinear", align_corners=False)[:, 0] + fine, self.config)


def _unshuffle(sub: torch.Tensor) -> torch.Tensor:
    """(B, 8, X, Y, Z) values of the 2x2x2 sub-voxels of each voxel -> (B, 2X, 2Y, 2Z)."""
    B, _, X, Y, Z = sub.shape
    return sub.reshape(B, 2, 2, 2, X, Y, Z).permute(0, 4, 1, 5, 2, 6, 3).reshape(B, 2 * X, 2 * Y, 2 * Z)


def _crop(sdm: torch.Tensor, config: SDMNNConfig) -> torch.Tensor:
    """The centre ``out_shape`` of a ``padded_shape`` volume."""
    if config.padded_shape == config.out_shape:
        return sdm
    (a, b, c), (n0, n1, n2) = ((p - n) // 2 for p, n in zip(config.padded_shape, config.out_shape)), config.out_shape
    return sdm[:, a : a + n0, b : b + n1, c : c + n2]


def _phase_weights(w: torch.Tensor) -> torch.Tensor:
    """Weights (cout, cin, 3, 3, 3) of a convolution (padding 1) on a nearest-upsampled x2 volume -> weights (8 * cout,
    cin, 2, 2, 2) of the equivalent convolution (padding 1) on the volume before upsampling, phase-major (phase =
    4 rx + 2 ry + rz, the output voxel's parity along each axis). Along one axis, the output voxel 2j sees inputs
    j-1, j, j with taps w0, w1, w2 and the voxel 2j+1 sees j, j, j+1: the even phase weights (j-1, j) by (w0, w1 + w2)
    and is read at output position j, the odd phase weights (j, j+1) by (w0 + w1, w2) and is read at j + 1."""
    taps = torch.tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=w.dtype, device=w.device)  # [r][tap][k]
    return torch.einsum("xai,ybj,zck,oqijk->xyzoqabc", taps, taps, taps, w).reshape(8 * w.shape[0], w.shape[1], 2, 2, 2)


#: The lift keeps the directions of its outputs over the parameter box down to this fraction of the largest's spread
#: (what that keeps and costs on the shipped model: docs/design.md, Inference).
LIFT_TOL = 1e-4
LIFT_SAMPLES = 2048


def _lift_factors(hidden: nn.Module, weight: torch.Tensor, bias: torch.Tensor, n_params: int):
    """The MLP's last layer (its lift to the coarse volume, ``weight`` (rows, k) and ``bias``) as two: k -> r -> rows,
    where its outputs over the parameter box lie near an r-dimensional subspace; None where that saves under half the
    multiply-adds. The layer's input is the MLP's hidden layer, a function of the n_params parameters, so its outputs
    fill at most an n_params-dimensional surface in rows dimensions, spanned to float rounding by few directions, and
    at batch 1 the layer's time is that of reading its weights. The directions: principal components of the outputs over LIFT_SAMPLES points drawn (one fixed
    seed) from the box widened by 10 %, computed as those of ``weight`` times a square root of the hidden layer's
    covariance (a k x k eigenproblem, not one of the samples); kept while their spread exceeds LIFT_TOL of the largest's."""
    rows, k = weight.shape
    x = (torch.rand(LIFT_SAMPLES, n_params, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1).to(weight.device)
    with torch.no_grad():
        z = hidden(x).double()
    mean = z.mean(0)
    spread, basis = torch.linalg.eigh((z - mean).T @ (z - mean) / LIFT_SAMPLES)
    outputs = weight.double() @ (basis * spread.clamp(min=0).sqrt())  # (rows, k): the outputs' covariance is its square
    variance, v = torch.linalg.eigh(outputs.T @ outputs)  # ascending; the SVD of ``outputs`` by its small side
    r = int((variance > LIFT_TOL**2 * variance[-1]).sum())
    if not variance[-1] > 0 or r * (rows + k) > rows * k / 2:
        return None
    expand = outputs @ (v[:, -r:] / variance[-r:].sqrt())  # (rows, r), orthonormal columns
    reduce = expand.T @ weight.double()  # (r, k): the outputs' coordinates along the directions
    return (reduce.float().contiguous(), (-(reduce @ mean)).float(), expand.float().contiguous(),
            (weight.double() @ mean + bias.double()).float())


def _interleave(z: torch.Tensor) -> torch.Tensor:
    """(B, 8 * C, X + 1, Y + 1, Z + 1) outputs of a ``_phase_weights`` convolution -> (B, C, 2X, 2Y, 2Z) float32,
    channels-last: output voxel (2j + rx, 2k + ry, 2l + rz) is phase (rx, ry, rz) at (j + rx, k + ry, l + rz), a linear
    function of the indices, so the phases are one strided view of the channels-last outputs, copied once."""
    z = z.contiguous(memory_format=torch.channels_last_3d)
    B, C8, X1, Y1, Z1 = z.shape
    C, (X, Y, Z) = C8 // 8, (X1 - 1, Y1 - 1, Z1 - 1)
    sb, _, sx, sy, sz = z.stride()  # channel stride 1; phase (rx, ry, rz) starts at channel (4 rx + 2 ry + rz) C
    phases = z.as_strided((B, X, 2, Y, 2, Z, 2, C), (sb, sx, sx + 4 * C, sy, sy + 2 * C, sz, sz + C, 1))
    out = torch.empty(phases.shape, dtype=torch.float32, device=z.device)
    out.copy_(phases)
    return out.view(B, 2 * X, 2 * Y, 2 * Z, C).permute(0, 4, 1, 2, 3)


class InferenceSDMNN(nn.Module):
    """A trained SDMNN rearranged for fast inference (``Predictor.predict``, and in float32 ``predict_torch`` without
    gradients, the fit's): the same function, faster at batch 1 (both times in docs/bench/nn.md), to float rounding
    but for the low-rank lift below (within 0.001 mm inside the parameter box, its test). The differentiable
    path runs the SDMNN itself.

    - Of the channels a stage's first convolution sees, the parameters are constant over a shape's volume and the
      coordinates are the same for every shape, so their share of that convolution (zero padding included) is
      precomputed: a volume for the coordinates and bias plus one per parameter, added in place to the convolution's
      output by one matrix product. The convolution itself runs on the features alone (32 input channels instead of
      39 on the cochlea's network). The 1x1x1 heads are matrix-vector products over channels-last volumes.
    - A stage's first convolution sees a nearest-upsampled volume, in which each 3x3x3 window covers only 2x2x2
      distinct input voxels: it runs as one 2x2x2 convolution at the lower resolution onto the 8 output voxels (phases)
      of each input voxel, their 3x3x3 weights summed onto the 2x2x2 taps each phase sees, then one strided copy
      interleaves the phases (8 instead of 27 multiply-adds per output voxel and channel pair; no upsampled copy).
    - The convolutions and the MLP's last layer (its lift to the coarse volume, most of the weights) run in ``dtype``
      (bfloat16 where the CPU has it natively), GroupNorm, SiLU and the sums in float32: bfloat16 GroupNorm on
      channels-last volumes was the slowest operation of the whole network. The coarse 1x1x1 head, linear in the
      lift's output, is folded into one float32 layer from the MLP's hidden layer to the coarse SDM.
    - The lift itself, where its outputs over the parameter box span few directions, runs as two thin layers through
      them (``_lift_factors``).
    - The final trilinear upsampling of the coarse SDM is a 3x3x3 convolution onto the 2x2x2 sub-voxels at half
      resolution (on a replicate-padded input, which reproduces its clamped border), added before the one shuffle.
    """

    def __init__(self, net: SDMNN, dtype: torch.dtype = torch.float32):
        super().__init__()
        c = self.config = net.config
        self.dtype = dtype
        cl = torch.channels_last_3d
        # The MLP's last layer lifts to the coarse volume: most of the network's weights, read from memory once per call
        # at batch 1. Its weights, input and output in ``dtype`` (half the bytes in bfloat16; the output feeds the first
        # convolution in ``dtype``); the coarse head, linear in that layer's output, is folded into a float32 layer.
        *hidden, lift = net.mlp
        self.mlp = copy.deepcopy(nn.Sequential(*hidden))
        coarse_head = net.heads[0]
        head_w = coarse_head.weight.detach().float().reshape(-1)  # (C0,)
        lift_w, lift_b = lift.weight.detach().float(), lift.bias.detach().float()  # rows: (channel, coarse voxel), C order
        factors = _lift_factors(self.mlp, lift_w, lift_b, c.n_params)
        #: whether the lift runs through few directions (``_lift_factors``), and how many it reads through
        self.lift_factored = factors is not None
        self.lift_rank = lift_w.shape[1] if factors is None else factors[0].shape[0]
        if factors is None:
            self.register_buffer("lift_weight", lift_w.to(dtype).clone())
            self.register_buffer("lift_bias", lift_b.to(dtype).clone())
        else:
            reduce_w, reduce_b, expand_w, expand_b = factors
            self.register_buffer("lift_reduce_weight", reduce_w)
            self.register_buffer("lift_reduce_bias", reduce_b)
            self.register_buffer("lift_weight", expand_w.to(dtype))
            self.register_buffer("lift_bias", expand_b.to(dtype))
        C0 = c.channels[0]
        self.register_buffer("coarse_weight", torch.einsum("c,cvk->vk", head_w, lift_w.reshape(C0, -1, lift_w.shape[1])).contiguous())
        self.register_buffer("coarse_bias", (head_w @ lift_b.reshape(C0, -1) + coarse_head.bias.detach().float()).contiguous())
        # The other 1x1x1 heads as matrix-vector products over channels-last volumes (a convolution call cost more).
        for i, head in enumerate(net.heads[1:], 1):
            self.register_buffer(f"head_weight{i}", head.weight.detach().reshape(1, -1).float().clone())
            self.register_buffer(f"head_bias{i}", head.bias.detach().float().clone())
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        device = next(net.parameters()).device
        with torch.no_grad():
            for i, stage in enumerate(net.stages):
                conv1, gn1, _, conv2, gn2, _ = stage.body
                cin, cout = c.channels[i], conv1.out_channels
                shape = tuple(b * 2 ** (i + 1) for b in c.base_shape)
                w = conv1.weight.float()
                constant = F.conv3d(_coords(shape, device, torch.float32), w[:, cin : cin + 3], conv1.bias.float(), padding=1)
                ones = torch.ones(1, 1, *shape, device=device)
                per_param = torch.cat([F.conv3d(ones, w[:, cin + 3 + p : cin + 4 + p], padding=1) for p in range(c.n_params)])
                # flattened in channels-last order, that of the convolution's output: (1 or n_params, voxels * cout)
                self.register_buffer(f"constant{i}", constant.permute(0, 2, 3, 4, 1).reshape(1, -1))
                self.register_buffer(f"per_param{i}", per_param.permute(0, 2, 3, 4, 1).reshape(c.n_params, -1))
                features = Conv3d(cin, 8 * cout, 2, padding=1, bias=False).to(device)
                features.weight.copy_(_phase_weights(w[:, :cin]))
                self.convs.append(nn.ModuleList([features, copy.deepcopy(conv2)]).to(dtype).to(memory_format=cl))
                self.norms.append(nn.ModuleList([copy.deepcopy(gn1).float(), copy.deepcopy(gn2).float()]))
            self.shuffle = copy.deepcopy(net.shuffle).to(dtype).to(memory_format=cl)
            self.upsample = Conv3d(1, 8, 3, bias=False).to(device)  # trilinear x2, align_corners=False, per sub-voxel
            taps = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.75, 0.25]], device=device)  # even, odd sub-voxel along an axis
            self.upsample.weight.copy_(torch.einsum("ai,bj,ck->abcijk", taps, taps, taps).reshape(8, 1, 3, 3, 3))

    def _head(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """The i-th 1x1x1 head on a float32 (B, C, X, Y, Z) volume -> (B, 1, X, Y, Z)."""
        weight, bias = getattr(self, f"head_weight{i}"), getattr(self, f"head_bias{i}")
        return F.linear(h.permute(0, 2, 3, 4, 1), weight, bias).permute(0, 4, 1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, d) normalised parameters -> (B, nx, ny, nz) SDM in mm, float32."""
        B, c, cl = x.shape[0], self.config, torch.channels_last_3d
        z = self.mlp(x)
        q = F.linear(z, self.lift_reduce_weight, self.lift_reduce_bias) if self.lift_factored else z
        h = F.linear(q.to(self.dtype), self.lift_weight, self.lift_bias).view(B, c.channels[0], *c.base_shape)
        out = F.linear(z, self.coarse_weight, self.coarse_bias).view(B, 1, *c.base_shape)
        for i, ((features, conv2), (gn1, gn2)) in enumerate(zip(self.convs, self.norms)):
            h = _interleave(features(h.to(self.dtype).contiguous(memory_format=cl)))  # a no-op cast for the lifted volume
            shape = h.shape[2:]  # channels-last float32: its flat order is that of the precomputed volumes
            h.permute(0, 2, 3, 4, 1).view(B, -1).add_(getattr(self, f"constant{i}")).addmm_(x, getattr(self, f"per_param{i}"))
            h = F.silu(gn1(h))
            h = F.silu(gn2(conv2(h.to(self.dtype)).float()))
            out = F.interpolate(out, size=shape, mode="trilinear", align_corners=False) + self._head(i + 1, h)
        sub = self.shuffle(h.to(self.dtype)).float() + self.upsample(F.pad(out, (1,) * 6, mode="replicate"))
        return _crop(_unshuffle(sub), c)

