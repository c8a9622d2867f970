"""Cochlea families of 4, 8 and 12 parameters for the parameter-count bench (params_bench.py).

The 4 are the built-in cochlea's (a, alpha, b, phi); 8 add the cross-section's profile (its semi-axes at the base
and at the apex); 12 add the number of turns, a quadratic term in the rise and in the spiral's decay, and a twist
of the section's tilt from base to apex. Missing parameters take the built-in cochlea's values, so the three
families share one mesher, and at 4 parameters it is the built-in cochlea's shape.

Loaded by file (``bench/param_families.py:COCHLEA12``) so that dataset workers find the families too.
"""
import math

import numpy as np

import sdmnn
from sdmnn.shapes import tube_mesh

RESOLUTION = (400, 32)
BASE = {"a": (2.0, 5.0), "alpha": (0.0, 1.2), "b": (0.05, 0.25), "phi": (-math.pi / 4, math.pi / 4)}
SECTION = {"u_base": (0.8, 1.2), "u_apex": (0.4, 0.7), "v_base": (0.6, 0.9), "v_apex": (0.3, 0.5)}
PROFILE = {"turns": (2.2, 2.8), "rise2": (-0.2, 0.2), "b2": (0.0, 0.002), "twist": (-0.4, 0.4)}
FIXED = {"u_base": 1.0, "u_apex": 0.5, "v_base": 0.75, "v_apex": 0.4, "turns": 2.5, "rise2": 0.0, "b2": 0.0, "twist": 0.0}


def profile_cochlea(params: dict, refine: int = 1):
    p = {**FIXED, **params}
    sections, points = RESOLUTION[0] * refine, RESOLUTION[1] * refine
    t = np.linspace(0.0, 2 * math.pi * p["turns"], sections)
    r = p["a"] * np.exp(-p["b"] * t - p["b2"] * t**2)
    dr = r * (-p["b"] - 2 * p["b2"] * t)
    cos_t, sin_t = np.cos(t), np.sin(t)
    centre = np.stack([r * cos_t, r * sin_t, p["alpha"] * t / (2 * math.pi) + p["rise2"] * (t / (2 * math.pi)) ** 2], -1)
    rise = p["alpha"] / (2 * math.pi) + 2 * p["rise2"] * t / (2 * math.pi) ** 2
    tangent = np.stack([dr * cos_t - r * sin_t, dr * sin_t + r * cos_t, rise], -1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    radial = np.stack([cos_t, sin_t, np.zeros_like(t)], -1)
    n1 = radial - np.sum(radial * tangent, 1, keepdims=True) * tangent
    n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
    n2 = np.cross(tangent, n1)
    s = t / t[-1]
    tilt = (p["phi"] + p["twist"] * s)[:, None]
    e1 = np.cos(tilt) * n1 + np.sin(tilt) * n2
    e2 = -np.sin(tilt) * n1 + np.cos(tilt) * n2
    u0 = p["u_base"] + (p["u_apex"] - p["u_base"]) * s
    v0 = p["v_base"] + (p["v_apex"] - p["v_base"]) * s
    gap = r * (1 - np.exp(-2 * math.pi * p["b"] - p["b2"] * ((t + 2 * math.pi) ** 2 - t**2)))  # r(t) - r(t + 2 pi)
    k = np.minimum(1.0, 0.4 * gap / np.maximum(u0, v0))  # successive turns never touch
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    u = (k * u0)[:, None, None] * np.cos(theta)[None, :, None] * e1[:, None, :]
    v = (k * v0)[:, None, None] * np.sin(theta)[None, :, None] * e2[:, None, :]
    return tube_mesh(centre[:, None, :] + u + v, closed=False)


def _family(name, ranges):
    return sdmnn.define_family(name, ranges, profile_cochlea, spacing=0.2,
                               defaults={k: v for k, v in {**sdmnn.get_family("cochlea").defaults, **FIXED}.items() if k in ranges},
                               description=f"cochlea with {len(ranges)} parameters (params_bench)")


COCHLEA4 = _family("cochlea4", BASE)
COCHLEA8 = _family("cochlea8", {**BASE, **SECTION})
COCHLEA12 = _family("cochlea12", {**BASE, **SECTION, **PROFILE})
