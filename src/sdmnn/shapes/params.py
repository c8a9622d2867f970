"""Parameter spaces: names, units, ranges and defaults of a shape family, and their checks."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError


@dataclass(frozen=True)
class Parameter:
    name: str
    unit: str
    low: float
    high: float
    default: float
    description: str = ""


@dataclass(frozen=True)
class ParameterSpace:
    """An ordered box of named parameters. ``params`` may be a mapping name -> value or a vector."""

    parameters: tuple[Parameter, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return {p.name: (p.low, p.high) for p in self.parameters}

    @property
    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.parameters}

    @property
    def low(self) -> np.ndarray:
        return np.array([p.low for p in self.parameters])

    @property
    def high(self) -> np.ndarray:
        return np.array([p.high for p in self.parameters])

    def __len__(self) -> int:
        return len(self.parameters)

    def vector(self, params, tol: float = 1e-9) -> np.ndarray:
        """Check ``params`` (a mapping or a length-d vector) and return it as a float64 vector.

        Raises ParameterError naming the first missing, unknown, non-finite or out-of-range value.
        """
        if isinstance(params, Mapping):
            unknown = [k for k in params if k not in self.names]
            if unknown:
                raise ParameterError(f"unknown parameter {unknown[0]!r}; the parameters are {', '.join(self.names)}")
            missing = [n for n in self.names if n not in params]
            if missing:
                raise ParameterError(f"missing parameter {missing[0]!r}; give all of {', '.join(self.names)}")
            values = [params[n] for n in self.names]
        else:
            values = list(np.asarray(params, dtype=object).ravel())
            if len(values) != len(self):
                raise ParameterError(f"expected {len(self)} parameters ({', '.join(self.names)}), got {len(values)}")
        out = np.empty(len(self))
        for i, (p, v) in enumerate(zip(self.parameters, values)):
            try:
                if isinstance(v, (bool, np.bool_, str, bytes)):  # float() would read True as 1 and "3" as 3
                    raise TypeError
                v = float(v)
            except (TypeError, ValueError):
                raise ParameterError(f"{p.name} must be a number, got {v!r}") from None
            except OverflowError:
                raise ParameterError(f"{p.name} must be a finite number, got one too large for a float") from None
            if not math.isfinite(v):
                raise ParameterError(f"{p.name} must be a finite number, got {v}")
            span = tol * (p.high - p.low)
            if not (p.low - span <= v <= p.high + span):
                raise ParameterError(f"{p.name} must lie in [{p.low:g}, {p.high:g}]" + (f" {p.unit}" if p.unit else "")
                                     + (f", got {v:g}" if float(f"{v:g}") == v else f", got {v!r}"))  # 3.0000001 is not 3
            out[i] = min(max(v, p.low), p.high)
        return out

    def matrix(self, params) -> np.ndarray:
        """Check a batch: a (B, d) array or a list of mappings -> (B, d) float64."""
        if isinstance(params, Mapping):
            return self.vector(params)[None]
        if _mappings(params):
            return np.stack([self.vector(row) for row in params])
        try:  # as objects: each value is checked by ``vector`` (a float array would have read True as 1, "3" as 3)
            arr = np.asarray(params, dtype=object)
        except (TypeError, ValueError):
            raise ParameterError(f"expected a mapping, a list of mappings or numbers of shape (B, {len(self)}); got "
                                 f"{type(params).__name__} that is none of these") from None
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != len(self) or not len(arr):
            raise ParameterError(f"expected parameters of shape (B, {len(self)}) with B >= 1, got {arr.shape}")
        return np.stack([self.vector(row) for row in arr])

    @staticmethod
    def is_single(params) -> bool:
        """Whether ``params`` (as ``matrix`` takes them) is one shape, a mapping or a flat vector, not a batch."""
        return isinstance(params, Mapping) or (not _mappings(params) and np.asarray(params, dtype=object).ndim == 1)

    def as_dict(self, vector) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, np.asarray(vector, dtype=float))}

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Map values from the declared ranges to [-1, 1] (last axis = parameters)."""
        return 2 * (np.asarray(x, dtype=float) - self.low) / (self.high - self.low) - 1

    def denormalise(self, u: np.ndarray) -> np.ndarray:
        return self.low + (np.asarray(u, dtype=float) + 1) / 2 * (self.high - self.low)

    def to_dict(self) -> list[dict]:
        return [
            {"name": p.name, "unit": p.unit, "low": p.low, "high": p.high, "default": p.default, "description": p.description}
            for p in self.parameters
        ]


def _mappings(params) -> bool:
    """A non-empty list or tuple of mappings: a batch of shapes by name."""
    return isinstance(params, (list, tuple)) and len(params) > 0 and all(isinstance(p, Mapping) for p in params)
