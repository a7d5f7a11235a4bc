"""CLI subcommands, one module each (see cxrcore.cli for the contract)."""
from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what C libraries write straight to file descriptor 2 to /dev/null while the block runs.

    TensorFlow 2.21 logs start-up lines and 'Local rendezvous is aborting' through absl whatever
    TF_CPP_MIN_LOG_LEVEL says, and libpng prints 'libpng error: ...' before OpenCV reports a damaged PNG;
    the CLI promises one line on stderr per error. Python's own sys.stderr (progress, warnings) keeps
    going to the real stderr, and exceptions propagate as usual.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor at all (a detached process): nothing to protect
        yield
        return
    python_stderr, own = sys.stderr, None
    if _writes_to_fd2(python_stderr):
        own = open(os.dup(saved), "w", encoding=python_stderr.encoding or "utf-8", errors="backslashreplace",
                   buffering=1)
        sys.stderr = own
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        if own is not None:
            own.close()
            if sys.stderr is own:
                sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


def input_files(*paths: str | os.PathLike | None, specs: Iterable[str] = (),
                models: Iterable[str | None] = ()) -> list[str]:
    """Every file a command reads, so that none of them is overwritten by its output: the given paths, the
    files of NAME=FILE / NAME=TABLE@LIST split specs, and each model with its `<model>.json` info."""
    from cxrcore.data.dataset import parse_split_spec

    files = [os.fspath(p) for p in paths if p]
    for spec in specs:
        _, file, list_file = parse_split_spec(spec)
        files += [file] + ([list_file] if list_file else [])
    for model in models:
        if model:
            files += [model, os.path.splitext(model)[0] + ".json"]
    return files
