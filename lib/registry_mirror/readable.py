"""Numbers as an operator reads them: counts as integers with separators, sizes in human units,
ratios as percentages, never scientific notation, never a cell cut short with "..."."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

_UNITS = ("bytes", "kB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as S3 bills and `du --si` shows)."""
    value, unit = float(n), 0
    while abs(value) >= 1000 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{int(value):,} bytes" if unit == 0 else f"{value:,.1f} {_UNITS[unit]}"


def percent(ratio: float) -> str:
    """0.9997 -> '>99.9%': a share short of all is never rounded up to 100%."""
    text = f"{float(ratio):.1%}"
    if text == "100.0%" and ratio < 1:
        return ">99.9%"
    if text == "0.0%" and ratio > 0:
        return "<0.1%"
    return text.replace(".0%", "%")


def count(n: Any) -> str:
    return f"{int(n):,}"


def money(amount: float, currency: str) -> str:
    """12.3456, 'USD' -> '12.35 USD': a cost always carries its ISO 4217 code, two decimals, never
    scientific notation (a cost under a cent shows as '<0.01 USD')."""
    if 0 < amount < 0.005:
        return f"<0.01 {currency}"
    return f"{amount:,.2f} {currency}"


def price(amount: float, currency: str, unit: str) -> str:
    """0.039, 'USD', 'GB-month' -> '0.039 USD per GB-month': the figure as given, in plain decimals."""
    text = f"{amount:.10f}".rstrip("0").rstrip(".")
    return f"{text} {currency} per {unit}"


def summary_table(row: pd.Series, *, sizes: Iterable[str] = (), ratios: Iterable[str] = (),
                  labels: dict[str, str] | None = None) -> pd.DataFrame:
    """A one-row summary as `item | value` text: counts whole, sizes human, ratios in percent."""
    sizes, ratios, labels = set(sizes), set(ratios), labels or {}
    rows = []
    for key, value in row.items():
        if pd.isna(value):
            text = "-"
        elif key in sizes:
            text = human_bytes(value)
        elif key in ratios:
            text = percent(value)
        elif isinstance(value, float) and not float(value).is_integer():
            text = f"{value:,.2f}"
        else:
            text = count(value)
        rows.append({"item": labels.get(str(key), str(key).replace("_", " ")), "value": text})
    return pd.DataFrame(rows)


def configure_display() -> None:
    """pandas as the runbooks show tables: whole cell text, floats without scientific notation."""
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.float_format", _float)


def _float(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
