"""A DeepSDF-style baseline (Park et al., CVPR 2019), conditioned on the shape parameters.

Kept from DeepSDF: an MLP decoder f(code, x) -> SDF of fully connected layers with weight
normalisation and ReLU, a skip connection that re-injects the input (code and point) before the
middle layer, a tanh output on a clamped distance, and an L1 loss on clamped SDF samples drawn near
the surface and uniformly. Changed: the latent code is the normalised parameter vector (so no
auto-decoder optimisation of codes, and the same fits can use it); 6 layers of 256 instead of 8 of 512,
no dropout, and the clamp is 2 mm (the original's 0.1 is in unit-sphere units) so that the fit's band
around the surface is covered; samples are voxel centres of the stored SDMs. Predicting a volume
evaluates the decoder at every voxel centre in batched chunks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class DeepSDFConfig:
    n_params: int = 4
    out_shape: tuple[int, int, int] = (64, 56, 32)
    hidden: int = 256
    layers: int = 6
    clamp: float = 2.0  # mm
    chunk: int = 1 << 15  # points per decoder call when predicting a volume

    def __post_init__(self):
        self.out_shape = tuple(int(n) for n in self.out_shape)

    def to_dict(self) -> dict:
        return asdict(self)


class DeepSDF(nn.Module):
    def __init__(self, config: DeepSDFConfig):
        super().__init__()
        self.config = c = config
        d_in = c.n_params + 3
        self.skip = c.layers // 2
        dims = [d_in] + [c.hidden] * c.layers
        layers = []
        for i in range(c.layers):
            fan_in = dims[i] + (d_in if i == self.skip else 0)
            layers.append(weight_norm(nn.Linear(fan_in, dims[i + 1])))
        self.layers = nn.ModuleList(layers)
        self.out = weight_norm(nn.Linear(c.hidden, 1))
        axes = [torch.linspace(-1, 1, n) for n in c.out_shape]
        self.register_buffer("coords", torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3), persistent=False)

    def decode(self, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """x: (B, d) normalised parameters, points: (B, P, 3) coordinates in [-1, 1] -> (B, P) SDF in mm."""
        inp = torch.cat([x[:, None, :].expand(-1, points.shape[1], -1), points], -1)
        h = inp
        for i, layer in enumerate(self.layers):
            if i == self.skip:
                h = torch.cat([h, inp], -1)
            h = torch.relu(layer(h))
        return self.config.clamp * torch.tanh(self.out(h)[..., 0])

    def forward(self, x: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, d) -> (B, nx, ny, nz): the decoder at every voxel centre, in chunks; or, given
        ``points`` (B, P, 3), the decoder there (B, P) (training goes through here, so DDP sees it)."""
        if points is not None:
            return self.decode(x, points)
        B = x.shape[0]
        chunks = [self.decode(x, self.coords[s : s + self.config.chunk].expand(B, -1, -1))
                  for s in range(0, len(self.coords), self.config.chunk)]
        return torch.cat(chunks, 1).view(B, *self.config.out_shape)


def sample_points(Y: torch.Tensor, idx: torch.Tensor, n_points: int, clamp: float, rng, near_fraction: float = 0.8):
    """Per shape, ``n_points`` voxel indices: ``near_fraction`` of them with |d| < clamp, the rest uniform.

    Returns (flat voxel indices (B, P), target SDF (B, P))."""
    B = len(idx)
    flat = Y[idx].reshape(B, -1)
    n_near = int(near_fraction * n_points)
    out = torch.empty(B, n_points, dtype=torch.long)
    for b in range(B):
        near = torch.nonzero(flat[b].abs() < clamp)[:, 0]
        pick = near[torch.from_numpy(rng.integers(0, len(near), n_near))] if len(near) else torch.from_numpy(rng.integers(0, flat.shape[1], n_near))
        out[b, :n_near] = pick
        out[b, n_near:] = torch.from_numpy(rng.integers(0, flat.shape[1], n_points - n_near))
    return out, torch.gather(flat, 1, out)
