"""Radiologist boxes in NIH's BBox_List_2017 format: which finding is where on which image.

NIH's header is `Image Index,Finding Label,Bbox [x,y,w,h],,,`: the four numbers sit in the
column named "Bbox [x" and the three after it. Files with named `x,y,w,h` columns (a quoted
"Bbox [x,y,w,h]" header followed by empty ones, or `Image,Label,x,y,w,h`) are read the same way.
Coordinates are pixels of the original image (1024x1024 for NIH), x/y the top-left corner.
Labels go through `canonical_label` ("Infiltrate" -> Infiltration).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS, canonical_label
from cxrcore.errors import DatasetError

IMAGE, LABEL = "Image", "Label"
COORDS = ("x", "y", "w", "h")
#: Columns of a box table, as `read_boxes` returns it.
BOX_COLUMNS = (IMAGE, LABEL, *COORDS)
NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_IMAGE_KEYS = ("imageindex", "image", "imagename", "filename")
_LABEL_KEYS = ("findinglabel", "findinglabels", "label", "finding")
_COORD_KEYS = {"x": ("x", "bboxx", "xmin"), "y": ("y",), "w": ("w", "width"), "h": ("h", "height")}


def _key(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _find(header: list[str], keys: Sequence[str]) -> int | None:
    keyed = [_key(h) for h in header]
    for key in keys:
        if key in keyed:
            return keyed.index(key)
    return None


def _coord_columns(header: list[str], display: str) -> list[int]:
    """Indexes of x, y, w, h: named columns, else the 'Bbox [x,y,w,h]' column and the three after it."""
    named = [_find(header, _COORD_KEYS[c]) for c in COORDS]
    if all(i is not None for i in named) and len(set(named)) == 4:
        return [int(i) for i in named]  # type: ignore[arg-type]
    start = next((i for i, h in enumerate(header) if _key(h).startswith("bbox")), None)
    if start is None:
        raise DatasetError("no box columns: expected 'Bbox [x,y,w,h]' (NIH) or columns x, y, w, h.",
                           file=display, rows=[1], fix=f"use NIH's header: {NIH_HEADER}")
    return [start, start + 1, start + 2, start + 3]


def read_boxes(source: str | Path | bytes, *, name: str | None = None) -> pd.DataFrame:
    """Read a box file (NIH BBox_List_2017 format, .csv or .csv.gz, path or bytes) into a table.

    Columns Image, Label (canonical), x, y, w, h (float pixels). DatasetError names the lines
    with an unknown label, a missing or non-numeric coordinate, or a box of no area.
    """
    from cxrcore.data.dataset import _decode_text, _read_bytes  # shared file reading (gzip, UTF-8 checks)

    display = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "uploaded box file")
    text = _decode_text(_read_bytes(source, display), display)
    rows = [(i, r) for i, r in enumerate(csv.reader(io.StringIO(text)), start=1) if any(c.strip() for c in r)]
    if not rows:
        raise DatasetError("the box file is empty.", file=display, fix=f"start it with the header {NIH_HEADER}")
    header_line, header = rows[0]
    image_col = _find(header, _IMAGE_KEYS)
    label_col = _find(header, _LABEL_KEYS)
    if image_col is None or label_col is None:
        missing = "Image Index" if image_col is None else "Finding Label"
        raise DatasetError(f"no '{missing}' column in the header {','.join(header)[:80]!r}.", file=display,
                           rows=[header_line], column=missing, fix=f"use NIH's header: {NIH_HEADER}")
    coord_cols = _coord_columns(header, display)
    images, labels, values, lines = [], [], [], []
    bad_label, bad_number, bad_size = [], [], []
    for line, row in rows[1:]:
        cells = row + [""] * (max(coord_cols + [image_col, label_col]) + 1 - len(row))
        label = canonical_label(cells[label_col].strip())
        if label is None:
            bad_label.append((line, cells[label_col].strip()))
            continue
        try:
            coords = [float(cells[c]) for c in coord_cols]
        except ValueError:
            bad_number.append(line)
            continue
        if not all(np.isfinite(coords)):
            bad_number.append(line)
            continue
        if coords[2] <= 0 or coords[3] <= 0:
            bad_size.append(line)
            continue
        images.append(Path(cells[image_col].strip()).name)
        labels.append(label)
        values.append(coords)
        lines.append(line)
    if bad_label:
        shown = ", ".join(sorted({repr(v) for _, v in bad_label})[:3])
        raise DatasetError(f"unknown finding label(s) {shown}.", file=display, rows=[ln for ln, _ in bad_label],
                           column=header[label_col], fix=f"use one of the 14 labels: {', '.join(LABELS)}.")
    if bad_number:
        raise DatasetError("a box coordinate is missing or not a number.", file=display, rows=bad_number,
                           column="Bbox [x,y,w,h]", fix="each row needs four numbers x, y, w, h.")
    if bad_size:
        raise DatasetError("a box has zero or negative width or height.", file=display, rows=bad_size,
                           column="Bbox [x,y,w,h]", fix="w and h are the box's width and height in pixels.")
    if any(not name for name in images):
        empty = [ln for ln, n in zip(lines, images) if not n]
        raise DatasetError("a row has no image name.", file=display, rows=empty, column=header[image_col])
    frame = pd.DataFrame(np.asarray(values, dtype=np.float64).reshape(-1, 4), columns=list(COORDS))
    frame.insert(0, LABEL, labels)
    frame.insert(0, IMAGE, images)
    frame.attrs["source"] = display
    return frame


def boxes_for(boxes: pd.DataFrame | None, image: str) -> pd.DataFrame:
    """The boxes of one image (matched by file name); empty when there are none."""
    if boxes is None or boxes.empty:
        return pd.DataFrame(columns=list(BOX_COLUMNS))
    return boxes[boxes[IMAGE] == Path(str(image)).name].reset_index(drop=True)


def scale_box(box: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[float, ...]:
    """Map (x, y, w, h) from an image of (width, height) `from_size` to one of `to_size`."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x, y, w, h = (float(v) for v in box)
    return (x * sx, y * sy, w * sx, h * sy)


def write_boxes(boxes: pd.DataFrame, path: str | Path) -> Path:
    """Write a box table in NIH's BBox_List_2017 layout (header `Image Index,Finding Label,Bbox [x,y,w,h],,,`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        fh.write(NIH_HEADER + "\n")
        writer = csv.writer(fh, lineterminator="\n")
        for row in boxes[list(BOX_COLUMNS)].itertuples(index=False):
            writer.writerow([row[0], row[1], *(repr(float(v)) for v in row[2:])])
    return p


__all__ = ["BOX_COLUMNS", "NIH_HEADER", "boxes_for", "read_boxes", "scale_box", "write_boxes"]
