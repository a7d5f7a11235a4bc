"""The bad-input corpus: every kind of broken or hostile file a user may hand the CLI or the pages.

Each `Case` writes its input under a folder (`build`), says which CLI command reads it (`argv`) and
what must happen: `rejected` cases exit 2 with one line on stderr matching `reason`; `accepted` cases
are valid inputs in an unusual form (BOM, 16-bit PNG, extra columns...) that must give the right
result (`check`). `page` names the page surface that takes the same file in tests/test_bad_inputs.py.
Everything is generated here (nothing read from ../shared); `World` holds the good inputs cases refer
to: a small course-layout dataset, a tiny small_cnn model, a reference image and predictions.
"""
from __future__ import annotations

import gzip
import json
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS
from tests.csv_corpus import (million_row_csv, nih_frame, onehot_frame, smooth_image, to_csv_bytes, write_csv,
                              write_list, write_png)

REJECTED, ACCEPTED = "rejected", "accepted"
#: Page surfaces a case's file can be handed to (see tests/test_bad_inputs.py).
HOME_UPLOAD, RESULTS_UPLOAD, CAM_UPLOAD, MODELS_ROOT = "Home upload", "Results upload", "GradCAM upload", "models/"
MODEL_SIZE = 32


# ---------------------------------------------------------------------------------------------
# Good inputs the cases refer to


@dataclass
class World:
    """Good inputs made once per test module: dataset, tiny model, reference image, predictions."""

    root: Path
    data: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.root / "data"

    @property
    def dataset(self) -> Path:
        return self.data / "mini"

    @property
    def labels(self) -> Path:
        """The evaluated split (test.csv of the course-layout dataset)."""
        return self.dataset / "test.csv"

    @property
    def images(self) -> Path:
        return self.dataset / "images"

    @property
    def model(self) -> Path:
        return self.root / "models" / "tiny.keras"

    @property
    def gray(self) -> Path:
        """A good 8-bit grayscale PNG (48x40)."""
        return self.root / "ref" / "gray.png"

    @property
    def gray_pixels(self) -> np.ndarray:
        return reference_pixels()

    @property
    def predictions(self) -> Path:
        """Good predictions of every image of `labels`."""
        return self.root / "ref" / "predictions.csv"

    @cached_property
    def loaded(self):
        """The tiny model loaded in this process (for the expected results of accepted cases)."""
        from cxrcore.train.model import load_model

        return load_model(self.model)

    def probabilities(self, image01: np.ndarray) -> np.ndarray:
        """What the tiny model says about a [0, 1] grayscale image, in LABELS order."""
        return self.loaded.predict([np.asarray(image01, dtype=np.float32)])[0]


def reference_pixels() -> np.ndarray:
    """The reference image's uint8 pixels: smooth, 40 rows x 48 columns (not square on purpose)."""
    import cv2

    return cv2.resize(smooth_image(11, 64), (48, 40), interpolation=cv2.INTER_AREA)


def make_world(root: Path) -> World:
    """Write the good inputs under root (about 2 s: most of it saving the model)."""
    from cxrcore.data.dataset import load_split
    from cxrcore.data.pipeline import Normalization
    from cxrcore.data.predictions import write_predictions
    from cxrcore.train.model import ModelInfo, build_model, save_model
    from tests.app_support import make_course_dataset

    world = World(root)
    make_course_dataset(world.dataset, patients=12, per_patient=2, size=MODEL_SIZE)
    info = ModelInfo(input_size=MODEL_SIZE, normalization=Normalization.sample(), name="tiny", backbone="small_cnn")
    save_model(build_model(input_size=MODEL_SIZE, backbone="small_cnn"), info, world.model)
    world.gray.parent.mkdir(parents=True)
    write_png(world.gray, reference_pixels())
    split = load_split(world.labels)
    rng = np.random.default_rng(5)
    probs = np.clip(0.3 + 0.4 * split.labels + 0.2 * rng.standard_normal(split.labels.shape), 0.01, 0.99)
    write_predictions(world.predictions, split.images, probs)
    return world


# ---------------------------------------------------------------------------------------------
# The case type


@dataclass
class Outcome:
    """What one CLI run did, for a case's `check`."""

    code: int
    stdout: str
    stderr: str
    inputs: Path
    out: Path
    world: World


Builder = Callable[[Path, World], Path]
Argv = Callable[[Path, Path, World], list[str]]


@dataclass(frozen=True)
class Case:
    """One bad input: how to write it, which command reads it, and what must happen."""

    id: str
    kind: str            # csv | image | model | predictions
    description: str     # the input, in words (the doc's "input" column)
    build: Builder       # writes the input under a folder; returns the file (or folder) to hand over
    argv: Argv           # (input, output folder, world) -> CLI arguments
    outcome: str = REJECTED
    reason: str = ""     # regex the one stderr line must match (rejected cases)
    check: Callable[[Outcome], None] | None = None  # more checks: the right result, no side effect
    page: str | None = None  # page surface tested with the same file
    no_decoding: bool = False  # the pixel decoders must never run (decompression bombs)

    @property
    def command(self) -> str:
        return self.argv(Path("IN"), Path("OUT"), World(Path("W")))[0]

    @property
    def exit(self) -> int:
        return 2 if self.outcome == REJECTED else 0


# ---------------------------------------------------------------------------------------------
# CLI templates


def audit_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["audit", "--split", f"bad={bad}", "--format", "json", "--quiet"]


def list_audit_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["audit", "--split", f"bad={bad.parent / 'Data_Entry_2017_v2020.csv'}@{bad}", "--quiet"]


def split_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["split", "--input", str(bad), "--fractions", "train=0.6,test=0.4", "--out", str(out), "--format", "json"]


def cam_image_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["cam", "--model", str(world.model), "--image", str(bad), "--out", str(out / "map.png"), "--quiet"]


def cam_model_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["cam", "--model", str(bad), "--image", str(world.gray), "--out", str(out / "map.png"), "--quiet"]


def cam_split_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["cam", "--model", str(world.model), "--split", str(world.labels), "--images", str(bad),
            "--out", str(out / "maps"), "--quiet"]


def audit_images_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["audit", "--split", f"test={world.labels}", "--images", str(bad), "--format", "json", "--quiet"]


def predict_images_argv(bad: Path, out: Path, world: World) -> list[str]:
    """No --cache: the default cache/predictions is relative to the working folder, which must stay empty."""
    return ["predict", "--model", str(world.model), "--split", str(world.labels), "--images", str(bad),
            "--out", str(out / "predictions.csv"), "--quiet"]


def predict_split_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["predict", "--model", str(world.model), "--split", str(bad), "--images", str(world.images),
            "--out", str(out / "predictions.csv"), "--quiet"]


def merge_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["predict", "--merge", str(world.predictions), str(bad), "--out", str(out / "merged.csv")]


def evaluate_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["evaluate", "--labels", str(world.labels), "--predictions", str(bad), "--bootstrap", "0",
            "--format", "json"]


def compare_argv(bad: Path, out: Path, world: World) -> list[str]:
    return ["compare", "--labels", str(world.labels), "--predictions", str(world.predictions),
            "--predictions", str(bad), "--format", "json"]


# ---------------------------------------------------------------------------------------------
# Labels files (CSV)


def course_frame() -> pd.DataFrame:
    """A valid course one-hot table: 10 images of 5 patients, NIH-style names, PatientId column."""
    return onehot_frame(range(1, 6), per_patient=2, seed=3)


def _csv(name: str, make: Callable[[], bytes]) -> Builder:
    def build(folder: Path, world: World) -> Path:
        path = folder / name
        path.write_bytes(make())
        return path
    return build


def _edited(edit: Callable[[pd.DataFrame], pd.DataFrame | None], name: str = "split.csv", **csv: str) -> Builder:
    """A course table changed by `edit` (in place or returned), written as CSV."""
    def make() -> bytes:
        frame = course_frame().astype(object)
        changed = edit(frame)
        return to_csv_bytes(frame if changed is None else changed, **csv)
    return _csv(name, make)


def _set(column: str, row: int, value: object) -> Callable[[pd.DataFrame], None]:
    def edit(frame: pd.DataFrame) -> None:
        frame.loc[row, column] = value
    return edit


def _json_rows(expected: int) -> Callable[[Outcome], None]:
    def check(run: Outcome) -> None:
        report = json.loads(run.stdout)
        assert report["splits"]["bad"]["rows"] == expected, report["splits"]["bad"]
    check.__doc__ = f"all {expected:,} rows read, audit report printed"
    return check


def _latin1() -> bytes:
    frame = course_frame()
    frame["Site"] = ["Hôpital Saint-Étienne"] * len(frame)
    return frame.to_csv(index=False).encode("latin-1")


def _formula_frame() -> pd.DataFrame:
    frame = course_frame()
    frame.loc[0, "Image"] = "=cmd|'calc'!A0.png"
    frame.loc[2, "Image"] = "+SUM(1;2).png"
    frame.loc[4, "Image"] = "@HYPERLINK(x).png"
    frame["Note"] = ["=1+1"] + ["ok"] * (len(frame) - 1)
    return frame


def _formulas_are_quoted(run: Outcome) -> None:
    """Split written; every CSV cell a spreadsheet would run as a formula is written with a leading quote."""
    import csv

    written = sorted(run.out.glob("*.csv"))
    assert written, list(run.out.iterdir())
    cells = [cell for path in written for row in csv.reader(path.open(encoding="utf-8")) for cell in row]
    risky = [c for c in cells if c[:1] in ("=", "+", "@")]
    assert not risky, risky
    assert {"'=cmd|'calc'!A0.png", "'+SUM(1;2).png", "'@HYPERLINK(x).png", "'=1+1"} <= set(cells)


def _million(folder: Path, world: World) -> Path:
    path = folder / "million.csv"
    path.write_bytes(million_row_csv()[0])
    return path


def _list_with(names: list[str]) -> Builder:
    """An NIH table beside a list file naming `names` (returns the list file)."""
    def build(folder: Path, world: World) -> Path:
        table = nih_frame(range(1, 6), seed=2)
        write_csv(table, folder / "Data_Entry_2017_v2020.csv")
        return write_list(folder / "test_list.txt", [*table["Image Index"][:3], *names])
    return build


def _folder(name: str) -> Builder:
    def build(folder: Path, world: World) -> Path:
        (folder / name).mkdir()
        return folder / name
    return build


def _missing(name: str) -> Builder:
    def build(folder: Path, world: World) -> Path:
        return folder / name
    return build


def _gzip_cut() -> bytes:
    data = gzip.compress(to_csv_bytes(course_frame()))
    return data[: len(data) // 2]


def _ragged() -> bytes:
    lines = to_csv_bytes(course_frame()).decode().splitlines()
    lines[3] += ",surplus"
    return ("\n".join(lines) + "\n").encode()


def _nih_unknown_finding() -> bytes:
    table = nih_frame(range(1, 6), seed=4)
    table.loc[3, "Finding Labels"] = "Pneumonia|Covid-19"
    return to_csv_bytes(table)


def _symlinked_images(folder: Path, world: World) -> Path:
    """A copy of the world's image folder where one image is a link to a file outside it."""
    images = folder / "images"
    shutil.copytree(world.images, images)
    outside = folder / "outside"
    outside.mkdir()
    victim = sorted(images.iterdir())[0]
    shutil.copy(victim, outside / "secret.png")
    first_test = pd.read_csv(world.labels)["Image"].iloc[0]
    (images / first_test).unlink()
    (images / first_test).symlink_to(outside / "secret.png")
    return images


def _link_reported(run: Outcome) -> None:
    """The link is listed as unreadable (outside the image folder) and never read; the other images are checked."""
    report = json.loads(run.stdout)
    assert report["images"]["checked"] == 6 and report["images"]["missing"] == {}
    unreadable = report["images"]["unreadable"]["test"]
    first_test = pd.read_csv(run.world.labels)["Image"].iloc[0]
    assert [u["image"] for u in unreadable] == [first_test], unreadable
    assert "outside the image folder" in unreadable[0]["problem"]


CSV_CASES = [
    Case("csv_empty", "csv", "0-byte CSV", _csv("split.csv", lambda: b""), audit_argv,
         reason="the file is empty", page=HOME_UPLOAD),
    Case("csv_blank", "csv", "only blank lines and spaces", _csv("split.csv", lambda: b"\n \n\t\n"), audit_argv,
         reason="the file is empty"),
    Case("csv_header_only", "csv", "header row, no data rows",
         _csv("split.csv", lambda: to_csv_bytes(course_frame().iloc[:0])), audit_argv,
         reason="has a header but no rows"),
    Case("csv_semicolons", "csv", "semicolon-separated (European Excel)", _edited(lambda f: f, sep=";"),
         audit_argv, reason="separated by semicolons", page=HOME_UPLOAD),
    Case("csv_tabs", "csv", "tab-separated", _edited(lambda f: f, sep="\t"), audit_argv,
         reason="separated by tabs"),
    Case("csv_bom", "csv", "UTF-8 with a byte-order mark (Excel 'CSV UTF-8')",
         _csv("split.csv", lambda: b"\xef\xbb\xbf" + to_csv_bytes(course_frame())), audit_argv,
         outcome=ACCEPTED, check=_json_rows(10), page=HOME_UPLOAD),
    Case("csv_latin1", "csv", "Latin-1 bytes (a site name with accents)", _csv("split.csv", _latin1), audit_argv,
         reason=r"is not UTF-8 text \(byte 0x.. at byte \d+\).*Fix: save the file as UTF-8", page=HOME_UPLOAD),
    Case("csv_utf16", "csv", "UTF-16 (Excel 'Unicode text')",
         _csv("split.csv", lambda: to_csv_bytes(course_frame(), encoding="utf-16")), audit_argv,
         reason="is not UTF-8 text"),
    Case("csv_binary", "csv", "NUL bytes after the header (a binary file renamed .csv)",
         _csv("split.csv", lambda: b"Image,Atelectasis\n" + bytes(200)), audit_argv,
         reason="looks like a binary file"),
    Case("csv_gzip_truncated", "csv", "gzipped CSV cut in half", _csv("split.csv.gz", _gzip_cut), audit_argv,
         reason="the gzip file is damaged"),
    Case("csv_ragged_row", "csv", "one row with an extra field", _csv("split.csv", _ragged), audit_argv,
         reason=r"line 4.*not valid CSV"),
    Case("csv_missing_label_column", "csv", "the Hernia column left out",
         _edited(lambda f: f.drop(columns=["Hernia"])), audit_argv,
         reason="missing label column 'Hernia'", page=HOME_UPLOAD),
    Case("csv_misspelt_label_column", "csv", "'Cardiomegally' instead of 'Cardiomegaly'",
         _edited(lambda f: f.rename(columns={"Cardiomegaly": "Cardiomegally"})), audit_argv,
         reason="missing label column 'Cardiomegaly' \\(found 'Cardiomegally'\\?\\)"),
    Case("csv_missing_image_column", "csv", "no Image column ('File' instead)",
         _edited(lambda f: f.rename(columns={"Image": "File"})), audit_argv,
         reason="missing image column 'Image'"),
    Case("csv_extra_columns", "csv", "extra columns (Site, Notes) beside the labels",
         _edited(lambda f: f.assign(Site="A", Notes="follow-up")), audit_argv,
         outcome=ACCEPTED, check=_json_rows(10), page=HOME_UPLOAD),
    Case("csv_label_2", "csv", "a label cell holding 2", _edited(_set("Mass", 3, 2)), audit_argv,
         reason=r"line 5, column 'Mass': has label '2', not 0 or 1"),
    Case("csv_label_text", "csv", "a label cell holding 'yes'", _edited(_set("Edema", 0, "yes")), audit_argv,
         reason="has label 'yes', not 0 or 1"),
    Case("csv_label_uncertain", "csv", "CheXpert-style uncertainty label -1",
         _edited(_set("Effusion", 6, -1)), audit_argv, reason="uncertainty labels"),
    Case("csv_label_nan", "csv", "an empty label cell (NaN)", _edited(_set("Nodule", 2, "")), audit_argv,
         reason="line 4, column 'Nodule': has empty/NaN labels", page=HOME_UPLOAD),
    Case("csv_patient_nan", "csv", "an empty PatientId", _edited(_set("PatientId", 1, "")), audit_argv,
         reason="has empty PatientId values"),
    Case("csv_duplicate_rows", "csv", "two rows repeated verbatim (rejected by design: one row per image)",
         _edited(lambda f: pd.concat([f, f.iloc[:2]], ignore_index=True)), audit_argv,
         reason=r"lines 2, 3, 12, 13, column 'Image': image '00000001_000.png' and 3 other row\(s\) are duplicates",
         page=HOME_UPLOAD),
    Case("csv_million_rows", "csv", "1,000,000 rows (28 MB)", _million, audit_argv, outcome=ACCEPTED,
         check=_json_rows(1_000_000)),
    Case("csv_formula_path", "csv", "image name =cmd|' /C calc'!A0 (a spreadsheet formula with a path)",
         _edited(_set("Image", 0, "=cmd|' /C calc'!A0")), audit_argv,
         reason="image name '=cmd\\|' /C calc'!A0' is not a plain file name", page=HOME_UPLOAD),
    Case("csv_formula_names", "csv", "image names and a cell starting with = + @, written back by split",
         _csv("split.csv", lambda: to_csv_bytes(_formula_frame())), split_argv, outcome=ACCEPTED,
         check=_formulas_are_quoted),
    Case("csv_dotdot_name", "csv", "image name ../../etc/passwd", _edited(_set("Image", 4, "../../etc/passwd")),
         audit_argv, reason="line 6, column 'Image': image name '../../etc/passwd' is not a plain file name",
         page=HOME_UPLOAD),
    Case("csv_absolute_name", "csv", "image name /etc/passwd", _edited(_set("Image", 1, "/etc/passwd")),
         audit_argv, reason="image name '/etc/passwd' is not a plain file name"),
    Case("csv_windows_path_name", "csv", "image name C:\\Windows\\win.ini",
         _edited(_set("Image", 1, "C:\\Windows\\win.ini")), audit_argv,
         reason="is not a plain file name"),
    Case("csv_nih_unknown_finding", "csv", "NIH table with the finding 'Covid-19'",
         _csv("Data_Entry_2017_v2020.csv", _nih_unknown_finding), audit_argv,
         reason="column 'Finding Labels': unknown finding 'Covid-19'"),
    Case("csv_list_dotdot", "csv", "list file (TABLE@LIST) naming ../secret.png", _list_with(["../secret.png"]),
         list_audit_argv, reason="line 4, column 'Image': image name '../secret.png' is not a plain file name"),
    Case("csv_list_alone", "csv", "a list file given without its label table",
         _list_with([]), audit_argv, reason="is a list of image names without labels"),
    Case("csv_is_folder", "csv", "a folder where the CSV should be", _folder("split.csv"), audit_argv,
         reason="is a folder, not a labels file"),
    Case("csv_missing_file", "csv", "a CSV path that does not exist", _missing("nowhere.csv"), audit_argv,
         reason="nowhere.csv: file not found"),
    Case("symlink_escape_cam", "csv", "image folder where one image is a link to a file outside it (cam --split)",
         _symlinked_images, cam_split_argv, reason="1 image\\(s\\) are links leading outside the image folder"),
    Case("symlink_escape_audit", "csv", "the same folder audited with --images: the link is reported, not read",
         _symlinked_images, audit_images_argv, outcome=ACCEPTED, check=_link_reported),
]


# ---------------------------------------------------------------------------------------------
# Images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG whose header claims width x height (8-bit gray) around tiny (or given) IDAT data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * (min(width, 64) + 1) * 2) if idat is None else idat
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def _encoded(ext: str, pixels: Callable[[], np.ndarray], **params: int) -> bytes:
    import cv2

    flags = [v for item in params.items() for v in (getattr(cv2, item[0]), item[1])]
    ok, data = cv2.imencode(ext, pixels(), flags)
    assert ok
    return data.tobytes()


def _image(name: str, make: Callable[[], bytes]) -> Builder:
    def build(folder: Path, world: World) -> Path:
        path = folder / name
        path.write_bytes(make())
        return path
    return build


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is patched to claim width x height."""
    data = bytearray(_encoded(".jpg", reference_pixels))
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    data[pos + 5:pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def dicom_dataset(transfer_syntax: str):
    """A digital X-ray DICOM dataset with its file meta and patient, no pixels yet."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Bad^Input", "0001", "DX"
    return ds


def _dicom(with_pixels: bool) -> Callable[[], bytes]:
    def make() -> bytes:
        import io

        from pydicom.uid import ExplicitVRLittleEndian

        ds = dicom_dataset(ExplicitVRLittleEndian)
        if with_pixels:  # header says 64x64 16-bit, the pixel data holds 100 bytes
            ds.Rows = ds.Columns = 64
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelData = bytes(100)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    return make


def _same_as(expected: Callable[[], np.ndarray]) -> Callable[[Outcome], None]:
    """The figure was written and the printed probabilities are the model's on `expected` ([0, 1] gray)."""
    def check(run: Outcome) -> None:
        import cv2

        figure = cv2.imread(str(run.out / "map.png"))
        assert figure is not None and figure.shape[0] > 50
        printed = dict(line.split("\t") for line in run.stdout.strip().splitlines())
        assert len(printed) == 4, run.stdout
        want = run.world.probabilities(expected())
        for label, value in printed.items():
            assert abs(float(value) - want[LABELS.index(label)]) < 2e-4, (label, value, want[LABELS.index(label)])
    check.__doc__ = "figure written; the printed probabilities equal the model's on the plain grayscale image"
    return check


def _gray01() -> np.ndarray:
    return reference_pixels().astype(np.float32) / 255


def _jpeg_pixels() -> np.ndarray:
    import cv2

    decoded = cv2.imdecode(np.frombuffer(_encoded(".jpg", reference_pixels), np.uint8), cv2.IMREAD_GRAYSCALE)
    return decoded.astype(np.float32) / 255


def _rgba() -> np.ndarray:
    gray = reference_pixels()
    alpha = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint8)  # ignored by design
    return np.dstack([gray, gray, gray, alpha])


def _damaged_idat() -> bytes:
    return png_claiming(48, 40, idat=b"garbage, not a zlib stream" * 3)


def _truncated(make: Callable[[], bytes]) -> Callable[[], bytes]:
    def cut() -> bytes:
        data = make()
        return data[: len(data) // 2]
    return cut


def _image_folder(name: str, make: Callable[[], bytes] | None) -> Builder:
    """A copy of the world's image folder with the split's first image replaced (or removed when make is None)."""
    def build(folder: Path, world: World) -> Path:
        images = folder / "images"
        shutil.copytree(world.images, images)
        first = images / pd.read_csv(world.labels)["Image"].iloc[2]
        first.unlink()
        if make is not None:
            first.write_bytes(make())
        return images
    return build


def _bomb_reported(run: Outcome) -> None:
    """The audit lists the bomb as unreadable without decoding it, and hashes the other images."""
    report = json.loads(run.stdout)
    bomb = pd.read_csv(run.world.labels)["Image"].iloc[2]
    assert report["images"]["checked"] == 6
    [problem] = report["images"]["unreadable"]["test"]
    assert problem["image"] == bomb and "decompression bomb" in problem["problem"], problem


_PNG = lambda: _encoded(".png", reference_pixels)  # noqa: E731 - a tiny factory, named for the table below

IMAGE_CASES = [
    Case("image_truncated_png", "image", "PNG cut in half (interrupted download)",
         _image("scan.png", _truncated(_PNG)), cam_image_argv, reason="the PNG file is truncated", page=CAM_UPLOAD),
    Case("image_truncated_jpeg", "image", "JPEG cut in half",
         _image("scan.jpg", _truncated(lambda: _encoded(".jpg", reference_pixels))), cam_image_argv,
         reason="the JPEG file is truncated", page=CAM_UPLOAD),
    Case("image_empty", "image", "0-byte .png", _image("scan.png", lambda: b""), cam_image_argv,
         reason=r"the image file is empty \(0 bytes\)", page=CAM_UPLOAD),
    Case("image_text", "image", "a text file named .png", _image("scan.png", lambda: b"this is not an image\n"),
         cam_image_argv, reason="not a PNG, JPEG or DICOM image", page=CAM_UPLOAD),
    Case("image_bmp", "image", "a valid BMP (a format the tool does not read)",
         _image("scan.bmp", lambda: _encoded(".bmp", reference_pixels)), cam_image_argv,
         reason="not a PNG, JPEG or DICOM image"),
    Case("image_png_named_jpg", "image", "a PNG named .jpg (wrong extension)", _image("scan.jpg", _PNG),
         cam_image_argv, outcome=ACCEPTED, check=_same_as(_gray01), page=CAM_UPLOAD),
    Case("image_jpeg_named_png", "image", "a JPEG named .png (wrong extension)",
         _image("scan.png", lambda: _encoded(".jpg", reference_pixels)), cam_image_argv, outcome=ACCEPTED,
         check=_same_as(_jpeg_pixels), page=CAM_UPLOAD),
    Case("image_16bit", "image", "16-bit grayscale PNG (values x257)",
         _image("scan.png", lambda: _encoded(".png", lambda: reference_pixels().astype(np.uint16) * 257)),
         cam_image_argv, outcome=ACCEPTED, check=_same_as(_gray01), page=CAM_UPLOAD),
    Case("image_rgba", "image", "RGBA PNG (gray in RGB, random alpha)", _image("scan.png", lambda: _encoded(
        ".png", _rgba)), cam_image_argv, outcome=ACCEPTED, check=_same_as(_gray01), page=CAM_UPLOAD),
    Case("image_1x1", "image", "1x1 pixel PNG", _image("scan.png", lambda: _encoded(
        ".png", lambda: np.full((1, 1), 77, np.uint8))), cam_image_argv, outcome=ACCEPTED,
        check=_same_as(lambda: np.full((1, 1), 77 / 255, np.float32)), page=CAM_UPLOAD),
    Case("image_bomb_png", "image", "PNG header claiming 30000x30000 around 200 bytes of data",
         _image("bomb.png", lambda: png_claiming(30000, 30000)), cam_image_argv,
         reason=r"30000x30000 = 900\.0 megapixels.*possible decompression bomb", page=CAM_UPLOAD, no_decoding=True),
    Case("image_bomb_jpeg", "image", "JPEG frame header claiming 60000x60000",
         _image("bomb.jpg", lambda: _jpeg_claiming(60000, 60000)), cam_image_argv,
         reason="possible decompression bomb", page=CAM_UPLOAD, no_decoding=True),
    Case("image_zero_size", "image", "PNG header claiming 0x0 pixels", _image("scan.png", lambda: png_claiming(0, 0)),
         cam_image_argv, reason="the header says the image is 0x0 pixels", page=CAM_UPLOAD),
    Case("image_damaged_idat", "image", "PNG with a valid header and end but garbage pixel data",
         _image("scan.png", _damaged_idat), cam_image_argv, reason="the PNG file is damaged and cannot be decoded",
         page=CAM_UPLOAD),
    Case("image_dicom_no_pixels", "image", "DICOM without pixel data (written by pydicom)",
         _image("study.dcm", _dicom(False)), cam_image_argv, reason="the DICOM file has no pixel data",
         page=CAM_UPLOAD),
    Case("image_dicom_short_pixels", "image", "DICOM whose pixel data is shorter than Rows x Columns",
         _image("study.dcm", _dicom(True)), cam_image_argv, reason="the DICOM pixel data cannot be decoded",
         page=CAM_UPLOAD),
    Case("image_is_folder", "image", "--image pointing at a folder", _folder("scan.png"), cam_image_argv,
         reason="this is a folder, not an image file"),
    Case("image_bomb_in_audited_folder", "image", "audit --images: one image of the folder is the 30000x30000 "
         "PNG header", _image_folder("bomb", lambda: png_claiming(30000, 30000)), audit_images_argv,
         outcome=ACCEPTED, check=_bomb_reported, no_decoding=True),
    Case("predict_truncated_image", "image", "predict: one image of the split truncated",
         _image_folder("truncated", _truncated(_PNG)), predict_images_argv, reason="the PNG file is truncated"),
    Case("predict_damaged_image", "image", "predict: one image with garbage pixel data (decoded by TensorFlow)",
         _image_folder("damaged", _damaged_idat), predict_images_argv,
         reason="the PNG file is damaged and cannot be decoded"),
    Case("predict_bomb_image", "image", "predict: one image is a 30000x30000 PNG header",
         _image_folder("bomb", lambda: png_claiming(30000, 30000)), predict_images_argv,
         reason="possible decompression bomb"),
    Case("predict_missing_image", "image", "predict: one image of the split missing",
         _image_folder("missing", None), predict_images_argv, reason="1 of 6 images are missing"),
]


# ---------------------------------------------------------------------------------------------
# Models


def _tiny_info(**changes: object) -> str:
    """The info JSON of a tiny small_cnn model, with `changes`."""
    info = {"format": 1, "name": "bad", "origin": "trained", "backbone": "small_cnn", "labels": list(LABELS),
            "input_size": MODEL_SIZE, "normalization": {"mode": "sample"}, "metadata": {}}
    return json.dumps({**info, **changes})


def _with_sidecar(name: str, write: Callable[[Path, World], None], sidecar: str | None = None) -> Builder:
    """Write a model file (and, unless sidecar is "", its JSON info beside it)."""
    def build(folder: Path, world: World) -> Path:
        path = folder / name
        write(path, world)
        if sidecar != "":
            path.with_suffix(".json").write_text(sidecar or _tiny_info(), encoding="utf-8")
        return path
    return build


def _bytes(data: bytes | Callable[[World], bytes]) -> Callable[[Path, World], None]:
    def write(path: Path, world: World) -> None:
        path.write_bytes(data(world) if callable(data) else data)
    return write


def _keras(make: Callable[[Path], object], h5: bool = False) -> Callable[[Path, World], None]:
    """Save the Keras model make(folder) builds (plain Keras: no info inside)."""
    def write(path: Path, world: World) -> None:
        model = make(path.parent)
        if h5:
            import logging

            logging.getLogger("absl").setLevel(logging.ERROR)  # "HDF5 is legacy" on save
        model.save(path)
    return write


def lambda_model(folder: Path):
    """A model whose Lambda layer writes folder/LAMBDA_RAN when called: proof that it ran, if it ever does.

    Building it calls the lambda once (the marker is removed right after); a safe loader never calls it."""
    import keras

    marker = folder / "LAMBDA_RAN"
    run = eval(f"lambda t: (open({str(marker)!r}, 'w').write('ran'), t)[1]")  # constant path: no closure
    inputs = keras.Input((MODEL_SIZE, MODEL_SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(run)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="sigmoid")(x))
    marker.unlink()
    return model


def _no_lambda_ran(run: Outcome) -> None:
    assert not (run.inputs / "LAMBDA_RAN").exists(), "the Lambda layer's code was executed"


def _foreign_module(world: World) -> bytes:
    """The tiny .keras model with its first layer's class pointed at os.system (code execution by config)."""
    import io

    source = zipfile.ZipFile(world.model)
    config = json.loads(source.read("config.json"))
    layer = config["config"]["layers"][1]
    layer.update({"module": "os", "class_name": "system", "registered_name": None})
    layer["config"] = {"command": "touch FOREIGN_RAN"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for item in source.infolist():
            zf.writestr(item, json.dumps(config) if item.filename == "config.json" else source.read(item))
    return buffer.getvalue()


def _no_foreign_code(run: Outcome) -> None:
    assert not (run.inputs / "FOREIGN_RAN").exists() and not (Path.cwd() / "FOREIGN_RAN").exists()


def _small_cnn(labels: tuple[str, ...] = LABELS) -> Callable[[Path], object]:
    def make(folder: Path):
        from cxrcore.train.model import build_model

        return build_model(labels, input_size=MODEL_SIZE, backbone="small_cnn")
    return make


def _cut(data: Callable[[World], bytes]) -> Callable[[World], bytes]:
    def cut(world: World) -> bytes:
        whole = data(world)
        return whole[: len(whole) // 2]
    return cut


def _h5_of_tiny(world: World) -> bytes:
    path = world.root / "models" / "tiny.h5"
    if not path.exists():
        _keras(lambda folder: world.loaded.model, h5=True)(path, world)
    return path.read_bytes()


def _weights_only_h5(path: Path, world: World) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", data=np.zeros((3, 14), "float32"))


def _zip_without_config(path: Path, world: World) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a model")


MODEL_CASES = [
    Case("model_truncated_h5", "model", "Keras .h5 cut in half (with its info JSON)",
         _with_sidecar("bad.h5", _bytes(_cut(_h5_of_tiny))), cam_model_argv,
         reason="the HDF5 model file is truncated or damaged", page=MODELS_ROOT),
    Case("model_truncated_keras", "model", ".keras cut in half (with its info JSON)",
         _with_sidecar("bad.keras", _bytes(_cut(lambda w: w.model.read_bytes()))), cam_model_argv,
         reason="the .keras file is truncated or damaged", page=MODELS_ROOT),
    Case("model_wrong_output_size", "model", "5 outputs, info JSON lists 14 labels",
         _with_sidecar("bad.keras", _keras(_small_cnn(LABELS[:5]))), cam_model_argv,
         reason="the model has 5 outputs but its label list has 14 labels", page=MODELS_ROOT),
    Case("model_wrong_input_size", "model", "32x32 model, info JSON says 64x64",
         _with_sidecar("bad.keras", _keras(_small_cnn()), _tiny_info(input_size=64)), cam_model_argv,
         reason="the model takes 32x32 images but its info says 64x64", page=MODELS_ROOT),
    Case("model_lambda_keras", "model", ".keras with a Lambda layer that would write a marker file",
         _with_sidecar("bad.keras", _keras(lambda_model)), cam_model_argv,
         reason="contains a Lambda layer, which runs arbitrary Python code on load; refused",
         check=_no_lambda_ran, page=MODELS_ROOT),
    Case("model_lambda_h5", "model", "legacy .h5 with the same Lambda layer",
         _with_sidecar("bad.h5", _keras(lambda_model, h5=True)), cam_model_argv,
         reason="contains a Lambda layer.*refused", check=_no_lambda_ran, page=MODELS_ROOT),
    Case("model_foreign_module", "model", ".keras whose config names os.system as a layer class",
         _with_sidecar("bad.keras", _bytes(_foreign_module)), cam_model_argv,
         reason="the model cannot be rebuilt safely", check=_no_foreign_code, page=MODELS_ROOT),
    Case("model_text_file", "model", "a text file named .keras", _with_sidecar("bad.keras", _bytes(b"hello\n")),
         cam_model_argv, reason=r"not a Keras model file \(.keras or .h5\)", page=MODELS_ROOT),
    Case("model_empty", "model", "0-byte .h5", _with_sidecar("bad.h5", _bytes(b"")), cam_model_argv,
         reason=r"the model file is empty \(0 bytes\)", page=MODELS_ROOT),
    Case("model_zip_without_config", "model", "a zip named .keras without config.json",
         _with_sidecar("bad.keras", _zip_without_config), cam_model_argv,
         reason=r"not a Keras model \(no config.json\)", page=MODELS_ROOT),
    Case("model_no_label_list", "model", ".keras saved by plain Keras, no info JSON",
         _with_sidecar("bad.keras", _keras(_small_cnn()), ""), cam_model_argv,
         reason="the model has no label list", page=MODELS_ROOT),
    Case("model_sidecar_not_json", "model", "good .keras, info JSON cut to '{'",
         _with_sidecar("bad.keras", _bytes(lambda w: w.model.read_bytes()), "{"), cam_model_argv,
         reason="bad.json: the model info is damaged: not valid JSON", page=MODELS_ROOT),
    Case("model_sidecar_unknown_label", "model", "good .keras, info JSON with the label 'Broken Leg'",
         _with_sidecar("bad.keras", _bytes(lambda w: w.model.read_bytes()), _tiny_info(labels=["Broken Leg"])),
         cam_model_argv, reason="unknown label 'Broken Leg'", page=MODELS_ROOT),
    Case("model_unknown_architecture", "model", ".h5 holding weights of an unknown architecture",
         _with_sidecar("bad.h5", _weights_only_h5), cam_model_argv, reason="unknown architecture",
         page=MODELS_ROOT),
    Case("model_is_folder", "model", "a folder named .keras", _folder("bad.keras"), cam_model_argv,
         reason="this is a folder, not a model file"),
    Case("model_predict_truncated", "model", "predict with the truncated .h5",
         _with_sidecar("bad.h5", _bytes(_cut(_h5_of_tiny))),
         lambda bad, out, world: ["predict", "--model", str(bad), "--split", str(world.labels), "--images",
                                  str(world.images), "--out", str(out / "p.csv"), "--quiet"],
         reason="truncated or damaged"),
]


# ---------------------------------------------------------------------------------------------
# Prediction files


def _predictions(edit: Callable[[list[list[str]]], list[list[str]] | None], name: str = "preds.csv",
                 encoding: str = "utf-8", sep: str = ",") -> Builder:
    """The world's good prediction file as rows of cells, changed by `edit`, written back."""
    def build(folder: Path, world: World) -> Path:
        import csv

        rows = list(csv.reader(world.predictions.open(encoding="utf-8")))
        rows = edit(rows) or rows
        path = folder / name
        path.write_bytes("".join(sep.join(r) + "\n" for r in rows).encode(encoding))
        return path
    return build


def _cell(row: int, column: int, value: str) -> Callable[[list[list[str]]], None]:
    def edit(rows: list[list[str]]) -> None:
        rows[row][column] = value
    return edit


def _column_names(change: Callable[[list[str]], list[str]]) -> Callable[[list[list[str]]], None]:
    def edit(rows: list[list[str]]) -> None:
        rows[0] = change(rows[0])
    return edit


def _every(change: Callable[[int, list[str]], list[str]]) -> Callable[[list[list[str]]], list[list[str]]]:
    return lambda rows: [rows[0]] + [change(i, r) for i, r in enumerate(rows[1:])]


def _same_auroc(run: Outcome) -> None:
    """The same AUROCs as the plain file."""
    from cxrcore.data.dataset import load_split
    from cxrcore.data.predictions import align, read_predictions
    from cxrcore.evaluate.metrics import evaluate

    data = align(read_predictions(run.world.predictions), load_split(run.world.labels))
    want = evaluate(data.y, data.probs, data.labels, data.patient_ids, n_bootstrap=0)
    got = json.loads(run.stdout)
    assert got["n_images"] == 6
    assert set(got["classes"]) == set(want.classes)
    for label, metrics in want.classes.items():
        a, b = got["classes"][label]["auroc"], metrics.auroc
        assert (a is None and np.isnan(b)) or abs(a - b) < 1e-9, (label, a, b)


def _warns(text: str, then: Callable[[Outcome], None] | None = None) -> Callable[[Outcome], None]:
    def check(run: Outcome) -> None:
        assert any(line.startswith("warning: ") and text in line for line in run.stderr.splitlines()), run.stderr
        if then:
            then(run)
    after = (then.__doc__ or "").strip() if then else "then evaluated"
    check.__doc__ = f"a warning on stderr ('{text}'), {after[:1].lower()}{after[1:]}"
    return check


def _classes(n: int) -> Callable[[Outcome], None]:
    def check(run: Outcome) -> None:
        assert len(json.loads(run.stdout)["classes"]) == n
    check.__doc__ = f"evaluated on the {n} classes present"
    return check


PREDICTION_CASES = [
    Case("pred_empty", "predictions", "0-byte predictions file", _csv("preds.csv", lambda: b""), evaluate_argv,
         reason="the file is empty", page=RESULTS_UPLOAD),
    Case("pred_header_only", "predictions", "header, no rows", _predictions(lambda rows: rows[:1]), evaluate_argv,
         reason="has a header but no rows"),
    Case("pred_no_image_column", "predictions", "no image column ('Picture')",
         _predictions(_column_names(lambda h: ["Picture", *h[1:]])), evaluate_argv,
         reason=r"no image column \('Image' or 'Image Index'\)", page=RESULTS_UPLOAD),
    Case("pred_no_class_columns", "predictions", "image column and unrelated columns only",
         _predictions(lambda rows: [r[:1] + ["x"] for r in rows]), evaluate_argv,
         reason="no class columns found"),
    Case("pred_misspelt_class", "predictions", "column prob_Cardiomegally",
         _predictions(_column_names(lambda h: [c.replace("Cardiomegaly", "Cardiomegally") for c in h])),
         evaluate_argv, reason="'prob_Cardiomegally' is not one of the 14 labels \\(did you mean "
                               "'prob_Cardiomegaly'\\?\\)"),
    Case("pred_out_of_range", "predictions", "a probability of 1.7", _predictions(_cell(2, 3, "1.7")),
         evaluate_argv, reason=r"line 3, column 'prob_Consolidation': 1 value\(s\) outside \[0, 1\] \(e.g. 1.7\)",
         page=RESULTS_UPLOAD),
    Case("pred_logits", "predictions", "logits (-2.3) instead of probabilities", _predictions(_cell(1, 1, "-2.3")),
         evaluate_argv, reason="They look like logits or scores: apply a sigmoid first"),
    Case("pred_nan", "predictions", "a NaN probability", _predictions(_cell(4, 5, "nan")), evaluate_argv,
         reason=r"line 5, column 'prob_Effusion': 1 empty or NaN probability", page=RESULTS_UPLOAD),
    Case("pred_infinite", "predictions", "an 'inf' probability", _predictions(_cell(4, 5, "inf")), evaluate_argv,
         reason=r"outside \[0, 1\] \(e.g. inf\)"),
    Case("pred_text_value", "predictions", "a probability written 'high'", _predictions(_cell(3, 2, "high")),
         evaluate_argv, reason="value 'high' is not a number"),
    Case("pred_unknown_images", "predictions", "two rows for images not in the labels",
         _predictions(lambda rows: rows + [["99999999_000.png", *r[1:]] for r in rows[1:2]]
                      + [["other.png", *r[1:]] for r in rows[1:2]]),
         evaluate_argv, reason="2 of 8 predicted images are not in the labels", page=RESULTS_UPLOAD),
    Case("pred_missing_images", "predictions", "two labelled images without a prediction",
         _predictions(lambda rows: rows[:-2]), evaluate_argv,
         reason="2 of 6 labelled images in .* have no prediction", page=RESULTS_UPLOAD),
    Case("pred_duplicate_rows", "predictions", "one row repeated", _predictions(lambda rows: rows + rows[2:3]),
         evaluate_argv, reason=r"image '.*' appears more than once \(2 duplicate rows", page=RESULTS_UPLOAD),
    Case("pred_dotdot_name", "predictions", "image name ../../etc/passwd",
         _predictions(_cell(1, 0, "../../etc/passwd")), evaluate_argv,
         reason=r"1 of 6 predicted images are not in the labels .* \(e\.g\. passwd\)"),
    Case("pred_semicolons", "predictions", "semicolon-separated", _predictions(lambda rows: None, sep=";"),
         evaluate_argv, reason="columns are not separated by commas"),
    Case("pred_ragged_row", "predictions", "a row with a missing field",
         _predictions(lambda rows: rows[:3] + [rows[3][:-1]] + rows[4:]), evaluate_argv,
         reason=r"line 4: some rows do not have 15 fields"),
    Case("pred_latin1", "predictions", "Latin-1 bytes in a column name",
         _predictions(_column_names(lambda h: h + ["Précision"]), encoding="latin-1"), evaluate_argv,
         reason="is not UTF-8 text"),
    Case("pred_png_bytes", "predictions", "a PNG renamed .csv", _csv("preds.csv", _PNG), evaluate_argv,
         reason="is not UTF-8 text"),
    Case("pred_bom", "predictions", "UTF-8 with a byte-order mark",
         _predictions(lambda rows: [["\ufeff" + rows[0][0], *rows[0][1:]], *rows[1:]]), evaluate_argv,
         outcome=ACCEPTED, check=_same_auroc, page=RESULTS_UPLOAD),
    Case("pred_path_names", "predictions", "image names with folders (/data/images/x.png, images\\x.png)",
         _predictions(_every(lambda i, r: [("/data/images/" if i % 2 else "images\\") + r[0], *r[1:]])),
         evaluate_argv, outcome=ACCEPTED, check=_same_auroc),
    Case("pred_extra_columns", "predictions", "extra columns (model, fold)",
         _predictions(lambda rows: [rows[0] + ["model", "fold"]] + [r + ["tiny", "1"] for r in rows[1:]]),
         evaluate_argv, outcome=ACCEPTED, check=_warns("columns ignored", _same_auroc)),
    Case("pred_hard_labels", "predictions", "0/1 hard labels instead of probabilities",
         _predictions(_every(lambda i, r: [r[0], *("1" if float(v) > 0.5 else "0" for v in r[1:])])),
         evaluate_argv, outcome=ACCEPTED, check=_warns("look like hard labels"), page=RESULTS_UPLOAD),
    Case("pred_three_classes", "predictions", "only 3 of the 14 class columns",
         _predictions(lambda rows: [r[:4] for r in rows]), evaluate_argv, outcome=ACCEPTED, check=_classes(3)),
    Case("compare_one_bad_file", "predictions", "compare: a good file and one with a NaN",
         _predictions(_cell(4, 5, "nan")), compare_argv, reason="1 empty or NaN probability"),
    Case("merge_bad_shard", "predictions", "predict --merge: a shard with another class set",
         _predictions(lambda rows: [r[:4] for r in rows]), merge_argv, reason="shards predict different classes"),
    Case("predict_bad_split", "csv", "predict with an empty split file (default cache folder)",
         _csv("split.csv", lambda: b""), predict_split_argv, reason="the file is empty"),
]

# ---------------------------------------------------------------------------------------------
# Hostile files (issue #21): deep JSON, decompression bombs, pipes and devices, outputs over inputs,
# misleading messages. Every guard is one function of cxrcore/fileio.py; these prove each is used.

DEEP = 100_000  # levels of nesting: json.loads raised RecursionError


def _deep_json() -> str:
    return "[" * DEEP + "]" * DEEP


def _deep_object(key: str = "a") -> str:
    return f'{{"{key}": ' * DEEP + "1" + "}" * DEEP


def _keras_with(world: World, **members: bytes) -> bytes:
    """The tiny .keras model with some zip members replaced by the given bytes, deflated."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(world.model) as source, zipfile.ZipFile(buffer, "w") as zf:
        for item in source.infolist():
            if item.filename in members:
                info = zipfile.ZipInfo(item.filename)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, members[item.filename])
            else:
                zf.writestr(item, source.read(item))
    return buffer.getvalue()


#: Inflated size of the bombs: above the 64 MB caps, yet cheap to build and refuse (a test checks memory).
BOMB_BYTES = 80 << 20


def _gzip_bomb(header: bytes) -> Callable[[], bytes]:
    def make() -> bytes:
        return gzip.compress(header + b"0" * BOMB_BYTES, compresslevel=1)
    return make


def _h5_bomb(path: Path, world: World) -> None:
    """A Keras-looking .h5 whose one dataset is 80 MB of zeros compressed by HDF5 itself (about 100 kB)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        group = f.create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0"]
        group.create_dataset("dense/kernel:0", shape=(BOMB_BYTES // 4 // 14, 14), dtype="float32",
                             compression="gzip", chunks=(4096, 14), fillvalue=0)


def _fifo(name: str) -> Builder:
    def build(folder: Path, world: World) -> Path:
        import os

        path = folder / name
        os.mkfifo(path)
        return path
    return build


def _link_to(target: str, name: str, sidecar: bool = False) -> Builder:
    def build(folder: Path, world: World) -> Path:
        path = folder / name
        path.symlink_to(target)
        if sidecar:
            path.with_suffix(".json").write_text(_tiny_info(), encoding="utf-8")
        return path
    return build


def _image_folder_with_fifo(folder: Path, world: World) -> Path:
    """A copy of the world's image folder where one image of the split is a named pipe."""
    import os

    images = _image_folder("fifo", None)(folder, world)
    os.mkfifo(images / pd.read_csv(world.labels)["Image"].iloc[2])
    return images


def _special_reported(run: Outcome) -> None:
    """exit 0, the named pipe listed as unreadable (never opened), the other images checked"""
    report = json.loads(run.stdout)
    unreadable = [item for items in report["images"]["unreadable"].values() for item in items]
    assert len(unreadable) == 1 and "named pipe" in unreadable[0]["problem"], unreadable


def _runs_with_deep_status(folder: Path, world: World) -> Path:
    """A runs root: one run whose status.json nests 100,000 levels deep, one without status.json."""
    runs = folder / "runs"
    for run, status in (("20260101-000000-deep-0001", _deep_object("state")), ("20260101-000000-other-0002", None)):
        (runs / run).mkdir(parents=True)
        (runs / run / "config.json").write_text(json.dumps({"preset": "demo"}), encoding="utf-8")
        if status is not None:
            (runs / run / "status.json").write_text(status, encoding="utf-8")
    return runs / "20260101-000000-deep-0001" / "status.json"


def _both_runs_listed(run: Outcome) -> None:
    """exit 0: the run with the deep status.json listed as broken with the reason, the other run listed too"""
    listed = json.loads(run.stdout)
    runs = listed["runs"] if isinstance(listed, dict) else listed
    text = json.dumps(runs)
    assert "20260101-000000-deep-0001" in text and "20260101-000000-other-0002" in text, text
    assert "nests 1000" in text and "RecursionError" not in text, text


def _dicom_corrupt_jpeg() -> bytes:
    """A DICOM declaring JPEG Baseline pixel data (a codec is installed: Pillow) whose frame is garbage."""
    import io

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dicom_dataset(JPEGBaseline8Bit)
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4])
    ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _no_codec_advice(run: Outcome) -> None:
    assert "install" not in run.stderr and "codec" not in run.stderr, run.stderr


def _no_setting_named(run: Outcome) -> None:
    assert "max_pixels" not in run.stderr, run.stderr


def _trailing_commas(rows: list[list[str]]) -> list[list[str]]:
    return [r + [""] for r in rows]


def _no_warning(then: Callable[[Outcome], None]) -> Callable[[Outcome], None]:
    def check(run: Outcome) -> None:
        assert run.stderr == "", run.stderr
        then(run)
    check.__doc__ = f"no warning, {(then.__doc__ or '').strip()[:1].lower()}{(then.__doc__ or '').strip()[1:]}"
    return check


def _copy_of(source: Callable[[World], Path], name: str) -> Builder:
    def build(folder: Path, world: World) -> Path:
        path = folder / name
        shutil.copy(source(world), path)
        return path
    return build


def _overlapping_shard(folder: Path, world: World) -> Path:
    """A shard holding the first two images of the world's predictions again."""
    lines = world.predictions.read_text(encoding="utf-8").splitlines(keepends=True)
    path = folder / "shard2.csv"
    path.write_text("".join(lines[:3]), encoding="utf-8")
    return path


def _model_copy(folder: Path, world: World) -> Path:
    path = folder / "model.keras"
    shutil.copy(world.model, path)
    shutil.copy(world.model.with_suffix(".json"), folder / "model.json")
    (folder / "map.png").symlink_to(path)  # --out map.png leads to the model
    return path


def _hard_linked_labels(folder: Path, world: World) -> Path:
    import os

    path = folder / "labels.csv"
    shutil.copy(world.labels, path)
    os.link(path, folder / "predictions.csv")  # another name, the same file
    return path


def _images_named_maps(folder: Path, world: World) -> Path:
    """The world's images in a folder named maps/: cam --split writes maps/<image>.png into its --out."""
    shutil.copytree(world.images, folder / "maps")
    return folder / "maps"


def _a_file(name: str) -> Builder:
    def build(folder: Path, world: World) -> Path:
        path = folder / name
        path.write_text("a file, not a folder\n", encoding="utf-8")
        return path
    return build


HOSTILE_CASES = [
    # 1. deeply nested JSON
    Case("json_deep_sidecar", "json", "good .keras, its <model>.json nested 100,000 levels deep",
         _with_sidecar("bad.keras", _bytes(lambda w: w.model.read_bytes()), _deep_json()), cam_model_argv,
         reason=r"bad.json: the model info nests 100000 levels deep", page=MODELS_ROOT),
    Case("json_deep_keras_config", "json", ".keras whose config.json nests 100,000 levels deep",
         _with_sidecar("bad.keras", _bytes(lambda w: _keras_with(w, **{"config.json": _deep_object().encode()}))),
         cam_model_argv, reason=r"bad.keras: the model's config.json nests 100000 levels deep", page=MODELS_ROOT),
    Case("json_deep_keras_info", "json", ".keras without sidecar, the info inside nested 100,000 levels deep",
         _with_sidecar("bad.keras", _bytes(lambda w: _keras_with(w, **{"cxrcore_info.json": _deep_json().encode()})),
                       ""),
         cam_model_argv, reason=r"bad.keras: the model info nests 100000 levels deep", page=MODELS_ROOT),
    Case("json_deep_train_config", "json", "train --config: a JSON config nested 100,000 levels deep",
         _csv("config.json", lambda: _deep_object("epochs").encode()),
         lambda bad, out, world: ["train", "--config", str(bad), "--dry-run"],
         reason=r"config.json: the file nests 100000 levels deep"),
    Case("json_deep_run_status", "json", "train --list: one run's status.json nested 100,000 levels deep",
         _runs_with_deep_status, lambda bad, out, world: ["train", "--list", "--runs-root",
                                                          str(bad.parent.parent), "--format", "json"],
         outcome=ACCEPTED, check=_both_runs_listed),
    # 2. decompression bombs and oversized fields
    Case("csv_gzip_bomb", "csv", f".csv.gz of 80 kB inflating to {BOMB_BYTES >> 20} MB",
         _csv("split.csv.gz", _gzip_bomb(b"Image,PatientId\n")), audit_argv,
         reason=r"inflates to more than 64 MB .*refused before inflating it all", page=HOME_UPLOAD),
    Case("csv_huge_field", "csv", "one 300 kB field in a labels row",
         _csv("split.csv", lambda: to_csv_bytes(course_frame()) + b"x" * 300_000 + b",1\n"), audit_argv,
         reason=r"line 12 is 293 kB long", page=HOME_UPLOAD),
    Case("pred_gzip_bomb", "predictions", f"gzipped predictions (named .csv, as the Results uploader takes) "
         f"inflating to {BOMB_BYTES >> 20} MB", _csv("preds.csv", _gzip_bomb(b"Image,prob_Atelectasis\n")),
         evaluate_argv,
         reason="inflates to more than 64 MB", page=RESULTS_UPLOAD),
    Case("model_zip_bomb", "model", f".keras whose weights member inflates to {BOMB_BYTES >> 20} MB (about 80 kB)",
         _with_sidecar("bad.keras", _bytes(lambda w: _keras_with(w, **{"model.weights.h5": b"\0" * BOMB_BYTES}))),
         cam_model_argv, reason=r"would inflate to 80 MB, more than the 6\d MB .*refused before reading it",
         page=MODELS_ROOT),
    Case("model_h5_bomb", "model", f".h5 whose HDF5-compressed dataset holds {BOMB_BYTES >> 20} MB of zeros",
         _with_sidecar("bad.h5", _h5_bomb), cam_model_argv, reason=r"its weights would inflate to 80 MB",
         page=MODELS_ROOT),
    # 5. pipes and devices
    Case("image_fifo", "image", "--image is a named pipe (FIFO)", _fifo("scan.png"), cam_image_argv,
         reason=r"this is a named pipe \(FIFO\), not an image file"),
    Case("image_dev_zero", "image", "--image is a link to /dev/zero", _link_to("/dev/zero", "scan.png"),
         cam_image_argv, reason=r"this is a device \(like /dev/zero\), not an image file"),
    Case("model_fifo", "model", "--model is a named pipe", _fifo("bad.keras"), cam_model_argv,
         reason=r"named pipe \(FIFO\), not a model file"),
    Case("model_dev_zero", "model", "--model is a link to /dev/zero (was called 'a folder')",
         _link_to("/dev/zero", "bad.keras", sidecar=True), cam_model_argv,
         reason=r"this is a device \(like /dev/zero\), not a model file"),
    Case("csv_fifo", "csv", "a labels file that is a named pipe", _fifo("split.csv"), audit_argv,
         reason=r"named pipe \(FIFO\), not a labels file"),
    Case("pred_dev_zero", "predictions", "a predictions file linked to /dev/zero", _link_to("/dev/zero", "preds.csv"),
         evaluate_argv, reason=r"a device \(like /dev/zero\), not a predictions file"),
    Case("predict_fifo_in_images", "image", "predict: one image of the folder is a named pipe",
         _image_folder_with_fifo, predict_images_argv,
         reason=r"1 image\(s\) are not regular files \(a named pipe"),
    Case("audit_fifo_in_images", "image", "audit --images: one image of the folder is a named pipe",
         _image_folder_with_fifo, audit_images_argv, outcome=ACCEPTED,
         check=_special_reported),
    # 3. outputs over inputs (the snapshot proves the input is unchanged)
    Case("out_predict_over_labels", "output", "predict --out naming its own labels file",
         _copy_of(lambda w: w.labels, "labels.csv"),
         lambda bad, out, world: ["predict", "--model", str(world.model), "--split", str(bad), "--images",
                                  str(world.images), "--out", str(bad), "--quiet"],
         reason=r"would overwrite an input file .*labels.csv"),
    Case("out_predict_over_hard_link", "output", "predict --out naming a hard link to its labels file",
         _hard_linked_labels, lambda bad, out, world: ["predict", "--model", str(world.model), "--split", str(bad),
                                                       "--images", str(world.images), "--out",
                                                       str(bad.parent / "predictions.csv"), "--quiet"],
         reason=r"predictions.csv: writing here would overwrite an input file .*labels.csv"),
    Case("out_cam_over_image", "output", "cam --out naming the input X-ray",
         _copy_of(lambda w: w.gray, "scan.png"),
         lambda bad, out, world: ["cam", "--model", str(world.model), "--image", str(bad), "--out", str(bad),
                                  "--quiet"], reason=r"would overwrite an input file .*scan.png"),
    Case("out_cam_over_model", "output", "cam --out naming a link to the model", _model_copy,
         lambda bad, out, world: ["cam", "--model", str(bad), "--image", str(world.gray), "--out",
                                  str(bad.parent / "map.png"), "--quiet"],
         reason=r"would overwrite an input file .*model.keras"),
    Case("out_merge_over_shard", "output", "predict --merge --out naming one of the shards",
         _copy_of(lambda w: w.predictions, "shard1.csv"),
         lambda bad, out, world: ["predict", "--merge", str(bad), str(world.predictions), "--out", str(bad)],
         reason=r"would overwrite an input file .*shard1.csv"),
    Case("out_cam_split_over_images", "output", "cam --split whose maps/ would be the image folder itself",
         _images_named_maps, lambda bad, out, world: ["cam", "--model", str(world.model), "--split", str(world.labels),
                                                      "--images", str(bad), "--out", str(bad.parent), "--quiet"],
         reason=r"maps/.*\.png: writing here would overwrite an input file .*maps/"),
    # 6. messages that mislead
    Case("merge_overlapping_shards", "predictions", "predict --merge: two shards holding the same images",
         _overlapping_shard, merge_argv, reason=r"shard2.csv: image '.*' is also predicted in .*predictions.csv"),
    Case("out_is_a_folder", "output", "predict --out naming a folder (checked before predicting)",
         _folder("predictions.csv"),
         lambda bad, out, world: ["predict", "--model", str(world.model), "--split", str(world.labels),
                                  "--images", str(world.images), "--out", str(bad), "--quiet"],
         reason=r"predictions.csv: is a folder, not a file"),
    Case("out_under_a_file", "output", "cam --out inside a path whose folder is a file",
         _a_file("notes.txt"), lambda bad, out, world: ["cam", "--model", str(world.model), "--image",
                                                        str(world.gray), "--out", str(bad / "map.png"), "--quiet"],
         reason=r"notes.txt/map.png: cannot be written: a part of its path is a file, not a folder"),
    Case("image_dicom_corrupt_jpeg", "image", "DICOM with JPEG pixel data (a codec is installed) that is garbage",
         _image("study.dcm", _dicom_corrupt_jpeg), cam_image_argv,
         reason=r"the DICOM pixel data cannot be decoded.*the file is damaged", check=_no_codec_advice),
    Case("image_144_megapixels", "image", "PNG header claiming 12000x12000 (144 megapixels)",
         _image("big.png", lambda: png_claiming(12000, 12000)), cam_image_argv,
         reason=r"144\.0 megapixels.*Fix: downscale the image below 50 megapixels", check=_no_setting_named,
         no_decoding=True),
    Case("pred_trailing_commas", "predictions", "a trailing comma on every line (an empty last column)",
         _predictions(_trailing_commas), evaluate_argv, outcome=ACCEPTED, check=_no_warning(_same_auroc)),
    Case("labels_are_predictions", "csv", "a predictions file given as --labels",
         _copy_of(lambda w: w.predictions, "preds.csv"),
         lambda bad, out, world: ["evaluate", "--labels", str(bad), "--predictions", str(world.predictions),
                                  "--bootstrap", "0"],
         reason=r"looks like a predictions file .*not a labels file.*--predictions"),
]


CASES: list[Case] = CSV_CASES + IMAGE_CASES + MODEL_CASES + PREDICTION_CASES + HOSTILE_CASES
BY_ID = {case.id: case for case in CASES}
assert len(BY_ID) == len(CASES), "case ids must be unique"


def page_cases(page: str) -> list[Case]:
    return [case for case in CASES if case.page == page]


# ---------------------------------------------------------------------------------------------
# The table of docs/reliability.md


def _table_cell(text: str, limit: int = 260) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def markdown_table(observed: dict[str, dict[str, str]]) -> str:
    """One row per case from what the tests saw (test-artifacts/bad_inputs.json, written by test_bad_inputs)."""
    rows = ["| case | input | CLI: what happens | page: what it shows | result |", "|---|---|---|---|---|"]
    for case in CASES:
        seen = observed.get(case.id, {})
        cli = f"`{case.command}`: {seen.get('cli', 'not run yet')}"
        page = _table_cell(seen.get("page", "not run yet") if case.page else "(CLI only)")
        if "server" in seen:
            page = f"{page}; {_table_cell(seen['server'])}"
        cells = [f"`{case.id}`", _table_cell(case.description), _table_cell(cli), page, case.outcome]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m tests.bad_inputs > table.md, after running tests/test_bad_inputs.py
    root = Path(__file__).resolve().parent.parent
    print(markdown_table(json.loads((root / "test-artifacts" / "bad_inputs.json").read_text())), end="")
