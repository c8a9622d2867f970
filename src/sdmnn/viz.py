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


def looks_like_sdm(volume: np.ndarray, grid: Grid) -> tuple[bool, str]:
    """(whether ``volume`` reads as an SDM, why not): one holds millimetres of distance, negative inside, positive
    outside, changing by about a millimetre per millimetre near its zero level (the median gradient within a few
    voxels of it, along the axes of more than one voxel, between 0.5 and 2). A label map has no negative voxel; a CT
    in HU changes by hundreds per millimetre; a binary mask by none."""
    if not (np.issubdtype(volume.dtype, np.floating) or np.issubdtype(volume.dtype, np.signedinteger)):
        return False, f"holds {volume.dtype} values"
    if not np.all(np.isfinite(volume)):
        return False, "holds NaN or infinite values"
    if not (volume.min() < 0 < volume.max()):
        return False, "has no negative voxel" if volume.min() >= 0 else "has no positive voxel"
    stride = [max(1, n // 128) for n in volume.shape]  # at most about 128 voxels a side: a CT's 512 x 512 x 300 too
    v = volume[tuple(slice(None, None, k) for k in stride)].astype(np.float64)
    spacing = np.array(grid.spacing) * stride
    axes = [a for a in range(3) if v.shape[a] > 1]  # (both signs: two voxels at least)
    parts = np.gradient(v, *spacing[axes], axis=axes)
    gradient = np.sqrt(sum(g * g for g in (parts if len(axes) > 1 else [parts])))
    near = np.abs(v) < 3 * spacing.max()
    if not near.any():  # an SDM's voxels beside its surface lie within a voxel of zero
        return False, "has no voxel near its zero level"
    slope = float(np.median(gradient[near]))
    low = 0.5 if len(axes) == 3 else 0.2  # along fewer axes, only part of the gradient is seen
    if not low <= slope <= 2.0:
        return False, f"changes by {slope:.3g} per mm near its zero level (an SDM by about 1)"
    return True, ""


def save_slices(path, volume: np.ndarray, grid: Grid, others: dict | None = None, title: str = "", index=None,
                image_label: str | None = None, offset=(0, 0, 0)):
    """Write a PNG of the three orthogonal slices through ``index`` (voxel; default: the slices that cut the
    most of the inside of the first SDM).

    ``volume`` is an SDM (mm, negative inside; drawn with a diverging map and its zero contour) or, when
    ``image_label`` names what it holds (e.g. "CT intensity"), an image drawn in grey. ``others`` maps a
    label to SDMs on the same grid whose zero contours are overlaid (a prediction, a fitted surface).
    An oblique or flipped grid is drawn in its own voxel frame (mm along the i, j and k axes from the voxel (0, 0, 0) of
    the image ``grid`` is cut from: ``offset`` is the index there of ``grid``'s first voxel). Each slice's title names
    its voxel in that image too.
    """
    plt = _figure()
    others = others or {}
    is_image = image_label is not None
    sdms = ([] if is_image else [volume]) + list(others.values())
    if index is None:  # the slices that cut the most of the inside
        inside = sdms[0] < 0 if sdms else volume > np.median(volume)
        index = tuple(int(np.argmax(inside.sum(axis=tuple(b for b in range(3) if b != a)))) for a in range(3))
    if grid.is_axis_aligned:
        (x, y, z), names = grid.axes(), ("x", "y", "z")
    else:
        (x, y, z), names = (s * (o + np.arange(n)) for s, o, n in zip(grid.spacing, offset, grid.shape)), ("i", "j", "k")
    at = [f"voxel {offset[a] + index[a]}" for a in range(3)]  # the slice's index in the image
    views = [
        (f"{names[2]} = {z[index[2]]:.2f} mm ({at[2]})", lambda v: v[:, :, index[2]], x, y, names[0], names[1]),
        (f"{names[1]} = {y[index[1]]:.2f} mm ({at[1]})", lambda v: v[:, index[1], :], x, z, names[0], names[2]),
        (f"{names[0]} = {x[index[0]]:.2f} mm ({at[0]})", lambda v: v[index[0], :, :], y, z, names[1], names[2]),
    ]
    if is_image:
        lo, hi = np.percentile(volume, [0.5, 99.5])
        if not hi > lo:  # a small shape in a label map: its voxels are under 0.5 % of them
            lo, hi = np.min(volume), np.max(volume)
        style = {"cmap": "gray", "vmin": float(lo), "vmax": float(hi)}
    else:
        style = {"cmap": "RdBu_r", "norm": matplotlib_norm(float(np.nanmin(volume)), float(np.nanmax(volume)))}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    colours = ["black", "tab:green", "tab:orange", "tab:purple"] if not is_image else ["tab:red", "tab:green", "tab:orange"]
    for ax, (name, cut, h, v, hl, vl) in zip(axes, views):
        dh, dv = (h[1] - h[0] if len(h) > 1 else 1.0) / 2, (v[1] - v[0] if len(v) > 1 else 1.0) / 2  # voxels' edges
        shown = ax.imshow(cut(volume).T, origin="lower", extent=(h[0] - dh, h[-1] + dh, v[0] - dv, v[-1] + dv),
                          aspect="equal", **style)
        for colour, sdm in zip(colours, sdms):
            s = cut(sdm)
            if s.min() < 0 < s.max():
                ax.contour(h, v, s.T, levels=[0.0], colors=colour, linewidths=1.2)
        ax.set_title(name)
        ax.set_xlabel(f"{hl} (mm)")
        ax.set_ylabel(f"{vl} (mm)")
    fig.colorbar(shown, ax=axes, shrink=0.8, label=image_label or "signed distance (mm), negative inside")
    if others:
        labels = ([] if is_image else ["zero contour"]) + list(others)
        handles = [plt.Line2D([], [], color=c) for c in colours[: len(labels)]]
        fig.legend(handles, labels, loc="lower right")
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def save_corner(path, samples: np.ndarray, names, truth=None, map_point=None):
    """A corner plot of posterior samples: histograms on the diagonal, pairwise samples below. Only the lower
    triangle's panels are made, with a few ticks and tick labels on the outer panels alone: axes and their text are
    most of a corner plot's time."""
    plt = _figure()
    d = len(names)
    side = 2.2 * d + 0.6  # inches: the panels, and the margin for the outer labels
    fig = plt.figure(figsize=(side, side))
    grid = fig.add_gridspec(d, d, left=0.6 / side, right=1 - 0.1 / side, bottom=0.55 / side, top=1 - 0.1 / side,
                            wspace=0.08, hspace=0.08)
    columns = {}  # the panels of each column share their x axis, of each row below the diagonal their y axis
    rows = {}
    for i in range(d):
        for j in range(i + 1):
            ax = fig.add_subplot(grid[i, j], sharex=columns.get(j), sharey=rows.get(i) if i != j else None)
            columns.setdefault(j, ax)
            if i != j:
                rows.setdefault(i, ax)
            if i == j:
                ax.hist(samples[:, i], bins=40, color="tab:blue", alpha=0.8)
                ax.set_yticks([])
            else:
                ax.plot(samples[:, j], samples[:, i], ".", ms=1.5, alpha=0.3, color="tab:blue", mec="none")
            for point, colour in ((truth, "black"), (map_point, "tab:red")):
                if point is not None:
                    ax.axvline(point[j], color=colour, lw=1)
                    if i != j:
                        ax.axhline(point[i], color=colour, lw=1)
            ax.locator_params(nbins=3)
            ax.ticklabel_format(useOffset=False)  # an offset's text would overlap the panel above
            ax.tick_params(labelsize=7, labelbottom=i == d - 1, labelleft=j == 0 and i > 0)
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
