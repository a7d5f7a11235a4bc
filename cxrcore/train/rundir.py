"""The run folder's records: log lines, run.json, metrics.csv columns, TensorBoard scalars.
"""
from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cxrcore.errors import ConfigError
from cxrcore.train import jobs
from cxrcore.train.trainconfig import PRESET_NOTES, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from cxrcore.train.data import TrainingData


#: Where a job's log lines go (stdout, i.e. train.log, by default).
Log = Callable[[str], None]


def print_log(message: str) -> None:
    """One time-stamped log line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _event(step: int, *, file_version: str | None = None, scalars: dict[str, float] | None = None) -> bytes:
    """A tensorflow.Event protobuf, encoded by hand: wall_time, step, and a file version or simple_value scalars."""
    out = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
    if file_version is not None:
        text = file_version.encode()
        out += b"\x1a" + _varint(len(text)) + text
    if scalars:
        summary = b""
        for tag, value in scalars.items():
            name = tag.encode()
            item = b"\x0a" + _varint(len(name)) + name + b"\x15" + struct.pack("<f", value)
            summary += b"\x0a" + _varint(len(item)) + item
        out += b"\x2a" + _varint(len(summary)) + summary
    return out


class ScalarLog:
    """TensorBoard scalars in an event file (TFRecord of Event protos) written in plain Python.

    Every backend writes the same file, with no TensorFlow or tensorboard package in the job's process.
    """

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.path: Path | None = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
        self._append(_event(0, file_version="brain.Event:2"))

    def _append(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        with open(self.path, "ab") as handle:
            handle.write(header + struct.pack("<I", _masked_crc32c(header)) + record
                         + struct.pack("<I", _masked_crc32c(record)))

    def write(self, step: int, values: dict[str, float]) -> None:
        """One event with the finite values of `values` at `step`."""
        if self.path is None:
            return
        finite = {tag: float(v) for tag, v in values.items() if v is not None and math.isfinite(v)}
        if finite:
            self._append(_event(step, scalars=finite))


def metrics_columns(labels: tuple[str, ...]) -> list[str]:
    """metrics.csv header: epoch, loss, val_loss, val_auroc_mean, learning_rate, seconds, val_auroc_<Label>..."""
    return ["epoch", "loss", "val_loss", "val_auroc_mean", "learning_rate", "seconds",
            *[f"val_auroc_{label}" for label in labels]]


def write_run_json(run_dir: Path, config: TrainConfig, data: TrainingData, extra: dict[str, Any],
                    resume: bool) -> None:
    path = run_dir / jobs.RUN_FILE
    previous: dict[str, Any] = {}
    if resume and path.is_file():
        try:
            previous = jobs.read_json(path)
        except ConfigError:
            previous = {}
    record = {
        "run_id": run_dir.name, "created": previous.get("created", time.time()), "labels": list(data.labels),
        "class_weights": {label: {"w_pos": float(p), "w_neg": float(n)}
                          for label, p, n in zip(data.labels, data.w_pos, data.w_neg)},
        "class_weighting": config.class_weighting, "data": data.fingerprints, "sizes": data.sizes,
        "normalization": data.normalization.to_dict(), "monitor": data.monitor, "notes": data.notes,
        "preset": config.preset, "preset_note": PRESET_NOTES.get(config.preset, ""), **extra,
        "resumes": previous.get("resumes", []) + ([time.time()] if resume else []),
    }
    jobs.atomic_write_json(path, record)


def check_fingerprints(run_dir: Path, data: TrainingData, log: Log) -> None:
    try:
        before = jobs.read_json(run_dir / jobs.RUN_FILE).get("data", {})
    except ConfigError:
        return
    for role, now in data.fingerprints.items():
        old = before.get(role, {}).get("sha256")
        if old and old != now["sha256"]:
            log(f"warning: the {role} split file changed since this run started; the resumed model mixes data.")
