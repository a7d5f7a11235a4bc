"""File access kept inside the configured roots: names and links that lead elsewhere are refused.

Split files name images by bare file name and the app opens only what lies under its data, models,
runs and cache roots, so a crafted CSV or a planted symlink cannot reach other files.
"""
from __future__ import annotations

import os
from pathlib import Path

from cxrcore.errors import DatasetError


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when `path`, with every symlink followed, is `root` or lies under it."""
    real, base = Path(path).resolve(), Path(root).resolve()
    return real == base or base in real.parents


def resolve_image(root: str | os.PathLike, name: str) -> Path:
    """Path of an image inside `root`; refuses names (or symlinks) that resolve outside it."""
    base = Path(root).resolve()
    path = (base / name).resolve()
    if not is_inside(path, base):
        raise DatasetError(f"image '{name}' resolves outside the image folder {base}.",
                           fix="keep images (and any links) inside the image folder.")
    return path


def escaping_links(root: str | os.PathLike) -> set[str]:
    """Names of the entries directly in `root` that are symlinks leading outside it.

    One directory scan (symlink flags come with the listing), so checking 100,000 images costs
    milliseconds; only the links themselves are resolved.
    """
    base = Path(root).resolve()
    with os.scandir(base) as entries:
        links = [entry.name for entry in entries if entry.is_symlink()]
    return {name for name in links if not is_inside(base / name, base)}


__all__ = ["escaping_links", "is_inside", "resolve_image"]
