"""`predict`: probabilities for every image of a split, with the model's own size and normalization.

    python -m cxrcore predict --model PATH --split FILE --images DIR --out PREDS.csv [--batch N]
        [--normalize-from TRAIN_FILE] [--shard I/N] [--cache DIR | --no-cache] [--missing error|skip]
        [--backend auto|tensorflow|jax|torch]
    python -m cxrcore predict --merge PART.csv [PART.csv ...] --out PREDS.csv

Output: `Image` plus one `prob_<Label>` column per class the model predicts. Results are cached per
(model file, split) under --cache (default cache/predictions). Several GPUs on one machine are used
through MirroredStrategy; --shard I/N predicts the I-th of N contiguous blocks (I from 1) so several
machines can share a split, and --merge joins their outputs. --backend runs the model on another Keras
backend (a GPU machine without TensorFlow: jax or torch; images then come through the decoded-image cache).

Images of the split that are not on disk are an error (naming them); with --missing skip the present
ones are predicted, the missing ones are named on stderr, and PREDS_images.txt lists the predicted
images so `evaluate --labels SPLIT@PREDS_images.txt` scores exactly those.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "predict"
HELP = "Predict a split with a model (batch inference, cached), or merge sharded prediction files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH", help="a .keras or .h5 model file")
    parser.add_argument("--split", metavar="FILE", help="labels file (course CSV, NIH table or TABLE@LIST)")
    parser.add_argument("--images", metavar="DIR", help="image folder")
    parser.add_argument("--out", required=True, metavar="CSV", help="where to write the predictions")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--normalize-from", metavar="FILE",
                        help="training split to fit 'dataset' normalization on when the model lacks it "
                             "(the course's .h5 files)")
    parser.add_argument("--shard", metavar="I/N", help="predict only the I-th of N blocks of the split")
    parser.add_argument("--cache", default="cache/predictions", metavar="DIR", help="prediction cache folder")
    parser.add_argument("--no-cache", action="store_true", help="always recompute")
    parser.add_argument("--merge", nargs="+", metavar="CSV", help="merge shard outputs into --out instead")
    parser.add_argument("--missing", choices=("error", "skip"), default="error",
                        help="images of the split not on disk: error (default), or skip them, predict the "
                             "others and write OUT_images.txt listing the predicted images")
    parser.add_argument("--backend", default="tensorflow", choices=("auto", "tensorflow", "jax", "torch"),
                        help="Keras backend to predict with (default tensorflow; auto: the one that sees a GPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _shard(text: str) -> tuple[int, int]:
    from cxrcore.errors import ConfigError

    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard '{text}' is not I/N.", fix="write e.g. --shard 2/4.") from None
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {text}: I must be between 1 and N.", fix="write e.g. --shard 1/4.")
    return index, count


def merge(parts: list[str], out: str) -> int:
    import numpy as np

    from cxrcore.data.predictions import read_predictions, write_predictions
    from cxrcore.errors import PredictionsError
    from cxrcore.fileio import check_output_file, writing

    target = check_output_file(out, inputs=parts)
    loaded = [read_predictions(p) for p in parts]
    labels = loaded[0].labels
    shard_of: dict[str, str] = {}
    for part in loaded:
        if list(part.labels) != list(labels):
            raise PredictionsError("shards predict different classes.", file=part.file,
                                   fix="merge outputs of the same model only.")
        for name in part.images:
            if name in shard_of:
                raise PredictionsError(f"image '{name}' is also predicted in {shard_of[name]}: the shards overlap.",
                                       file=part.file, fix="merge the outputs of one --shard I/N run each (the same "
                                                           "N, every I once), or give each file once.")
            shard_of[name] = part.file
    images = [name for part in loaded for name in part.images]
    with writing(target):
        write_predictions(target, images, np.concatenate([part.probs for part in loaded]), labels=labels)
    print(f"merged {len(parts)} file(s), {len(images)} images -> {out}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from cxrcore.errors import ConfigError

    if args.merge:
        return merge(args.merge, args.out)
    missing = [flag for flag, value in (("--model", args.model), ("--split", args.split),
                                        ("--images", args.images)) if not value]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}.", fix="see python -m cxrcore predict --help.")
    if args.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {args.batch}.")
    from cxrcore.train.backend import activate, choose_backend

    activate(choose_backend(args.backend).name)  # before anything imports Keras
    from cxrcore.commands import input_files, quiet_native_stderr
    from cxrcore.commands.audit import load_named_splits
    from cxrcore.fileio import (atomic_write_bytes, atomic_write_text, check_output_file, refuse_overwriting_inputs,
                                writing)
    from cxrcore.train.inference import cached_predictions, fit_normalization
    from cxrcore.train.registry import describe_model

    specs = [f"split={args.split}"] + ([f"train={args.normalize_from}"] if args.normalize_from else [])
    inputs = input_files(specs=specs, models=[args.model])
    out = check_output_file(args.out, inputs=inputs)  # before any work
    listed = out.with_name(out.name.split(".")[0] + "_images.txt")  # written with --missing skip
    if args.missing == "skip":
        check_output_file(listed, inputs=inputs)
    split = load_named_splits([f"split={args.split}"])[0]
    refuse_overwriting_inputs([out], [Path(args.images) / name for name in split.images])
    missing: list[str] = []
    if args.missing == "skip":
        split, missing = _present(split, args.images)
    if args.shard:
        index, count = _shard(args.shard)
        bounds = [round(i * len(split) / count) for i in range(count + 1)]
        split.frame = split.frame.iloc[bounds[index - 1]:bounds[index]].reset_index(drop=True)
    entry = describe_model(Path(args.model), Path(args.model).stem)
    loaded = _load(args.model, entry.info)
    if not loaded.info.normalization.fitted:
        if not args.normalize_from:
            raise ConfigError("this model uses 'dataset' normalization without stored mean/std.",
                              file=args.model, fix="pass --normalize-from TRAIN_FILE (the course fits it on "
                                                   "100 training images).")
        train = load_named_splits([f"train={args.normalize_from}"])[0]
        with quiet_native_stderr():
            loaded = fit_normalization(loaded, train, args.images)

    def progress(done: int, total: int, stage: str) -> None:
        if not args.quiet:
            print(f"\r{stage}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    cache = Path(args.cache) if not args.no_cache else Path(args.out).parent / ".predict-tmp"
    with quiet_native_stderr():  # TensorFlow's log lines when an image fails to decode
        path = cached_predictions(cache, entry.fingerprint, loaded, split, args.images, batch_size=args.batch,
                                  progress=progress)
    with writing(out):
        atomic_write_bytes(out, path.read_bytes())
    if args.no_cache:
        path.unlink(missing_ok=True)
    if missing:
        with writing(listed):
            atomic_write_text(listed, "\n".join(split.frame["Image"].astype(str)) + "\n")
        print(f"--missing skip: {_summary(missing, len(split) + len(missing))}; the {len(split)} predicted images are "
              f"listed in {listed} (evaluate with --labels {args.split.split('@')[0]}@{listed})", file=sys.stderr)
    print(f"{len(split)} images -> {args.out}", file=sys.stderr)
    return 0


def _present(split, image_root: str):
    """The split's images on disk; DatasetError when none is."""
    from cxrcore.data.pipeline import present_rows
    from cxrcore.errors import DatasetError

    present, missing = present_rows(split, image_root)
    if not len(present):
        raise DatasetError(f"none of the {len(missing)} images of the split is in the image folder.",
                           file=image_root, fix="check --images (the folder that holds the PNG files).")
    return present, missing


def _summary(missing: list[str], total: int) -> str:
    from cxrcore.data.pipeline import missing_summary

    return missing_summary(missing, total)


def _load(path: str, info):
    """Load the model, under MirroredStrategy when several GPUs are visible (TensorFlow's start-up log silenced)."""
    from cxrcore.commands import quiet_native_stderr

    with quiet_native_stderr():
        import keras

        from cxrcore.train.model import load_model

        if keras.backend.backend() != "tensorflow":
            return load_model(path, info)
        import tensorflow as tf

        if len(tf.config.list_physical_devices("GPU")) > 1:
            with tf.distribute.MirroredStrategy().scope():
                return load_model(path, info)
        return load_model(path, info)
