"""Reading and writing files safely: the one place where every input is opened and every output written.

Reading: only regular files (a FIFO would block forever, /dev/zero never ends), within a size cap,
gzip inflated with a counter (a 1.5 MB bomb stops at the cap instead of filling memory), JSON
parsed only after a depth check (100,000 nested brackets raised RecursionError). Writing: atomic
(temp file + rename, so a reader never sees half a file) with the permissions the user's umask gives,
never onto one of the command's inputs, and a plain message when the place cannot be written.
The limits are in docs/reliability.md; each can be changed by its environment variable.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import zlib
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from cxrcore.errors import CxrError, OutputError

MiB = 1 << 20


def limit(env: str, default: int) -> int:
    """A byte (or count) limit: `default`, or the positive integer in environment variable `env`."""
    raw = os.environ.get(env, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


#: Largest JSON file read (model info, .keras config, run status and config): CXR_MAX_JSON_BYTES.
MAX_JSON_BYTES = ("CXR_MAX_JSON_BYTES", 32 * MiB)
#: Deepest nesting of brackets accepted in JSON (Keras configs nest about 15 deep): CXR_MAX_JSON_DEPTH.
MAX_JSON_DEPTH = ("CXR_MAX_JSON_DEPTH", 200)
#: Largest labels or predictions file, after inflating a .gz (NIH's full table is 8 MB): CXR_MAX_TABLE_BYTES.
MAX_TABLE_BYTES = ("CXR_MAX_TABLE_BYTES", 64 * MiB)
#: Longest line of a labels or predictions file (a row is under 1 kB): CXR_MAX_LINE_BYTES.
MAX_LINE_BYTES = ("CXR_MAX_LINE_BYTES", 64 * 1024)
#: Largest image file read (a 50-megapixel 16-bit DICOM is 100 MB): CXR_MAX_IMAGE_BYTES.
MAX_IMAGE_BYTES = ("CXR_MAX_IMAGE_BYTES", 512 * MiB)


def _mib(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.0f} MB"
    return f"{n / 1024:.0f} kB" if n >= 1024 else f"{n} bytes"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _the(what: str) -> str:
    """How a message names the content: a file name as it is ("status.json"), else "the model info"."""
    return what if "." in what else f"the {what}"


def _a(what: str) -> str:
    return ("an " if what[:1].lower() in "aeiou" else "a ") + what


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device (like /dev/zero)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_for_reading(path: str | os.PathLike, *, error: type[CxrError], what: str,
                     max_bytes: int | None = None, env: str | None = None) -> BinaryIO:
    """Open a regular file for reading; `error` (naming the file) when it is missing, a folder, a pipe or a
    device (links followed), unreadable, or larger than max_bytes. Opening never blocks: O_NONBLOCK
    keeps a FIFO from waiting for a writer, and a FIFO is refused right after."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{_the(what)} does not exist.", file=name, fix="check the path.") from None
    except PermissionError:
        raise error(f"{_the(what)} cannot be read: permission denied.", file=name,
                    fix="give your user read access to it (ls -l shows its owner and permissions).") from None
    except OSError as err:
        raise error(f"{_the(what)} cannot be opened ({err.strerror or err}).", file=name) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"this is a folder, not {_a(what)}.", file=name, fix=f"point at the {what} inside it.")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"this is {_kind(info.st_mode)}, not {_a(what)}; refused (reading it could block or "
                        "never end).", file=name, fix=f"point at the {what} itself, not a pipe or device.")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{_the(what)} is {_mib(info.st_size)}, more than the {_mib(max_bytes)} limit.", file=name,
                        fix=f"use a smaller file{f', or raise {env}' if env else ''}.")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file_bytes(path: str | os.PathLike, *, error: type[CxrError], what: str,
                    max_bytes: int | None = None, env: str | None = None) -> bytes:
    """The whole of a regular file (see open_for_reading), never more than max_bytes even if it grows."""
    with open_for_reading(path, error=error, what=what, max_bytes=max_bytes, env=env) as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise error(f"{_the(what)} is more than the {_mib(max_bytes)} limit.", file=os.fspath(path),
                    fix=f"use a smaller file{f', or raise {env}' if env else ''}.")
    return data


def inflate_gzip(data: bytes, *, max_bytes: int, error: type[CxrError], file: str, what: str,
                 env: str | None = None) -> bytes:
    """Inflate gzip data (several members allowed) in 1 MB steps, refusing as soon as the output passes
    max_bytes: a decompression bomb costs at most max_bytes of memory, never its full size."""
    out: list[bytes] = []
    total = 0
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(rest, MiB)
            while True:
                total += len(chunk)
                if total > max_bytes:
                    raise error(f"{_the(what)} inflates to more than {_mib(max_bytes)} (a decompression bomb, or a "
                                "file too large for this tool); refused before inflating it all.", file=file,
                                fix=f"use a smaller file{f', or raise {env}' if env else ''}.")
                out.append(chunk)
                if inflater.eof or not inflater.unconsumed_tail and not chunk:
                    break
                chunk = inflater.decompress(inflater.unconsumed_tail, MiB)
            if not inflater.eof:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            rest = inflater.unused_data.lstrip(b"\x00")
    except (zlib.error, EOFError) as err:
        raise error(f"the gzip file is damaged ({err}).", file=file, fix="download or copy it again.") from None
    return b"".join(out)


def read_table_bytes(source: str | os.PathLike | bytes, *, error: type[CxrError], file: str, what: str) -> bytes:
    """A labels or predictions file (path or uploaded bytes) as bytes, gunzipped, every guard applied:
    regular file, at most MAX_TABLE_BYTES before and after inflating, no line longer than MAX_LINE_BYTES."""
    cap, env = limit(*MAX_TABLE_BYTES), MAX_TABLE_BYTES[0]
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > cap:
            raise error(f"{_the(what)} is {_mib(len(data))}, more than the {_mib(cap)} limit.", file=file,
                        fix=f"use a smaller file, or raise {env}.")
    else:
        data = read_file_bytes(source, error=error, what=what, max_bytes=cap, env=env)
    if data[:2] == b"\x1f\x8b":
        data = inflate_gzip(data, max_bytes=cap, error=error, file=file, what=what, env=env)
    check_line_lengths(data, error=error, file=file)
    return data


def check_line_lengths(data: bytes, *, error: type[CxrError], file: str) -> None:
    """Refuse a text whose longest line passes MAX_LINE_BYTES (one 200 MB field cost 1.9 GB in pandas).
    One vectorised pass over the newlines (a million-row file: milliseconds)."""
    longest = limit(*MAX_LINE_BYTES)
    if len(data) <= longest:
        return
    import numpy as np

    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    lengths = np.diff(np.concatenate(([-1], ends, [len(data)]))) - 1
    over = np.flatnonzero(lengths > longest)
    if over.size:
        line_no, length = int(over[0]) + 1, int(lengths[over[0]])
        raise error(f"line {line_no} is {_mib(length)} long, more than the {_mib(longest)} a line may "
                    "have (a labels or predictions row is under 1 kB).", file=file,
                    fix="check that this is the right file and that its quotes are balanced.")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def json_depth(data: bytes) -> int:
    """How deeply brackets nest in JSON text (strings skipped), without parsing it (no recursion)."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, bytes(set(range(256)) - set(b"[]{}")))
    if not brackets:
        return 0
    return max(accumulate(1 if c in b"[{" else -1 for c in brackets))


def parse_json(data: bytes | str, *, error: type[CxrError], file: str | None, what: str | None) -> Any:
    """JSON text -> value; `error` naming the file when it is too large, nested too deeply or not JSON.
    `what` names the content in messages; None for a hand-written file (a syntax error gives its line)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    hand_written, what = what is None, what or "file"
    cap, depth_cap = limit(*MAX_JSON_BYTES), limit(*MAX_JSON_DEPTH)
    if len(raw) > cap:
        raise error(f"{_the(what)} is {_mib(len(raw))} of JSON, more than the {_mib(cap)} limit.", file=file,
                    fix=f"check that this is the right file, or raise {MAX_JSON_BYTES[0]}.")
    depth = json_depth(raw)
    if depth > depth_cap:
        raise error(f"{_the(what)} nests {depth} levels deep, more than the {depth_cap} JSON may have here "
                    "(a damaged or hostile file).", file=file, fix="write the file again.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{_the(what)} is damaged: not UTF-8 text (byte {err.start}).", file=file,
                    fix="write the file again.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if hand_written:  # a file the user writes by hand (a training config): where, as an editor shows it
            raise error(f"is not valid JSON ({err.msg}).", file=file, rows=[err.lineno],
                        fix='write a JSON object, e.g. {"preset": "demo", "dataset": "data/demo"}.') from None
        problem = "is empty" if not text.strip() else f"is damaged: not valid JSON ({err.msg}, line {err.lineno})"
        raise error(f"{_the(what)} {problem}.", file=file, fix="write the file again.") from None
    except RecursionError:  # belt and braces: the depth check comes first
        raise error(f"{_the(what)} nests too deeply.", file=file, fix="write the file again.") from None


def read_json_file(path: str | os.PathLike, *, error: type[CxrError], what: str) -> Any:
    """A JSON file read with every guard: regular file, MAX_JSON_BYTES, MAX_JSON_DEPTH."""
    name = os.fspath(path)
    data = read_file_bytes(name, error=error, what=what, max_bytes=limit(*MAX_JSON_BYTES), env=MAX_JSON_BYTES[0])
    return parse_json(data, error=error, file=name, what=what)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def user_umask() -> int:
    """The process umask, read without changing it (/proc on Linux; os.umask set-and-restore elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp(path: str | os.PathLike, *, suffix: str = ".tmp") -> tuple[int, Path]:
    """(fd, temp path) beside `path` for an atomic write, with the mode a plain open() would give (0666 less
    the umask; tempfile.mkstemp alone gives 0600, which the server account or a colleague cannot read)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~user_umask())
    except OSError:
        pass
    return fd, Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write through a temp file in the same folder, then os.replace (the temp file never stays behind).
    OSErrors propagate (training tells a full disk apart by errno); commands wrap calls in `writing`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text written atomically (see atomic_write_bytes)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _write_problem(err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "cannot be written: permission denied" if err.errno != errno.EROFS else \
            "cannot be written: the disk is read-only"
    if err.errno == errno.ENOENT:
        return "cannot be written: its folder does not exist"
    if err.errno == errno.EISDIR:
        return "is a folder, not a file"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):  # EEXIST: mkdir where a file of that name is
        return "cannot be written: a part of its path is a file, not a folder"
    if err.errno == errno.ENOSPC:
        return "cannot be written: the disk is full"
    return f"cannot be written ({err.strerror or err})"


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised while writing `path` into an OutputError naming `path` (never the temp file).
    Used by commands; training calls the atomic writes directly and tells a full disk apart by errno."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"{_write_problem(err)}.", file=os.fspath(path),
                          fix="choose an output path in a folder you can write to.") from None


def _check_creatable(path: Path) -> None:
    """OutputError unless `path` (a file or folder to be written) can be created: its nearest existing folder
    is a folder we may write into. Nothing is created here, so a run that fails later leaves no trace."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError("cannot be written: a part of its path is a file, not a folder.", file=str(path),
                          fix="choose an output path in a folder you can write to.")
    if not os.access(ancestor, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError("cannot be written: permission denied.", file=str(path),
                          fix="choose an output path in a folder you can write to.")


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check up front (before any long work) that `path` can be written as a file and is none of `inputs`:
    OutputError naming it otherwise. Missing folders are created when the file is written."""
    out = Path(path)
    refuse_overwriting_inputs([out], inputs)
    if out.is_dir():
        raise OutputError("is a folder, not a file.", file=str(out), fix="give a file name, e.g. add /out.csv.")
    _check_creatable(out)
    return out


def check_output_folder(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                        names: Iterable[str] = ()) -> Path:
    """Check up front that folder `path` can be created or written, and that none of the files it will
    hold (`names`) is one of `inputs`: OutputError naming it otherwise."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError("is a file, not a folder.", file=str(out), fix="give a folder with --out.")
    refuse_overwriting_inputs([out / n for n in names], inputs)
    _check_creatable(out / "x")
    return out


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def refuse_overwriting_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """OutputError when an output would overwrite an input: the same path, or the same file by inode
    (a hard link, a symlink, another spelling of the path)."""
    given = [p for p in inputs if p]
    ids = {_identity(p): p for p in given}
    ids.pop(None, None)
    names = {os.path.realpath(p): p for p in given}
    for out in outputs:
        hit = ids.get(_identity(out)) or names.get(os.path.realpath(out))
        if hit is not None:
            raise OutputError(f"writing here would overwrite an input file ({os.fspath(hit)}).", file=os.fspath(out),
                              fix="choose another output path.")


__all__ = ["MAX_IMAGE_BYTES", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_LINE_BYTES", "MAX_TABLE_BYTES",
           "atomic_write_bytes", "atomic_write_text", "check_line_lengths", "check_output_file",
           "check_output_folder", "inflate_gzip", "json_depth", "limit", "make_temp", "open_for_reading",
           "parse_json", "read_file_bytes", "read_json_file", "read_table_bytes", "refuse_overwriting_inputs",
           "user_umask", "writing"]
