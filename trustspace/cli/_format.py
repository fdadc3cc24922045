"""How the CLI prints figures: integral numbers as integers (``3865``, not ``3865.0``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["format_result", "number"]

_EXACT_INT = 2.0**53  # beyond this a float no longer holds every integer


def number(value: Any, digits: int | None = None) -> str:
    """One figure as text: an integral float as an integer, others as ``repr`` (all digits)
    or, with ``digits``, rounded to that many decimals without trailing zeros."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isfinite(v) and v.is_integer() and abs(v) < _EXACT_INT:
            return str(int(v))
        if digits is None or not math.isfinite(v):
            return repr(v)
        text = f"{v:.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def format_result(value: Any) -> str:
    """A statistic's value as the CLI prints it: a number, a Series or a DataFrame (pandas'
    layout, every cell through ``number`` with 6 decimals), or anything else by ``str``."""
    import pandas as pd

    if isinstance(value, pd.DataFrame | pd.Series):
        return value.map(lambda v: number(v, 6)).to_string()
    if isinstance(value, np.ndarray):
        return "[" + ", ".join(number(v) for v in value.ravel().tolist()) + "]"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(number(v) for v in value) + "]"
    return number(value)
