"""`train`: train a classifier into a run folder, resume it, estimate its time per epoch, or list runs.

    python -m cxrcore train --config FILE [--set KEY=VALUE ...]     new run under runs/ (or --run-dir DIR)
    python -m cxrcore train --preset demo --dataset data/demo       no file needed
    python -m cxrcore train --config runs/<id>/config.json          train a folder made by the Training page
    python -m cxrcore train --resume runs/<id> [--set epochs=N]     continue after a crash, kill or cancel
    python -m cxrcore train --config FILE --probe [--format json]   time a few batches: estimate per epoch
    python -m cxrcore train --config FILE --dry-run                 validate and print the resolved config
    python -m cxrcore train --list [--format json]                  runs with their state

At most CXR_MAX_JOBS training jobs (default 1) run on this machine at once, counted with the ones the
Training page started; a further start is refused (exit 2). A teacher at the terminal can go past the
limit with --ignore-job-limit.

FILE is TOML or JSON (keys: see cxrcore/train/trainconfig.py, TrainConfig). A run folder holds config.json,
run.json (data fingerprints, labels, class weights), status.json (heartbeat), metrics.csv, train.log
(the job's own lines), raw.log (when launched by the page: everything the process printed, TensorFlow's
notices included), checkpoints/, best.keras (+ best.json) and tensorboard/.
Exit 0 finished (or probe/list/dry-run done), 130 cancelled (SIGTERM/SIGINT; resumable), 2 invalid
input or a failed run (one line on stderr; status.json says 'failed' with the same message).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

NAME = "train"
HELP = ("Train a classifier (DenseNet121, ResNet50, EfficientNetV2-S, ViT-B/16 or the small demo CNN) with "
        "the weighted loss into runs/<id>/; resume, probe the time per epoch, or list runs.")
EXIT_CANCELLED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="training config, .toml or .json")
    parser.add_argument("--preset", metavar="NAME", help="demo, cpu-classroom, gpu-full or auto (overrides the file's)")
    parser.add_argument("--dataset", metavar="DIR", help="dataset folder (e.g. data/demo); overrides the file's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one setting (value read as JSON when it parses), e.g. --set epochs=3; repeat")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run folder from its last checkpoint")
    parser.add_argument("--run-dir", metavar="DIR", help="train into this (new or prepared) folder")
    parser.add_argument("--runs-root", metavar="DIR",
                        help="where new run folders go (default: $CXR_RUNS_ROOT or runs/)")
    parser.add_argument("--probe", action="store_true", help="only estimate the time per epoch (a few batches)")
    parser.add_argument("--probe-batches", type=int, default=4, metavar="N", help="batches timed by --probe")
    parser.add_argument("--dry-run", action="store_true", help="only validate the config and print it resolved")
    parser.add_argument("--list", action="store_true", help="list the runs under the runs root")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--ignore-job-limit", action="store_true",
                        help="start even when CXR_MAX_JOBS training jobs (default 1) already run on this machine")


def runs_root(args: argparse.Namespace) -> Path:
    """--runs-root, else $CXR_RUNS_ROOT, else ./runs."""
    return Path(args.runs_root or os.environ.get("CXR_RUNS_ROOT") or "runs")


def _overrides(args: argparse.Namespace) -> dict:
    from cxrcore.train.trainconfig import parse_override

    values = dict(parse_override(text) for text in args.overrides)
    if args.preset:
        values["preset"] = args.preset
    if args.dataset:
        values["dataset"] = args.dataset
    return values


def _list(args: argparse.Namespace) -> int:
    from cxrcore.train.jobs import list_runs

    runs = list_runs(runs_root(args))
    rows = [r.row() for r in runs]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs under {runs_root(args)}")
        return 0
    for row in rows:
        best = "-" if row["best val AUROC"] is None else f"{row['best val AUROC']:.4f}"
        print(f"{row['run']:<40} {row['state']:<12} epoch {row['epoch']:<7} best {best:<7} {row['note']}")
    return 0


LOCK_FD_ENV = "CXR_TRAIN_LOCK_FD"  # == cxrcore.train.jobs.LOCK_FD_ENV (not imported at module top: keep --help light)


def _resume(args: argparse.Namespace) -> int:
    from cxrcore.errors import ConfigError
    from cxrcore.train.jobs import CONFIG_FILE, already_running, atomic_write_text, lock_held
    from cxrcore.train.trainconfig import RESUMABLE_KEYS, load_config, with_changes

    run_dir = Path(args.resume)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError("not a run folder (no config.json).", file=str(run_dir),
                          fix="give a folder under runs/ made by `train` or the Training page.")
    if not os.environ.get(LOCK_FD_ENV) and lock_held(run_dir):  # a launcher hands its lock over: not a conflict
        raise already_running(run_dir)
    with _failure_recorded(run_dir):
        config = load_config(run_dir / CONFIG_FILE)
        changes = _overrides(args)
        bad = [k for k in changes if k not in RESUMABLE_KEYS]
        if bad:
            raise ConfigError(f"'{bad[0]}' cannot change when resuming (the checkpoint was trained with it).",
                              fix=f"only {', '.join(RESUMABLE_KEYS)} can change; start a new run for other settings.")
        if changes:
            config = with_changes(config, **changes)
        _check_backend(config)
        if changes:
            atomic_write_text(run_dir / CONFIG_FILE, config.to_json())
    if not args.ignore_job_limit:
        _claim_job_slot(run_dir, created=False)
    return _train(run_dir, config, resume=True)


@contextlib.contextmanager
def _failure_recorded(run_dir: Path):
    """A launched job (it owns the folder's lock) that fails before training records the error in status.json."""
    from cxrcore.errors import CxrError
    from cxrcore.train.jobs import StatusWriter

    try:
        yield
    except CxrError as err:
        if os.environ.get(LOCK_FD_ENV):
            from cxrcore.train.jobs import job_logger

            StatusWriter(run_dir).update(force=True, state="failed", error=str(err), pid=os.getpid())
            job_logger(run_dir, echo=False)(f"failed: {err}")
        raise


def _claim_job_slot(run_dir: Path, *, created: bool) -> None:
    """Count this job against CXR_MAX_JOBS and take its train.lock in the same step (jobs.job_slot); the
    locked descriptor goes to run_job the way a launcher hands it over. A refused new folder is removed."""
    from cxrcore.errors import ConfigError
    from cxrcore.train.jobs import job_slot, take_run_lock, tf_config_role

    if os.environ.get(LOCK_FD_ENV) or not tf_config_role()[1]:
        return  # launched by the Training page (counted there), or a multi-worker helper (the chief counts)
    try:
        with job_slot(run_dir.parent, exclude=run_dir):
            os.environ[LOCK_FD_ENV] = str(take_run_lock(run_dir))
    except ConfigError:
        if created:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _check_backend(config) -> None:
    """A backend that is not installed here is refused before any folder is made (ConfigError: what to install)."""
    from cxrcore.train.backend import choose_backend

    choose_backend(config.backend)


def _train(run_dir: Path, config, *, resume: bool) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cxrcore.train.job import run_job
    from cxrcore.train.jobs import job_logger, tf_config_role

    # the chief writes the run's own lines into train.log; other workers of a multi-worker run only print theirs
    own_log = {"log": job_logger(run_dir)} if tf_config_role()[1] else {}
    result = run_job(run_dir, config, resume=resume, **own_log)
    print(f"run folder: {run_dir}")
    return EXIT_CANCELLED if result.state == "cancelled" else 0


def _file_preset(config_path: Path | None) -> str | None:
    from cxrcore.train.trainconfig import read_config_file

    return read_config_file(config_path).get("preset") if config_path is not None else None


def _preflight(config) -> None:
    """The checks the Training page shows before Start (cxrcore.train.preflight): warnings on stderr, and a run that
    would fail (image files missing) refused before it starts, with the setting that trains on the rest."""
    from cxrcore.errors import ConfigError
    from cxrcore.train.preflight import check_run

    checks = check_run(config)
    for finding in checks.findings:
        if finding.level == "error":
            fix = ("add --set skip_missing_images=true to train on the images present, or copy the missing "
                   "files into the image folder." if finding.topic == "missing_images" and not
                   config.skip_missing_images else None)
            raise ConfigError(finding.text, fix=fix)
        print(f"warning: {finding.text}", file=sys.stderr)


def _prepared_folder(config_path: Path) -> Path | None:
    """A config.json inside a run folder made by create_run / the Training page trains in that folder."""
    from cxrcore.train.jobs import STATUS_FILE

    if config_path.name == "config.json" and (config_path.parent / STATUS_FILE).is_file():
        return config_path.parent
    return None


def run(args: argparse.Namespace) -> int:
    from cxrcore.errors import ConfigError

    if args.list:
        return _list(args)
    if args.resume:
        if args.config or args.probe or args.dry_run:
            raise ConfigError("--resume takes the run folder's own config.json.",
                              fix="drop --config/--probe/--dry-run, or start a new run with --config.")
        return _resume(args)
    if not args.config and not args.preset:
        raise ConfigError("nothing to train: give --config FILE, or --preset NAME with --dataset DIR.",
                          fix="e.g. python -m cxrcore train --preset demo --dataset data/demo")
    from cxrcore.train.jobs import STATUS_FILE, create_run, read_json, tf_config_role
    from cxrcore.train.trainconfig import load_config

    config_path = Path(args.config) if args.config else None
    prepared = _prepared_folder(config_path) if config_path else None
    with _failure_recorded(prepared) if prepared else contextlib.nullcontext():
        config = load_config(args.config, _overrides(args))
        _check_backend(config)
        if _overrides(args).get("preset", "") == "auto" or (not args.preset and _file_preset(config_path) == "auto"):
            from cxrcore.train.trainconfig import auto_preset

            print(f"preset auto: {auto_preset()[1]}", file=sys.stderr)
        _preflight(config)
    if args.dry_run:
        print(config.to_json(), end="")
        return 0
    if args.probe:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from cxrcore.train.probe import probe

        result = probe(config, batches=max(1, args.probe_batches))
        print(json.dumps(result.to_dict(), indent=2) if args.format == "json" else result.describe())
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else prepared
    _multi, chief, _index = tf_config_role()
    created = False
    if run_dir is not None and (run_dir / STATUS_FILE).is_file():
        state = read_json(run_dir / STATUS_FILE).get("state")
        if not chief:  # a multi-worker helper: the chief owns the folder and its state
            return _train(run_dir, config, resume=False)
        if state != "queued":
            raise ConfigError(f"this run folder has been trained already (state {state}).", file=str(run_dir),
                              fix=f"continue it with --resume {run_dir}, or start a new run.")
        if not _prepared_folder(run_dir / "config.json"):
            raise ConfigError("the run folder has no config.json.", file=str(run_dir))
        if config_path is None or config_path.resolve() != (run_dir / "config.json").resolve():
            from cxrcore.train.jobs import atomic_write_text

            atomic_write_text(run_dir / "config.json", config.to_json())
    elif run_dir is not None:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError("--run-dir exists and is not a prepared run folder.", file=str(run_dir),
                              fix="give a new folder, or leave --run-dir out to get one under runs/.")
        if run_dir.exists():
            run_dir.rmdir()
        run_dir = create_run(run_dir.parent, config, run_id=run_dir.name)
        created = True
    else:
        run_dir = create_run(runs_root(args), config)
        created = True
    if not args.ignore_job_limit:
        _claim_job_slot(run_dir, created=created)
    print(f"training into {run_dir}", file=sys.stderr, flush=True)
    return _train(run_dir, config, resume=False)
