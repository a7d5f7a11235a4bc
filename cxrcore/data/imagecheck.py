"""Image-level audit: missing and unreadable files, exact and near-duplicate images across splits.

Exact duplicates are found by a hash of the file bytes. A near-duplicate is the same image exported
again (resized, lightly cropped, contrast-changed, JPEG re-encoded, rotated by a few degrees), never
a different image that looks alike; chest radiographs all look alike at low resolution, so a hash
alone pairs different patients. Two steps therefore:
1. shortlist: pairs whose 64-bit perceptual hashes (DCT of a 32x32 thumbnail) differ in at most
   `near_threshold` bits, plus each image's nearest neighbours in the other splits by a band-pass
   16x16 thumbnail (cheap, survives crops and rotations that move the hash);
2. confirm: align the two images (affine ECC on 32 and 64 px thumbnails, bounded to near-identity
   transforms), then correlate their fine detail (high-pass) at 128 px. Copies keep the same detail
   (noise grain, vessels, edges); different radiographs, even of the same patient, do not.
Duplicates across splits count as leakage even when their patient ids differ.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cxrcore.data.dataset import Split
from cxrcore.data.paths import resolve_image
from cxrcore.errors import DatasetError, ImageError
from cxrcore.fileio import MAX_IMAGE_BYTES, limit, read_file_bytes

ProgressCallback = Callable[[int, int, str], None]

HASH_BITS = 64
#: Side of the thumbnail kept per image for the shortlist and the first alignment (64x64 uint8, 4 KB).
THUMB_SIZE = 64
#: Side at which a shortlisted pair's fine detail is compared (the two files are read again).
CONFIRM_SIZE = 128
#: Nearest neighbours in other splits shortlisted per image, and the least band-pass correlation for one.
NEIGHBOURS = 2
MIN_SHORTLIST_CORRELATION = 0.75
#: Least high-pass correlation of the aligned 64 px thumbnails to go on to the 128 px comparison.
MIN_THUMB_CORRELATION = 0.72
#: Least high-pass correlation of the aligned 128 px images for a pair to be reported: measured
#: copies >= 0.77, different real patients <= 0.36, different demo patients <= 0.66 (docs/benchmarks.md).
CONFIRM_CORRELATION = 0.72
#: Largest transform the alignment may find: scale in [1/1.25, 1.25], shift up to 15% of the side.
_MAX_SCALE, _MAX_SHIFT = 1.25, 0.15


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
    from cxrcore.data.images import DEFAULT_MAX_PIXELS, image_size, sniff_format
    from cxrcore.errors import ImageError

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


@dataclass(frozen=True, eq=False)
class ImageRecord:
    split: str
    image: str
    content_hash: str | None = None
    perceptual_hash: int | None = None
    problem: str | None = None
    thumbnail: np.ndarray | None = None  # THUMB_SIZE x THUMB_SIZE uint8, for the shortlist and alignment


@dataclass
class DuplicatePair:
    """Two images (from two splits, or the same split) with identical or nearly identical content."""

    split_a: str
    image_a: str
    split_b: str
    image_b: str
    distance: int  # Hamming distance of the perceptual hashes; 0 and exact=True for byte-identical files
    exact: bool
    #: High-pass correlation of the aligned images at CONFIRM_SIZE (1.0 for byte-identical files).
    similarity: float = 1.0

    def to_dict(self) -> dict:
        return {"split_a": self.split_a, "image_a": self.image_a, "split_b": self.split_b,
                "image_b": self.image_b, "distance": self.distance, "exact": self.exact,
                "similarity": round(self.similarity, 4)}


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
    import cv2

    # One area resize of the full image; the hash's 32x32 thumbnail is taken from this one.
    thumb = cv2.resize(gray, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
    return ImageRecord(split, name, content_hash=digest, perceptual_hash=perceptual_hash(thumb), thumbnail=thumb)


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
    check.duplicates = _duplicates(records, near_threshold if hash_images else -1, root_path,
                                   workers=workers, progress=progress)
    return check


# ---------------------------------------------------------------------------------------------
# Near duplicates: shortlist, then confirm


def band_pass(thumb: np.ndarray) -> np.ndarray:
    """Unit-norm band-pass 16x16 descriptor of a thumbnail (border cut): the shortlist's nearest-neighbour key."""
    import cv2

    small = cv2.resize(thumb.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
    detail = (small - cv2.GaussianBlur(small, (0, 0), 2.5))[2:-2, 2:-2].ravel()
    detail = detail - detail.mean()
    return detail / (np.linalg.norm(detail) + 1e-6)


def nearest_in_other_splits(descriptors: np.ndarray, groups: np.ndarray, k: int = NEIGHBOURS,
                            min_correlation: float = MIN_SHORTLIST_CORRELATION,
                            block: int = 512) -> np.ndarray:
    """Index pairs (i < j): each row's k most correlated rows of another group (correlation >= min).

    Exact blocked search (block x n correlations at a time): memory stays bounded, no pair skipped.
    """
    n = len(descriptors)
    found: set[tuple[int, int]] = set()
    if n < 2 or k < 1:
        return np.empty((0, 2), dtype=np.int64)
    d = np.asarray(descriptors, dtype=np.float32)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        sims = d[rows] @ d.T
        sims[groups[rows][:, None] == groups[None, :]] = -np.inf  # same split (and itself)
        kk = min(k, n - 1)
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for r, cols in zip(rows, top):
            for c in cols:
                if sims[r - start, c] >= min_correlation:
                    found.add((int(min(r, c)), int(max(r, c))))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def _standardized(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    return (x - x.mean()) / (x.std() + 1e-6)


def _ecc(a: np.ndarray, b: np.ndarray, warp: np.ndarray, iterations: int) -> np.ndarray | None:
    import cv2

    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-4)
    try:
        return cv2.findTransformECC(a, b, warp.astype(np.float32), cv2.MOTION_AFFINE, criteria, None, 1)[1]
    except cv2.error:  # no convergence: the images do not align
        return None


def _plausible(warp: np.ndarray, size: int) -> bool:
    """Whether an alignment is a re-export's (near-identity), not a stretch that makes two images match."""
    sv = np.linalg.svd(warp[:, :2], compute_uv=False)
    return bool(sv.max() <= _MAX_SCALE and sv.min() >= 1 / _MAX_SCALE
                and np.abs(warp[:, 2]).max() <= _MAX_SHIFT * size)


def _detail_correlation(a: np.ndarray, b: np.ndarray, warp: np.ndarray, sigma: float) -> float:
    """Correlation of the high-pass detail of `a` and of `b` warped onto it, over their common area."""
    import cv2

    size = a.shape[0]
    moved = cv2.warpAffine(b, warp, (size, size), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    edge = max(3, size // 16) | 1
    inside = cv2.erode((~np.isnan(moved)).astype(np.uint8), np.ones((edge, edge), np.uint8)).astype(bool)
    if inside.mean() < 0.4:  # too little overlap to call them one image
        return -1.0
    moved = np.nan_to_num(moved)
    x = (a - cv2.GaussianBlur(a, (0, 0), sigma))[inside]
    y = (moved - cv2.GaussianBlur(moved, (0, 0), sigma))[inside]
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


def align_thumbnails(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Affine warp taking thumbnail `b` onto `a` (32 px, then 64 px), or None when no near-identity one exists."""
    import cv2

    a, b = _standardized(a), _standardized(b)
    half = a.shape[0] // 2
    small = [cv2.GaussianBlur(cv2.resize(x, (half, half), interpolation=cv2.INTER_AREA), (0, 0), 1.0) for x in (a, b)]
    warp = _ecc(small[0], small[1], np.eye(2, 3, dtype=np.float32), 30)
    if warp is None:
        return None
    warp[:, 2] *= 2
    warp = _ecc(cv2.GaussianBlur(a, (0, 0), 1.0), cv2.GaussianBlur(b, (0, 0), 1.0), warp, 15)
    return warp if warp is not None and _plausible(warp, a.shape[0]) else None


def same_image_score(thumb_a: np.ndarray, thumb_b: np.ndarray, read_a: Callable[[], np.ndarray | None],
                     read_b: Callable[[], np.ndarray | None]) -> float:
    """How surely two images are one image exported twice: the high-pass correlation of the aligned images at
    CONFIRM_SIZE (>= CONFIRM_CORRELATION: the same image); -1 when they do not align. The full images are
    read (read_a / read_b) only when the aligned thumbnails already agree."""
    import cv2

    warp = align_thumbnails(thumb_a, thumb_b)
    if warp is None:
        return -1.0
    if _detail_correlation(_standardized(thumb_a), _standardized(thumb_b), warp, 2.0) < MIN_THUMB_CORRELATION:
        return -1.0
    full = [read_a(), read_b()]
    if full[0] is None or full[1] is None:
        return -1.0
    # Never above the smaller image's own resolution: an upsampled image's "detail" is its interpolation.
    size = max(THUMB_SIZE // 2, min(CONFIRM_SIZE, *(min(x.shape) for x in full)))
    big = [_standardized(cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)) for x in full]
    scaled = warp.copy()
    scaled[:, 2] *= size / thumb_a.shape[0]
    refined = _ecc(big[0], big[1], scaled, 10)
    if refined is not None and _plausible(refined, size):
        scaled = refined
    return _detail_correlation(big[0], big[1], scaled, 1.0)


def _reader(root: Path, name: str) -> Callable[[], np.ndarray | None]:
    def read() -> np.ndarray | None:
        try:
            return _decode_gray(read_file_bytes(resolve_image(root, name), error=ImageError, what="image file",
                                                max_bytes=limit(*MAX_IMAGE_BYTES)))
        except (DatasetError, ImageError, OSError):
            return None
    return read


def _duplicates(records: list[ImageRecord], near_threshold: int, root: Path | None = None, *,
                workers: int | None = None, progress: ProgressCallback | None = None) -> list[DuplicatePair]:
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
        index = np.array([i for i, r in enumerate(records) if r.thumbnail is not None], dtype=np.int64)
        hashes = np.array([records[i].perceptual_hash for i in index], dtype=np.uint64)
        names = {name: k for k, name in enumerate(dict.fromkeys(records[i].split for i in index))}
        groups = np.array([names[records[i].split] for i in index], dtype=np.int64)
        descriptors = np.stack([band_pass(records[i].thumbnail) for i in index]) if index.size else np.zeros((0, 144))
        shortlist = {tuple(map(int, p)) for p in near_duplicate_pairs(hashes, near_threshold)}
        shortlist |= {tuple(map(int, p)) for p in nearest_in_other_splits(descriptors, groups)}
        todo = sorted((a, b) for a, b in shortlist if (int(index[a]), int(index[b])) not in pairs)

        def confirm(pair: tuple[int, int]) -> float:
            ra, rb = records[index[pair[0]]], records[index[pair[1]]]
            return same_image_score(ra.thumbnail, rb.thumbnail, _reader(root, ra.image), _reader(root, rb.image))

        step = max(1, len(todo) // 50)
        with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
            for done, ((a, b), score) in enumerate(zip(todo, pool.map(confirm, todo)), start=1):
                if score >= CONFIRM_CORRELATION:
                    i, j = int(index[a]), int(index[b])
                    pairs[(i, j)] = DuplicatePair(records[i].split, records[i].image, records[j].split,
                                                  records[j].image, int(hamming(hashes[a], hashes[b])), False,
                                                  similarity=score)
                if progress and (done % step == 0 or done == len(todo)):
                    progress(done, len(todo), "comparing look-alike images")
    return sorted(pairs.values(), key=lambda d: (d.split_a, d.image_a, d.split_b, d.image_b))
