"""The fixed-width tables the validation benchmarks print: one row per audit, '-' where a row has no value."""

from __future__ import annotations

import math


def print_table(rows: list[dict], columns: list[tuple[str, str, int, str]]) -> None:
    """Print ``rows`` under ``columns``: (header, key, width, format) each, the last column left-aligned and
    unpadded. A value that is missing, None or NaN prints as '-'; a list as its items joined, or 'none'."""

    def cell(row: dict, key: str, width: int, spec: str, last: bool) -> str:
        value = row.get(key)
        if isinstance(value, list):
            text = ", ".join(map(str, value)) or "none"
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            text = "-"
        else:
            text = format(value, spec)
        return text if last else (f"{text:<{width}}" if key == columns[0][1] else f"{text:>{width}}")

    header = [h if i == len(columns) - 1 else (f"{h:<{w}}" if i == 0 else f"{h:>{w}}")
              for i, (h, _, w, _) in enumerate(columns)]
    print(" ".join(header))
    for row in rows:
        print(" ".join(cell(row, key, width, spec, i == len(columns) - 1)
                       for i, (_, key, width, spec) in enumerate(columns)))
