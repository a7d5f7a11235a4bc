"""Image-level audit: missing and unreadable files, exact and near-duplicate images across splits.

Exact duplicates are found by a hash of the file bytes; near-duplicates (re-encoded, resized or
slightly changed copies) by a 64-bit perceptual hash (DCT of a 32x32 thumbnail) compared by Hamming
distance. Duplicates across splits count as leakage even when their patient ids differ.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cxrcore.dataset import Split
from cxrcore.errors import DatasetError, ImageError
from cxrcore.fileio import MAX_IMAGE_BYTES, limit, read_file_bytes
from cxrcore.paths import resolve_image

ProgressCallback = Callable[[int, int, str], None]

HASH_BITS = 64


def perceptual_hash(gray: np.ndarray) -> int:
    """64-bit DCT hash of a grayscale image: robust to resizing, re-encoding and small exposure changes."""
    import cv2

    thumb = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(thumb)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def _oversized(data: bytes) -> str | None:
    """Why a PNG or JPEG must not be decoded: its header claims more than DEFAULT_MAX_PIXELS (a decompression
    bomb, which OpenCV would allocate and decode in full), or has no readable size; None when it may be."""
    from cxrcore.errors import ImageError
    from cxrcore.images import DEFAULT_MAX_PIXELS, image_size, sniff_format

    if sniff_format(data) not in ("png", "jpeg"):
        return None
    try:
        width, height = image_size(data)
    except ImageError as err:
        return err.problem
    if width * height > DEFAULT_MAX_PIXELS:
        return (f"{width}x{height} pixels, above the {DEFAULT_MAX_PIXELS / 1e6:.0f}-megapixel limit "
                "(possible decompression bomb); not decoded")
    return None


def _decode_gray(data: bytes) -> np.ndarray | None:
    import cv2

    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_GRAYSCALE)
    return image


@dataclass(frozen=True)
class ImageRecord:
    split: str
    image: str
    content_hash: str | None = None
    perceptual_hash: int | None = None
    problem: str | None = None


@dataclass
class DuplicatePair:
    """Two images (from two splits, or the same split) with identical or nearly identical content."""

    split_a: str
    image_a: str
    split_b: str
    image_b: str
    distance: int  # Hamming distance of the perceptual hashes; 0 and exact=True for byte-identical files
    exact: bool

    def to_dict(self) -> dict:
        return {"split_a": self.split_a, "image_a": self.image_a, "split_b": self.split_b,
                "image_b": self.image_b, "distance": self.distance, "exact": self.exact}


@dataclass
class ImageCheck:
    """Results of checking the files of every split under one image root."""

    root: str
    checked: int
    missing: dict[str, list[str]] = field(default_factory=dict)
    unreadable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    duplicates: list[DuplicatePair] = field(default_factory=list)
    near_threshold: int = 4

    def cross_split_duplicates(self) -> list[DuplicatePair]:
        return [d for d in self.duplicates if d.split_a != d.split_b]

    def to_dict(self) -> dict:
        return {"root": self.root, "checked": self.checked,
                "missing": {k: v for k, v in self.missing.items()},
                "unreadable": {k: [{"image": i, "problem": p} for i, p in v]
                               for k, v in self.unreadable.items()},
                "near_threshold": self.near_threshold,
                "duplicates_across_splits": [d.to_dict() for d in self.cross_split_duplicates()],
                "duplicates_within_splits": sum(1 for d in self.duplicates if d.split_a == d.split_b)}


def _hash_file(root: Path, split: str, name: str, with_perceptual: bool) -> ImageRecord:
    try:
        path = resolve_image(root, name)
    except DatasetError as err:
        return ImageRecord(split, name, problem=err.problem)
    if not path.exists():
        return ImageRecord(split, name, problem="missing")
    try:  # a regular file within the image size limit: a pipe or a device is reported, never read
        data = read_file_bytes(path, error=ImageError, what="image file", max_bytes=limit(*MAX_IMAGE_BYTES),
                               env=MAX_IMAGE_BYTES[0])
    except ImageError as err:
        return ImageRecord(split, name, problem=err.problem.rstrip("."))
    except OSError as err:
        return ImageRecord(split, name, problem=f"cannot read ({err.strerror})")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if not with_perceptual:
        return ImageRecord(split, name, content_hash=digest)
    if not data:
        return ImageRecord(split, name, content_hash=digest, problem="empty file")
    refused = _oversized(data)
    if refused:
        return ImageRecord(split, name, content_hash=digest, problem=refused)
    gray = _decode_gray(data)
    if gray is None:
        return ImageRecord(split, name, content_hash=digest, problem="not a decodable image")
    return ImageRecord(split, name, content_hash=digest, perceptual_hash=perceptual_hash(gray))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hash arrays (broadcasting)."""
    x = np.bitwise_xor(a, b)
    return np.bitwise_count(x).astype(np.int64)


def near_duplicate_pairs(hashes: np.ndarray, threshold: int, max_bucket: int = 2000) -> np.ndarray:
    """Index pairs (i < j) whose 64-bit hashes differ in at most `threshold` bits.

    Multi-index hashing: split the hash into threshold + 1 chunks; by the pigeonhole principle a
    near pair agrees exactly on at least one chunk, so only bucket mates are compared (no n^2 scan).
    Buckets larger than `max_bucket` are compared in blocks of rows (about max_bucket**2 distances at
    a time), so memory stays bounded and no pair is ever skipped.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = hashes.size
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    chunks = max(1, min(threshold + 1, HASH_BITS))
    bounds = np.linspace(0, HASH_BITS, chunks + 1).astype(int)
    found: set[tuple[int, int]] = set()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mask = np.uint64(((1 << (hi - lo)) - 1) << lo)
        keys = hashes & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for start, end in zip(starts, ends):
            if end - start < 2:
                continue
            members = order[start:end]
            step = max(1, max_bucket * max_bucket // members.size)
            for block in range(0, members.size, step):
                rows = members[block:block + step]
                dist = hamming(hashes[rows][:, None], hashes[members][None, :])
                ii, jj = np.nonzero(dist <= threshold)
                keep = jj > ii + block  # each unordered pair once, never an image with itself
                for i, j in zip(rows[ii[keep]], members[jj[keep]]):
                    found.add((int(min(i, j)), int(max(i, j))))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def check_images(splits: list[Split], root: str | os.PathLike, *, near_threshold: int = 4,
                 hash_images: bool = True, progress: ProgressCallback | None = None,
                 workers: int | None = None) -> ImageCheck:
    """Check every image of every split under `root`: missing, unreadable and duplicated files."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError("image folder not found.", file=str(root), fix="pass the folder that holds the images.")
    if not 0 <= near_threshold <= 16:
        raise DatasetError(f"near-duplicate threshold {near_threshold} is out of range.",
                           fix="use 0 (exact pixels only) to 16 bits; 4 is a good default.")
    jobs = [(s.name, str(name)) for s in splits for name in s.images]
    total = len(jobs)
    records: list[ImageRecord] = []
    step = max(1, total // 100)
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        futures = pool.map(lambda job: _hash_file(root_path, job[0], job[1], hash_images), jobs)
        for done, record in enumerate(futures, start=1):
            records.append(record)
            if progress and (done % step == 0 or done == total):
                progress(done, total, "hashing images")
    check = ImageCheck(root=str(root_path), checked=total, near_threshold=near_threshold)
    for record in records:
        if record.problem == "missing":
            check.missing.setdefault(record.split, []).append(record.image)
        elif record.problem:
            check.unreadable.setdefault(record.split, []).append((record.image, record.problem))
    check.duplicates = _duplicates(records, near_threshold if hash_images else -1)
    return check


def _duplicates(records: list[ImageRecord], near_threshold: int) -> list[DuplicatePair]:
    pairs: dict[tuple[int, int], DuplicatePair] = {}
    by_hash: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        if record.content_hash:
            by_hash.setdefault(record.content_hash, []).append(i)
    for members in by_hash.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                pairs[(i, j)] = DuplicatePair(records[i].split, records[i].image, records[j].split,
                                              records[j].image, 0, True)
    if near_threshold >= 0:
        index = np.array([i for i, r in enumerate(records) if r.perceptual_hash is not None], dtype=np.int64)
        hashes = np.array([records[i].perceptual_hash for i in index], dtype=np.uint64)
        for a, b in near_duplicate_pairs(hashes, near_threshold):
            i, j = int(index[a]), int(index[b])
            if (i, j) not in pairs:
                distance = int(hamming(hashes[a], hashes[b]))
                pairs[(i, j)] = DuplicatePair(records[i].split, records[i].image, records[j].split,
                                              records[j].image, distance, False)
    return sorted(pairs.values(), key=lambda d: (d.split_a, d.image_a, d.split_b, d.image_b))
