"""Bayesian fitting of shape parameters to an observed image, with the exact or a learned forward model.

Likelihood (the logistic shape model for label maps): p(label = 1 at x) = sigmoid(-d_theta(x) / tau);
for an observed SDM, Gaussian noise of scale sigma on the distances, optionally within a band of the
surface. tau and sigma are estimated at the first MAP unless given. A learned forward model's own error
(its validation mean |error| near the surface, as a Gaussian of that mean) is added to the noise, and its
errors are spatially correlated over about ``correlation_mm``, so its log-likelihood is divided by the
number of voxels in that correlation volume: without that, independent-voxel posteriors are far too narrow.
Priors are uniform over the family's ranges (or user-given sub-ranges).

Inference: ``sdmnn`` screens a scrambled Sobol set of parameter vectors with the network, runs L-BFGS from
the best few in a batch (torch, through a sigmoid map onto the box), and takes a Laplace approximation
(autograd Hessian) at the MAP. ``exact`` screens with the exact SDM, polishes with Nelder-Mead (scipy) and
takes a finite-difference Laplace approximation. ``hybrid`` does the network's search, then
Levenberg-Marquardt on the exact likelihood, first with the network's Jacobian (one exact SDM a step),
then with the exact Jacobian by finite differences, and the Gauss-Newton Laplace approximation there:
the exact model's accuracy at a fraction of its evaluations.
Posterior samples are drawn from the Laplace Gaussian, truncated to the prior box.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from .errors import FitError, SdmnnError
from .grid import Grid
from .shapes import get_family


@dataclass
class FitResult:
    names: tuple[str, ...]
    params: dict  # MAP
    mean: dict
    std: dict
    samples: np.ndarray  # (S, d) posterior samples in the family's units
    seconds: float
    evaluations: dict  # forward evaluations by model: {"sdmnn": ..., "exact": ...}
    forward: str
    observed_kind: str
    noise: dict  # tau or sigma actually used, model error, tempering
    log_posterior: float
    covariance: np.ndarray = field(repr=False, default=None)

    def interval(self, level: float = 0.9) -> dict:
        """Central posterior interval of each parameter from the samples."""
        lo, hi = np.quantile(self.samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return {n: (float(a), float(b)) for n, a, b in zip(self.names, lo, hi)}

    def to_dict(self) -> dict:
        return {
            "forward": self.forward, "observed": self.observed_kind, "map": self.params, "mean": self.mean, "std": self.std,
            "interval_90": {k: list(v) for k, v in self.interval(0.9).items()}, "seconds": self.seconds,
            "evaluations": self.evaluations, "noise": self.noise, "log_posterior": self.log_posterior,
            "covariance": self.covariance.tolist() if self.covariance is not None else None,
        }


# ---------------------------------------------------------------------------------------------
# checks and likelihoods
# ---------------------------------------------------------------------------------------------

def check_observed(observed: np.ndarray, kind: str) -> np.ndarray:
    observed = np.asarray(observed)
    if observed.ndim != 3:
        raise FitError(f"the observed image must be a 3-D volume, got {observed.ndim} dimensions")
    if not np.all(np.isfinite(observed)):
        raise FitError("the observed image holds NaN or infinite values")
    if kind == "labels":
        values = np.unique(observed)
        if not np.all(np.isin(values, [0, 1])):
            raise FitError(f"a label map holds only 0 (outside) and 1 (inside), found values such as {values[~np.isin(values, [0, 1])][:3].tolist()}")
        if values.tolist() != [0, 1]:
            raise FitError("the label map is all " + ("zeros" if values[0] == 0 else "ones") + ": there is no shape boundary to fit")
        return observed.astype(np.float32)
    if kind == "sdm":
        if not (observed.min() < 0 < observed.max()):
            raise FitError("the observed SDM has no zero crossing (no voxel inside or none outside)")
        return observed.astype(np.float32)
    raise FitError(f"observed must be 'labels' or 'sdm', got {kind!r}")


def _nll_labels(d, y, tau):
    """-log p(labels | d): Bernoulli with p(inside) = sigmoid(-d / tau). Works on numpy or torch."""
    if isinstance(d, torch.Tensor):
        z = -d / tau
        return F.binary_cross_entropy_with_logits(z, y.expand_as(z), reduction="none").flatten(1).sum(1)
    z = -d / tau
    return float(np.sum(np.logaddexp(0, z) - y * z))


def _nll_sdm(d, y, sigma, mask):
    if isinstance(d, torch.Tensor):
        r = (d - y) * mask
        return 0.5 * (r**2).flatten(1).sum(1) / sigma**2
    return float(0.5 * np.sum(((d - y) * mask) ** 2) / sigma**2)


def _estimate_noise(kind, d, y, mask):
    """MLE of tau (labels) or sigma (SDM) for the SDM ``d`` of the current MAP."""
    if kind == "sdm":
        return float(np.sqrt(np.sum(((d - y) * mask) ** 2) / max(mask.sum(), 1)))
    from scipy.optimize import minimize_scalar

    near = np.abs(d) < 3.0  # voxels far from the boundary carry no information on tau
    r = minimize_scalar(lambda lt: _nll_labels(d[near], y[near], math.exp(lt)), bounds=(math.log(1e-3), math.log(2.0)), method="bounded")
    return float(math.exp(r.x))


# ---------------------------------------------------------------------------------------------
# the fit
# ---------------------------------------------------------------------------------------------

#: The forward models a fit can use: the SDMNN network, the exact SDM, the network's search with an exact
#: polish, and the DeepSDF-style baseline.
FORWARD_MODELS = ("sdmnn", "exact", "hybrid", "deepsdf")


def check_forward(forward: str) -> str:
    """``forward`` if it names a forward model; the old name ``nn`` is refused with a hint."""
    if forward == "nn":
        raise FitError("the network's forward model is called 'sdmnn' now; use forward='sdmnn' (--forward sdmnn)")
    if forward not in FORWARD_MODELS:
        raise FitError(f"forward must be one of {', '.join(FORWARD_MODELS)}, got {forward!r}")
    return forward


def fit(observed, grid: Grid, family: str = "cochlea", observed_kind: str = "labels", forward: str = "sdmnn", seed: int = 0,
        model=None, prior: dict | None = None, tau: float | None = None, sigma: float | None = None, band: float | None = None,
        n_starts: int = 3, n_screen: int = 64, n_samples: int = 4000, correlation_mm: float = 0.6,
        max_exact: int = 80) -> FitResult:
    """Posterior over a family's parameters given an observed label map or SDM on ``grid``.

    Parameters
    ----------
    observed : ndarray
        Label map (1 inside, 0 outside) or SDM (mm, negative inside) on ``grid``.
    forward : {"sdmnn", "exact", "hybrid", "deepsdf"}
        The forward model: a learned one (``model``, default the shipped one), the exact SDM, or both.
    prior : dict, optional
        name -> (low, high) sub-ranges of the uniform prior (default: the family's ranges).
    tau, sigma : float, optional
        Label softness / SDM noise in mm; estimated at the first MAP when not given.
    band : float, optional
        For SDM targets: use only voxels with |observed| <= band mm.
    """
    t0 = time.perf_counter()
    fam = get_family(family)
    check_forward(forward)
    y = check_observed(observed, observed_kind)
    if y.shape != grid.shape:
        raise FitError(f"the observed image's shape {y.shape} does not match its grid {grid.shape}")
    low, high = _prior_box(fam, prior)
    mask = np.ones_like(y) if band is None or observed_kind == "labels" else (np.abs(y) <= band).astype(np.float32)
    network = "deepsdf" if forward == "deepsdf" else "sdmnn"
    evals = {network: 0, "exact": 0}
    rng = np.random.default_rng(seed)
    learned = forward != "exact"
    net = None
    if learned:
        from .nn.checkpoint import load_model

        net = model or load_model(family=fam.name, arch=network)
        if net.family.name != fam.name:
            raise FitError(f"the model was trained for the {net.family.name} family, not {fam.name}")
        if net.grid != grid:
            raise FitError(f"the observed image's grid {grid.to_dict()} differs from the model's {net.grid.to_dict()}; "
                           "resample it onto the model grid, or use --forward exact")

    def exact_sdm_of(theta):
        from .sdm import exact_sdm

        evals["exact"] += 1
        return exact_sdm(fam.mesh(np.clip(theta, fam.space.low, fam.space.high)), grid)

    # 1. global search
    if learned:
        theta, d_map = _nn_search(net, y, mask, observed_kind, low, high, n_screen, n_starts, seed, tau, sigma, evals)
    else:
        theta, d_map = _exact_screen(exact_sdm_of, y, mask, observed_kind, low, high, n_screen, seed, tau, sigma)
    noise_value = (tau if observed_kind == "labels" else sigma) or _estimate_noise(observed_kind, d_map, y, mask)

    # 2. the noise model of the forward model that gives the posterior
    final_is_exact = forward in ("exact", "hybrid")
    model_err = 0.0 if final_is_exact else _model_error(net)
    temper = 1.0 if final_is_exact else max(1.0, (correlation_mm / min(grid.spacing)) ** 3)
    if observed_kind == "labels":
        noise_eff = math.sqrt(noise_value**2 + 3 * model_err**2 / math.pi**2)
    else:
        noise_eff = math.sqrt(noise_value**2 + model_err**2)

    def nll_np(d):
        v = _nll_labels(d, y, noise_eff) if observed_kind == "labels" else _nll_sdm(d, y, noise_eff, mask)
        return v / temper

    # 3. polish and Laplace approximation
    span = high - low
    if forward == "hybrid":
        # a few Levenberg-Marquardt steps on the exact likelihood with the network's Jacobian (one exact SDM
        # each), then two with the exact Jacobian by finite differences, which lands on the exact optimum
        nn_jac = lambda th, d: _surrogate_jacobian(net, th, low, high)  # noqa: E731
        ex_jac = lambda th, d: _exact_jacobian(exact_sdm_of, th, d, low, high)  # noqa: E731
        theta, d_map, _ = _levenberg_marquardt(nn_jac, exact_sdm_of, nll_np, observed_kind, y, mask, lambda: noise_eff, theta, low, high, max_exact // 2)
        theta, d_map, J = _levenberg_marquardt(ex_jac, exact_sdm_of, nll_np, observed_kind, y, mask, lambda: noise_eff, theta, low, high, max_exact // 2, max_iter=2)
        if (tau if observed_kind == "labels" else sigma) is None:  # the noise at the exact MAP, for the posterior's width
            noise_value = noise_eff = max(_estimate_noise(observed_kind, d_map, y, mask), 1e-3)
        _, w = _likelihood_derivatives(observed_kind, d_map, y, mask, noise_eff)
        hessian_u = J.T @ (w[:, None] * J) / temper  # Gauss-Newton (Fisher) Hessian with the exact Jacobian
        log_post = -nll_np(d_map)
    elif forward == "exact":
        theta = _exact_polish(lambda th: nll_np(exact_sdm_of(th)), theta, low, high, max_exact)
        d_map = exact_sdm_of(theta)
        if (tau if observed_kind == "labels" else sigma) is None:
            noise_value = noise_eff = max(_estimate_noise(observed_kind, d_map, y, mask), 1e-3)
        hessian_u = _fd_hessian(lambda u: nll_np(exact_sdm_of(low + u * span)), (theta - low) / span)
        log_post = -nll_np(d_map)
    else:
        theta, hessian_u, log_post = _nn_laplace(net, y, mask, observed_kind, noise_eff, temper, theta, low, high, evals)
    cov = _covariance(hessian_u, span)
    samples = _truncated_gaussian(rng, theta, cov, low, high, n_samples)
    names = fam.names
    return FitResult(
        names=names, params=dict(zip(names, map(float, theta))), mean=dict(zip(names, map(float, samples.mean(0)))),
        std=dict(zip(names, map(float, samples.std(0)))), samples=samples, seconds=time.perf_counter() - t0,
        evaluations=evals, forward=forward, observed_kind=observed_kind,
        noise={"tau" if observed_kind == "labels" else "sigma": noise_value, "model_error": model_err,
               "effective": noise_eff, "temper": temper},
        log_posterior=float(log_post), covariance=cov,
    )


def _prior_box(fam, prior):
    low, high = fam.space.low.copy(), fam.space.high.copy()
    for name, (lo, hi) in (prior or {}).items():
        if name not in fam.names:
            raise FitError(f"unknown parameter {name!r} in the prior; the parameters are {', '.join(fam.names)}")
        i = fam.names.index(name)
        if not (fam.space.low[i] <= lo < hi <= fam.space.high[i]):
            raise FitError(f"the prior of {name} must be a sub-range of [{fam.space.low[i]:g}, {fam.space.high[i]:g}], got [{lo:g}, {hi:g}]")
        low[i], high[i] = lo, hi
    return low, high


def _model_error(net) -> float:
    """The learned model's error near the surface as a Gaussian scale (mm): 1.25 x its mean |error|."""
    acc = (net.meta.get("accuracy") or {}).get("validation") or {}
    return 1.25 * float(acc.get("band_mae", 0.05))


def _sobol(n, low, high, seed):
    from scipy.stats import qmc

    return low + qmc.Sobol(len(low), scramble=True, seed=seed).random(n) * (high - low)


def _nn_search(net, y, mask, kind, low, high, n_screen, n_starts, seed, tau, sigma, evals):
    """Screen Sobol points with the network, then batched L-BFGS from the best ``n_starts``."""
    yt, mt = torch.from_numpy(y)[None], torch.from_numpy(mask)[None]
    lo, span = torch.tensor(low, dtype=torch.float32), torch.tensor(high - low, dtype=torch.float32)
    scale0 = tau or sigma or 0.5 * float(min(net.grid.spacing))

    def nll(theta, scale):
        d = net.predict_torch(theta)
        evals[net.arch] += len(theta)
        return _nll_labels(d, yt, scale) if kind == "labels" else _nll_sdm(d, yt, scale, mt)

    screen = torch.tensor(_sobol(n_screen, low, high, seed), dtype=torch.float32)
    with torch.no_grad():
        scores = torch.cat([nll(screen[s : s + 16], scale0) for s in range(0, n_screen, 16)])
    start = screen[torch.argsort(scores)[:n_starts]]
    u = ((start - lo) / span).clamp(1e-4, 1 - 1e-4)
    z = torch.logit(u).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1, max_iter=25, line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = nll(lo + span * torch.sigmoid(z), scale0).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        theta = lo + span * torch.sigmoid(z)
        losses = nll(theta, scale0)
        best = theta[torch.argmin(losses)]
        d = net.predict_torch(best[None])[0].numpy()
    return best.double().numpy(), d


def _nn_laplace(net, y, mask, kind, noise, temper, theta, low, high, evals):
    """Refine the MAP with the final noise model, then the autograd Hessian in unit-box coordinates."""
    yt, mt = torch.from_numpy(y)[None], torch.from_numpy(mask)[None]
    lo, span = torch.tensor(low, dtype=torch.float32), torch.tensor(high - low, dtype=torch.float32)

    def nll_u(u):
        d = net.predict_torch((lo + span * u)[None])
        evals[net.arch] += 1
        v = _nll_labels(d, yt, noise) if kind == "labels" else _nll_sdm(d, yt, noise, mt)
        return v[0] / temper

    u0 = torch.tensor((theta - low) / (high - low), dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    z = torch.logit(u0).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1, max_iter=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll_u(torch.sigmoid(z))
        loss.backward()
        return loss

    opt.step(closure)
    u = torch.sigmoid(z).detach()
    h = torch.autograd.functional.hessian(nll_u, u).double().numpy()
    with torch.no_grad():
        log_post = -float(nll_u(u))
    return low + u.double().numpy() * (high - low), h, log_post


def _surrogate_jacobian(net, theta, low, high, h: float = 1e-3) -> np.ndarray:
    """d SDM / d u (unit-box coordinates) of the network at theta, by central differences: (N, d)."""
    span = high - low
    u = np.clip((theta - low) / span, h, 1 - h)
    pts = np.concatenate([u + h * np.eye(len(u)), u - h * np.eye(len(u))])
    with torch.no_grad():
        d = net.predict_torch(torch.tensor(low + pts * span, dtype=torch.float32)).double().numpy()
    k = len(u)
    return ((d[:k] - d[k:]) / (2 * h)).reshape(k, -1).T


def _likelihood_derivatives(kind, d, y, mask, noise):
    """dNLL/dd and the Fisher weight d2NLL/dd2 per voxel, for the exact SDM ``d``."""
    if kind == "labels":
        p = 1 / (1 + np.exp(np.clip(d / noise, -60, 60)))  # sigmoid(-d / tau)
        return (-(p - y) / noise).ravel(), (p * (1 - p) / noise**2).ravel()
    m = mask.ravel()
    return ((d - y).ravel() * m / noise**2), m / noise**2


def _exact_jacobian(exact_sdm_of, theta, d, low, high, h: float = 1e-3) -> np.ndarray:
    """d SDM / d u of the exact SDM at theta (whose SDM is ``d``), by forward differences: (N, d)."""
    span = high - low
    u = (theta - low) / span
    cols = []
    for i in range(len(u)):
        step = h if u[i] + h <= 1 else -h
        e = np.zeros(len(u))
        e[i] = step
        cols.append(((exact_sdm_of(low + (u + e) * span).astype(np.float64) - d) / step).ravel())
    return np.stack(cols, 1)


def _levenberg_marquardt(jacobian, exact_sdm_of, nll, kind, y, mask, noise, theta, low, high, max_exact, max_iter=50, tol=1e-6):
    """Levenberg-Marquardt on the exact likelihood in unit-box coordinates. ``jacobian(theta, d)`` gives
    d SDM / d u: the network's (cheap; then the fixed point has J^T dNLL/dd(exact) = 0, the exact optimum
    on a noise-free target whatever the network's bias) or the exact one by finite differences.
    Returns (theta, exact SDM there, the last Jacobian)."""
    span = high - low
    u = (theta - low) / span
    d = exact_sdm_of(theta).astype(np.float64)
    f = nll(d)
    lam = 1e-3
    J = None
    for _ in range(max_iter):
        if max_exact < 1:
            break
        J = jacobian(low + u * span, d)
        g_d, w = _likelihood_derivatives(kind, d, y, mask, noise())
        g, H = J.T @ g_d, J.T @ (w[:, None] * J)
        accepted = False
        while max_exact >= 1 and lam < 1e8:
            u_new = np.clip(u - np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), g), 0, 1)
            d_new = exact_sdm_of(low + u_new * span).astype(np.float64)
            max_exact -= 1
            f_new = nll(d_new)
            if f_new <= f:
                lam, accepted = max(lam / 10, 1e-9), True
                break
            lam *= 10
        if not accepted:
            break
        moved = np.abs(u_new - u).max()
        u, d, f = u_new, d_new, f_new
        if moved < tol:
            break
    if J is None:
        J = jacobian(low + u * span, d)
    return low + u * span, d, J


def _exact_screen(exact_sdm_of, y, mask, kind, low, high, n_screen, seed, tau, sigma):
    scale0 = tau or sigma or 0.1
    best, best_v, best_d = None, np.inf, None
    for theta in _sobol(n_screen, low, high, seed):
        d = exact_sdm_of(theta)
        v = _nll_labels(d, y, scale0) if kind == "labels" else _nll_sdm(d, y, scale0, mask)
        if v < best_v:
            best, best_v, best_d = theta, v, d
    return best, best_d


def _exact_polish(f, theta, low, high, max_evals, step: float = 0.10):
    """Bounded Nelder-Mead in unit-box coordinates from ``theta`` (a coarse screen's best), with an
    initial simplex of ``step`` times each range."""
    from scipy.optimize import minimize

    span = high - low
    u0 = (theta - low) / span
    simplex = [u0] + [np.clip(u0 + step * e * (1 if u0[i] < 0.5 else -1), 0, 1) for i, e in enumerate(np.eye(len(u0)))]
    r = minimize(lambda u: f(low + np.clip(u, 0, 1) * span), u0, method="Nelder-Mead", bounds=[(0, 1)] * len(u0),
                 options={"initial_simplex": np.array(simplex), "maxfev": max_evals, "xatol": 1e-4, "fatol": 1e-2})
    return low + np.clip(r.x, 0, 1) * span


def _fd_hessian(f, u, h: float = 2e-3):
    """Central finite-difference Hessian of f at u (unit-box coordinates), steps kept inside the box."""
    n = len(u)
    u = np.clip(u, h, 1 - h)
    f0 = f(u)
    H = np.zeros((n, n))
    E = np.eye(n) * h
    fp = [f(u + E[i]) for i in range(n)]
    fm = [f(u - E[i]) for i in range(n)]
    for i in range(n):
        H[i, i] = (fp[i] - 2 * f0 + fm[i]) / h**2
        for j in range(i + 1, n):
            fpp, fmm = f(u + E[i] + E[j]), f(u - E[i] - E[j])
            H[i, j] = H[j, i] = (fpp - fp[i] - fp[j] + 2 * f0 - fm[i] - fm[j] + fmm) / (2 * h**2)
    return H


def _covariance(hessian_u, span):
    """Covariance in the family's units from a Hessian in unit-box coordinates (made positive definite)."""
    w, V = np.linalg.eigh(0.5 * (hessian_u + hessian_u.T))
    w = np.maximum(w, 1e-6)  # a flat direction gets a wide, not a negative, variance
    cov_u = (V / w) @ V.T
    return cov_u * np.outer(span, span)


def _truncated_gaussian(rng, mean, cov, low, high, n):
    out = np.empty((0, len(mean)))
    for _ in range(50):
        s = rng.multivariate_normal(mean, cov, size=2 * n)
        out = np.concatenate([out, s[np.all((s >= low) & (s <= high), axis=1)]])
        if len(out) >= n:
            return out[:n]
    return np.clip(rng.multivariate_normal(mean, cov, size=n), low, high)  # mass almost all outside: clip


def fitted_sdm(result: FitResult, grid: Grid, family: str) -> np.ndarray:
    """The exact SDM of the MAP parameters on ``grid``."""
    from .sdm import exact_sdm

    return exact_sdm(get_family(family).mesh(result.params), grid)


def synthetic_target(family: str, params, kind: str = "labels", tau: float = 0.05, sigma: float = 0.05, seed: int = 0, grid: Grid | None = None):
    """An observed image for tests and studies: labels drawn from the logistic model around the exact
    SDM (boundary noise of scale ``tau`` mm; tau=0: a clean label map), or the exact SDM plus Gaussian noise."""
    from .sdm import exact_sdm

    fam = get_family(family)
    grid = grid or fam.grid
    d = exact_sdm(fam.mesh(params), grid).astype(np.float64)
    rng = np.random.default_rng(seed)
    if kind == "labels":
        if tau <= 0:
            return (d < 0).astype(np.uint8), grid
        p_inside = 1 / (1 + np.exp(np.clip(d / tau, -60, 60)))
        return (rng.random(d.shape) < p_inside).astype(np.uint8), grid
    return (d + sigma * rng.standard_normal(d.shape)).astype(np.float32), grid
