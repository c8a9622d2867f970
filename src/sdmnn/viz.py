"""PNG views of SDMs: three orthogonal slices with a diverging colour map and the zero contour."""
from __future__ import annotations

import numpy as np

from .grid import Grid
from .io import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matplotlib_norm(low: float, high: float):
    """A diverging norm centred on the surface (0), whatever the range of each side."""
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vcenter=0.0, vmin=min(low, -1e-3), vmax=max(high, 1e-3))


def save_slices(path, sdm: np.ndarray, grid: Grid, others: dict | None = None, title: str = "", index=None):
    """Write a PNG of the three orthogonal slices through ``index`` (voxel; default: the slices
    that cut the most of the inside).

    ``others`` maps a label to further SDMs on the same grid whose zero contours are overlaid
    (e.g. a prediction beside the exact SDM).
    """
    plt = _figure()
    others = others or {}
    if index is None:  # the slices that cut the most of the inside
        inside = sdm < 0
        index = tuple(int(np.argmax(inside.sum(axis=tuple(b for b in range(3) if b != a)))) for a in range(3))
    x, y, z = grid.axes()
    norm = matplotlib_norm(float(np.nanmin(sdm)), float(np.nanmax(sdm)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    views = [
        ("axial  z = %.2f mm" % z[index[2]], lambda v: v[:, :, index[2]], x, y, "x (mm)", "y (mm)"),
        ("coronal  y = %.2f mm" % y[index[1]], lambda v: v[:, index[1], :], x, z, "x (mm)", "z (mm)"),
        ("sagittal  x = %.2f mm" % x[index[0]], lambda v: v[index[0], :, :], y, z, "y (mm)", "z (mm)"),
    ]
    colours = ["black", "tab:green", "tab:orange", "tab:purple"]
    for ax, (name, cut, h, v, hl, vl) in zip(axes, views):
        image = ax.imshow(cut(sdm).T, origin="lower", cmap="RdBu_r", norm=norm,
                          extent=(h[0], h[-1], v[0], v[-1]), aspect="equal")
        for colour, vol in zip(colours, [sdm, *others.values()]):
            s = cut(vol)
            if s.min() < 0 < s.max():
                ax.contour(h, v, s.T, levels=[0.0], colors=colour, linewidths=1.2)
        ax.set_title(name)
        ax.set_xlabel(hl)
        ax.set_ylabel(vl)
    fig.colorbar(image, ax=axes, shrink=0.8, label="signed distance (mm), negative inside")
    if others:
        handles = [plt.Line2D([], [], color=c) for c in colours[: 1 + len(others)]]
        fig.legend(handles, ["zero contour", *others], loc="lower right")
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def save_corner(path, samples: np.ndarray, names, truth=None, map_point=None):
    """A corner plot of posterior samples: histograms on the diagonal, pairwise scatter below."""
    plt = _figure()
    d = len(names)
    fig, axes = plt.subplots(d, d, figsize=(2.2 * d, 2.2 * d), constrained_layout=True)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                ax.hist(samples[:, i], bins=40, color="tab:blue", alpha=0.8)
            else:
                ax.scatter(samples[:, j], samples[:, i], s=1, alpha=0.3, color="tab:blue")
            for point, colour in ((truth, "black"), (map_point, "tab:red")):
                if point is not None:
                    ax.axvline(point[j], color=colour, lw=1)
                    if i != j:
                        ax.axhline(point[i], color=colour, lw=1)
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
