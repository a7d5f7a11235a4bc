"""Decode a list of images once, on every core, into one memory-mapped array at the training size.

Why: reading PNGs every epoch cannot keep a GPU fed (16 cores decode ~900 NIH images/s, an H200 trains
~1,900/s), and the backends other than TensorFlow have no tf.data. So each file is decoded once by a
process pool straight into `<cache_root>/arrays/<key>.pixels.npy`, uint16 (N, S, S) in the order of
`paths`, quantised as the tf.data pipeline's disk cache (round(x * 65535)); later epochs and later jobs
only read that array (`cxrcore.train.batches.ImageBatches`).

Each row records the identity of the file it was decoded from (byte size, mtime_ns, ctime_ns) in a
sidecar `<key>.stamps.npy`, written only after the row's pixels: a job killed mid-pass resumes where it
stopped, and a file that changed since (new bytes, a rename over it, even a copy that kept the old
mtime, which still gets a new ctime) is decoded again on the next open, without hashing gigabytes of
PNGs at every job start. Pixels are those of `cxrcore.data.images` (the UI's numpy path), which equal the
tf.data pipeline's to 2e-4. Never imports TensorFlow.
"""
from __future__ import annotations

import fcntl
import hashlib
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cxrcore.data import images as _images
from cxrcore.errors import ConfigError, DatasetError

#: Bump when the pixel format, the decode/resize rule or the file layout changes: old arrays are ignored.
ARRAY_VERSION = 1
#: Rows a worker decodes per task: small enough for a live progress bar, large enough to amortise the IPC.
CHUNK_ROWS = 16
#: Below this many images to decode, decoding runs in the calling process (a pool costs ~0.3 s to start).
INLINE_UP_TO = 8
_UNSET = -1

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageCacheArray:
    """Decoded images of `paths` at `input_size`: `pixels` is a read-only uint16 (N, S, S) memory map."""

    pixels: np.ndarray
    paths: tuple[str, ...]
    input_size: int
    file: Path

    def __len__(self) -> int:
        return len(self.paths)


def cache_key(paths: Sequence[str], input_size: int) -> str:
    """Hex key of an ordered list of absolute paths and a target size: one array per (list, size)."""
    h = hashlib.sha1(f"v{ARRAY_VERSION}|{int(input_size)}".encode())
    for path in paths:
        h.update(b"\0" + os.path.abspath(os.fspath(path)).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def default_workers() -> int:
    """The cores this process may use (its CPU affinity), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


def quantize(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint16 [0, 65535], rounded and clipped like the tf.data pipeline's cache."""
    return np.rint(np.clip(img, 0.0, 1.0) * np.float32(65535.0)).astype(np.uint16)


def decode_for_cache(path: str, input_size: int, max_pixels: int | None) -> np.ndarray:
    """One file -> uint16 (S, S): cxrcore.data.images decoding, its resize rule, the cache's quantisation."""
    img = _images.read_image(path, max_pixels=max_pixels)
    return quantize(_images.resize(img, int(input_size)))


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


# -------------------------------------------------------------------------------------- worker side

class _RowWriter:
    """Writes rows into the array file with one pwrite each: a row written through the memory map instead
    costs a page fault per 4 kB page (about 1 ms of kernel time per 320 px row on ext4)."""

    def __init__(self, pixels_file: str) -> None:
        header = np.load(pixels_file, mmap_mode="r")
        self.offset, self.row_bytes = header.offset, header[0].nbytes
        del header
        self.fd = os.open(pixels_file, os.O_WRONLY)

    def write(self, row: int, pixels: np.ndarray) -> None:
        data = np.ascontiguousarray(pixels, dtype=np.uint16).data
        if os.pwrite(self.fd, data, self.offset + row * self.row_bytes) != self.row_bytes:
            raise OSError(f"short write into {self.fd}")

    def close(self) -> None:
        os.close(self.fd)


_writer: _RowWriter | None = None


def _worker_init(pixels_file: str) -> None:
    """Open the array file once per worker; rows are written in place (no pixels cross the pipe)."""
    global _writer
    try:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the processes
    except ImportError:  # pragma: no cover - cv2 is a dependency of cxrcore.data.images
        pass
    _writer = _RowWriter(pixels_file)


def _decode_rows(jobs: list[tuple[int, str]], input_size: int,
                 max_pixels: int | None) -> list[tuple[int, str | None, str | None]]:
    """Decode (row, path) pairs into the array file; (row, None, None) or (row, problem, fix) each."""
    out: list[tuple[int, str | None, str | None]] = []
    for row, path in jobs:
        try:
            _writer.write(row, decode_for_cache(path, input_size, max_pixels))
            out.append((row, None, None))
        except _images.ImageError as err:
            out.append((row, err.problem, err.fix))
    return out


# -------------------------------------------------------------------------------------- files

def _open_or_create(pixels_file: Path, stamps_file: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (pixels r+, stamps r+) memory maps, created empty (every row to decode) when absent or damaged."""
    try:
        pixels = np.load(pixels_file, mmap_mode="r+")
        stamps = np.load(stamps_file, mmap_mode="r+")
        if pixels.shape == (n, size, size) and pixels.dtype == np.uint16 \
                and stamps.shape == (n, 3) and stamps.dtype == np.int64:
            return pixels, stamps
    except (OSError, ValueError, EOFError):  # absent, or a header cut by a kill
        pass
    stamps_file.unlink(missing_ok=True)  # stamps first: pixels without stamps are never trusted
    pixels = np.lib.format.open_memmap(pixels_file, mode="w+", dtype=np.uint16, shape=(n, size, size))
    with open(pixels_file, "r+b") as fh:  # reserve the blocks now: a full disk is an error here, not a SIGBUS later
        try:
            os.posix_fallocate(fh.fileno(), 0, os.path.getsize(pixels_file))
        except OSError as err:
            pixels_file.unlink(missing_ok=True)
            need = n * size * size * 2 / 1e9
            raise ConfigError(f"no room for the image cache ({need:.1f} GB at {size} px): {err.strerror or err}.",
                              file=str(pixels_file.parent),
                              fix="free disk space or point the cache folder at a larger disk.") from None
    stamps = np.lib.format.open_memmap(stamps_file, mode="w+", dtype=np.int64, shape=(n, 3))
    stamps[:] = _UNSET
    stamps.flush()
    return pixels, stamps


def _current_stamps(paths: Sequence[str]) -> np.ndarray:
    """(N, 3) int64 identities of the files now; DatasetError naming the missing ones."""
    stamps = np.empty((len(paths), 3), dtype=np.int64)
    missing: list[str] = []
    for i, path in enumerate(paths):
        try:
            stamps[i] = _stamp(path)
        except OSError:
            missing.append(path)
    if missing:
        shown = ", ".join(os.path.basename(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(f"{len(missing)} of {len(paths)} images are missing: {shown}{more}.",
                           file=os.path.dirname(missing[0]) or ".",
                           fix="download the missing images or remove their rows from the split.")
    return stamps


def _raise_bad(paths: Sequence[str], bad: list[tuple[int, str, str | None]]) -> None:
    rows = sorted(bad)
    names = [os.path.basename(paths[r]) for r, _, _ in rows]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    first_row, problem, _ = rows[0]
    raise DatasetError(f"{len(rows)} image(s) cannot be used: {shown} (first problem: {problem})",
                       file=paths[first_row], fix="re-export or remove those images.")


# -------------------------------------------------------------------------------------- public

def open_image_cache(paths: Sequence[str], input_size: int, cache_root: str | os.PathLike, *,
                     workers: int | None = None, progress: Progress | None = None,
                     max_pixels: int | None = _images.DEFAULT_MAX_PIXELS) -> ImageCacheArray:
    """The decoded images of `paths` at `input_size`, decoding only rows that are new or whose file changed.

    workers: decoding processes (default: every usable core). progress(done, total) is called as rows
    become ready, starting with those already cached. Missing files raise DatasetError before anything
    is decoded; undecodable ones (truncated, not an image, above max_pixels) one DatasetError naming them
    after the pass, so the good rows stay cached. Two jobs opening the same list wait for each other.
    Workers start from a fresh forkserver: a script calling this needs `if __name__ == "__main__":`.
    """
    size = int(input_size)
    if size < 8:
        raise ConfigError(f"input_size must be at least 8 pixels, got {input_size}.")
    paths = tuple(os.fspath(p) for p in paths)
    n = len(paths)
    if n == 0:
        raise DatasetError("the split has no images.")
    now = _current_stamps(paths)
    folder = Path(cache_root) / "arrays"
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    pixels_file, stamps_file = folder / f"{key}.pixels.npy", folder / f"{key}.stamps.npy"
    with open(folder / f"{key}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        pixels, stamps = _open_or_create(pixels_file, stamps_file, n, size)
        todo = np.flatnonzero((stamps != now).any(axis=1))
        if progress is not None:
            progress(n - len(todo), n)
        if len(todo):
            _fill(pixels, stamps, now, paths, todo, size, pixels_file,
                  workers or default_workers(), progress, max_pixels)
        del pixels, stamps
    return ImageCacheArray(pixels=np.load(pixels_file, mmap_mode="r"), paths=paths, input_size=size,
                           file=pixels_file)


def _fill(pixels: np.ndarray, stamps: np.ndarray, now: np.ndarray, paths: tuple[str, ...], todo: np.ndarray,
          size: int, pixels_file: Path, workers: int, progress: Progress | None, max_pixels: int | None) -> None:
    """Decode the `todo` rows (each distinct file once), recording each row's stamp after its pixels."""
    n = len(paths)
    first_row: dict[str, int] = {}
    copies: dict[int, list[int]] = {}
    for row in todo.tolist():
        lead = first_row.setdefault(paths[row], row)
        copies.setdefault(lead, []).append(row)
    jobs = [(row, paths[row]) for row in first_row.values()]
    done = n - len(todo)
    bad: list[tuple[int, str, str | None]] = []

    def finish(results: list[tuple[int, str | None, str | None]]) -> None:
        nonlocal done
        for row, problem, fix in results:
            rows = copies[row]
            if problem is not None:
                bad.append((row, problem, fix))
            else:
                for other in rows[1:]:
                    pixels[other] = pixels[row]
                stamps[rows] = now[row]  # after the pixels: a kill in between leaves the row to redo
            done += len(rows)
        if progress is not None:
            progress(done, n)

    workers = max(1, min(int(workers), -(-len(jobs) // CHUNK_ROWS)))
    if workers == 1 or len(jobs) <= INLINE_UP_TO:
        global _writer
        _writer = _RowWriter(str(pixels_file))
        try:
            for start in range(0, len(jobs), CHUNK_ROWS):
                finish(_decode_rows(jobs[start:start + CHUNK_ROWS], size, max_pixels))
        finally:
            _writer.close()
            _writer = None
    else:
        pixels.flush()
        # forkserver: workers fork from a clean server, never from this process, whose thread pools
        # (OpenCV's, a backend's) would deadlock a forked child; the server imports the caller's script
        # once, so a script needs the usual `if __name__ == "__main__":` guard
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", __name__])
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(str(pixels_file),)) as pool:
            pending = {pool.submit(_decode_rows, jobs[s:s + CHUNK_ROWS], size, max_pixels)
                       for s in range(0, len(jobs), CHUNK_ROWS)}
            while pending:
                ready, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    finish(future.result())
    stamps.flush()
    if bad:
        _raise_bad(paths, bad)


__all__ = ["ARRAY_VERSION", "ImageCacheArray", "cache_key", "decode_for_cache", "default_workers",
           "open_image_cache", "quantize"]
