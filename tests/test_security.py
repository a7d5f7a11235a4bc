"""Security: file access stays inside the configured roots, exports are formula-safe, and the server
listens on localhost unless told otherwise."""
from __future__ import annotations

import csv
import io
import os
import tomllib
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrcore.data.paths import escaping_links, is_inside, resolve_image
from cxrcore.data.pipeline import resolve_image_paths
from cxrcore.errors import DatasetError
from cxrcore.export import csv_text, neutralize_cell

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """images/ with a real image, a link inside, a link to a file outside and a link to /etc/passwd."""
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((8, 8), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "secret.png"), np.full((8, 8), 7, np.uint8))
    os.symlink(folder / "a.png", folder / "inside.png")
    os.symlink(tmp_path / "secret.png", folder / "escape.png")
    os.symlink("/etc/passwd", folder / "passwd.png")
    return folder


def test_links_leading_outside_the_image_folder_are_found_in_one_scan(image_folder):
    assert escaping_links(image_folder) == {"escape.png", "passwd.png"}
    assert is_inside(image_folder / "inside.png", image_folder)
    assert not is_inside(image_folder / "escape.png", image_folder)
    with pytest.raises(DatasetError, match="outside the image folder"):
        resolve_image(image_folder, "../secret.png")


def test_training_and_prediction_paths_refuse_escaping_links(image_folder):
    ok = resolve_image_paths(pd.DataFrame({"Image": ["a.png", "inside.png"]}), image_folder)
    assert [Path(p).name for p in ok] == ["a.png", "inside.png"]
    with pytest.raises(DatasetError, match="2 image\\(s\\) are links leading outside") as err:
        resolve_image_paths(pd.DataFrame({"Image": ["a.png", "escape.png", "passwd.png"]}), image_folder)
    assert "escape.png" in str(err.value) and "passwd.png" in str(err.value)


def test_a_file_found_in_a_subfolder_through_a_link_is_not_used(tmp_path):
    """NIH's images_001/images/ layout is searched by file name; a linked folder must not widen it."""
    folder = tmp_path / "images"
    folder.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cv2.imwrite(str(outside / "x.png"), np.zeros((4, 4), np.uint8))
    os.symlink(outside / "x.png", folder / "x.png")
    with pytest.raises(DatasetError, match="outside"):
        resolve_image_paths(pd.DataFrame({"Image": ["x.png"]}), folder)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with a tiny (truncated) IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def test_previews_refuse_bombs_and_escaping_links_without_decoding(image_folder):
    from dashboard.loaders import preview

    (image_folder / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    assert preview(image_folder, "bomb.png") is None          # refused from the header: nothing allocated
    assert preview(image_folder, "escape.png") is None        # a link to a file outside the folder
    assert preview(image_folder, "passwd.png") is None
    assert preview(image_folder, "missing.png") is None
    thumb = preview(image_folder, "inside.png", size=4)
    assert thumb is not None and thumb.shape == (4, 4) and thumb.dtype == np.uint8 and int(thumb[0, 0]) == 128


def test_exports_neutralize_formula_cells_but_keep_numbers():
    frame = pd.DataFrame({"model": ["=HYPERLINK(\"http://x\")", "+1+1", "@SUM(A1)", "-cmd", "densenet"],
                          "auroc": [0.8, 0.7, 0.6, -0.5, 0.9], "note": ["-0.5", "ok", "\tx", "=1", "b"]})
    rows = list(csv.reader(io.StringIO(csv_text(frame))))
    assert [r[0] for r in rows[1:]] == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'@SUM(A1)", "'-cmd", "densenet"]
    assert rows[4] == ["'-cmd", "-0.5", "'=1"]                  # numbers (also negative) untouched
    assert rows[1][2] == "-0.5" and rows[3][2] == "'\tx"       # numeric-looking text is left as it is
    assert neutralize_cell("normal.png") == "normal.png" and neutralize_cell("=x") == "'=x"


def test_the_server_listens_on_localhost_by_default_with_an_upload_limit():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert 0 < config["server"]["maxUploadSize"] <= 200
    assert config["client"]["showErrorDetails"] in ("none", False)
    makefile = (ROOT / "Makefile").read_text()
    assert "HOST   ?= 127.0.0.1" in makefile and "--server.address $(HOST)" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "HOST=0.0.0.0" in readme and "What becomes reachable" in readme
