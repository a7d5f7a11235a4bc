"""`run_job(run_dir)`, what `python -m cxrcore train` runs: the folder's lock, status.json beating, the
loop, and always a final state (finished, cancelled, failed); SIGTERM / SIGINT cancel cleanly.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from cxrcore.errors import ConfigError, CxrError
from cxrcore.train import jobs
from cxrcore.train.loop import TrainResult, train
from cxrcore.train.rundir import Log, print_log
from cxrcore.train.trainconfig import TrainConfig


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it after every batch."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> dict[int, Any]:
        """Handle SIGTERM and SIGINT (main thread only); returns the previous handlers for `restore`."""
        def handler(signum: int, _frame: Any) -> None:
            self.requested = True
            self.signal_name = signal.Signals(signum).name

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def restore(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_job(run_dir: str | os.PathLike, config: TrainConfig, *, resume: bool = False, log: Log = print_log) -> TrainResult:
    """Lock the folder, beat status.json, train, and always leave a final state; SIGTERM cancels cleanly.

    Under MultiWorkerMirroredStrategy only the chief locks and writes the folder; other workers train silently.
    """
    run_dir = Path(run_dir)
    multi, chief, index = jobs.tf_config_role()
    lock = jobs.RunLock.acquire(run_dir) if chief else None
    previous_handlers: dict[int, Any] = {}
    try:
        status = jobs.StatusWriter(run_dir, enabled=chief)
        flag = StopFlag()
        previous_handlers = flag.install()
        previous = status.fields.get("state")
        if previous == "queued":  # launched: the launcher recorded the state it resumed from
            previous = status.fields.get("resumed_from")
        elif previous in jobs.ACTIVE_STATES:  # we hold the lock now, so its previous holder is gone
            previous = "interrupted"
        now = time.time()
        for key in ("cancel_requested", "finished", "phase"):
            status.fields.pop(key, None)
        status.update(force=True, state="running", phase="starting", run_id=run_dir.name, pid=os.getpid(),
                      host=jobs.hostname(), started=now, created=status.fields.get("created", now),
                      resumed_from=previous if resume else None, error=None, message=None,
                      preset=config.preset, epochs=config.epochs)
        status.start_heartbeat()
        if multi:
            log(f"multi-worker training: worker {index}{' (chief: writes the run folder)' if chief else ''}.")
        try:
            result = train(config, run_dir, resume=resume, status=status, should_stop=flag, log=log)
        except CxrError as err:
            status.stop_heartbeat()
            status.update(force=True, state="failed", phase=None, error=str(err), eta_seconds=None)
            log(f"failed: {err}")
            raise
        except BaseException as err:
            status.stop_heartbeat()
            if jobs.is_disk_full(err):  # a write other than the models' (metrics, state, TensorBoard)
                disk = jobs.disk_full_error(getattr(err, "filename", None) or run_dir,
                                            "Files written before are kept; a resume continues from the last "
                                            "checkpoint.")
                status.update(force=True, state="failed", phase=None, error=str(disk), eta_seconds=None)
                log(f"failed: {disk}")
                traceback.print_exc(file=sys.stdout)
                raise disk from None
            text = _friendly_error(err)
            status.update(force=True, state="failed", phase=None, error=text, eta_seconds=None)
            log(f"failed: {text}")
            traceback.print_exc(file=sys.stdout)
            if isinstance(err, Exception) and text.startswith("out of memory"):
                raise ConfigError(text, fix="lower batch_size or input_size.") from None
            raise
        status.stop_heartbeat()
        if result.state == "cancelled":
            message = (f"cancelled ({flag.signal_name or 'stop requested'}) after {result.epochs_done} full "
                       "epoch(s); resume continues from the last checkpoint.")
        elif result.stopped_early:
            message = f"stopped early after {result.epochs_done} epochs (no improvement)."
        else:
            message = f"finished {result.epochs_done} epochs."
        status.update(force=True, state=result.state, phase=None, message=message, eta_seconds=0,
                      finished=time.time(), epochs_done=result.epochs_done)
        log(message + f" Wall time {result.seconds:.0f} s.")
        return result
    finally:
        StopFlag.restore(previous_handlers)
        if lock is not None:
            lock.release()


def _friendly_error(err: BaseException) -> str:
    name = type(err).__name__
    text = (str(err).strip().splitlines() or [name])[0][:300]
    if name == "ResourceExhaustedError" or "OOM" in text:
        return f"out of memory ({text[:160]})"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return f"{name}: {text}"
