"""File access kept inside the configured roots: names and links that lead elsewhere are refused.

Split files name images by bare file name and the app opens only what lies under its data, models,
runs and cache roots, so a crafted CSV, a planted symlink or a typed path cannot reach other files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from cxrcore.errors import ConfigError, DatasetError


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


def confine(path: str | os.PathLike, roots: Iterable[str | os.PathLike], *, what: str) -> Path:
    """A path typed by a user, resolved, if it lies inside one of `roots`; ConfigError otherwise."""
    roots = [Path(r).resolve() for r in roots]
    real = Path(path).expanduser().resolve()
    if any(is_inside(real, r) for r in roots):
        return real
    raise ConfigError(f"the {what} '{path}' is outside the folders this app may read.",
                      fix="put the file under " + " or ".join(str(r) for r in roots) + ".")


__all__ = ["confine", "escaping_links", "is_inside", "resolve_image"]
