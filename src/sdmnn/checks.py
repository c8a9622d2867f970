"""What counts as a number and as an integer where the package checks its arguments: Python and numpy numbers,
never booleans (``True`` is an int to Python, rarely what a caller meant), never strings."""
from __future__ import annotations

import numbers

import numpy as np


def is_number(value) -> bool:
    """A real number (Python or numpy), not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_integer(value) -> bool:
    """An integer (Python or numpy), not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
