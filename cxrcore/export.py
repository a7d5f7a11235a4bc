"""CSV exports a spreadsheet opens safely: text cells that would run as formulas are quoted.

Image names, model names and labels come from user files; a cell such as `=HYPERLINK(...)` or
`@SUM(...)` would be executed by Excel or LibreOffice when a downloaded CSV is opened (CSV injection).
"""
from __future__ import annotations

import csv

import pandas as pd

#: What a spreadsheet treats as the start of a formula (OWASP's list: = + - @, tab, carriage return).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralize_cell(value: object) -> str:
    """The cell as text, prefixed with a quote when a spreadsheet would run it as a formula."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def neutralize_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot run as formulas; numbers (also negative ones) are left alone."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            text = out[column].astype(str)
            risky = text.str.startswith(FORMULA_START) & ~text.str.fullmatch(r"-?\d+(\.\d+)?")
            if risky.any():
                out.loc[risky, column] = "'" + text[risky]
    return out


def csv_text(frame: pd.DataFrame) -> str:
    """The frame as CSV text for a download or a report file, formula-safe."""
    return neutralize_formulas(frame).to_csv(index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")


__all__ = ["FORMULA_START", "csv_text", "neutralize_cell", "neutralize_formulas"]
