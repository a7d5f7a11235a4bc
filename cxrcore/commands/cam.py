"""`cam`: class activation maps for one image, or for a split with a localization report.

    python -m cxrcore cam --model PATH --image PATH [--class LABEL ... | --top K]
        [--method cam|gradcam|gradcam++|gradient|smoothgrad|integrated-gradients] [--layer NAME]
        [--samples N --noise S --steps N --seed N] [--opacity A] [--smooth S] [--boxes FILE] --out OUT.png
    python -m cxrcore cam --model PATH --split FILE --images DIR [--boxes FILE] [--top K] [--limit N]
        [--faithfulness] --out DIR

One image: a PNG figure, the original (with its boxes when --boxes has any) next to one overlay per
class. A split: with boxes (--boxes, or a bbox.csv beside the split file), every boxed (image, class)
is scored (pointing game, IoU, IoBB; see cxrcore.explain.localization) and OUT gets maps/ (one figure per
image), localization.csv, localization_summary.csv and report.md; without boxes, figures of the top
K classes of each image. --faithfulness adds the deletion test (faithfulness.csv) and the deletion /
insertion curves' areas per finding (faithfulness_auc.csv). The gradient methods (cxrcore.explain.saliency) work
on any model; CAM and Grad-CAM(++) need a convolutional feature map with a pooled Dense head.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrcore.commands import quiet_native_stderr

NAME = "cam"
HELP = ("Class activation maps (CAM, Grad-CAM, Grad-CAM++) and gradient saliency (gradient, SmoothGrad, "
        "Integrated Gradients) for an image, or a split with a localization report.")
#: cxrcore.explain.cam.METHODS, spelled out so building the parser imports no OpenCV (tests check they match).
METHOD_CHOICES = ("cam", "gradcam", "gradcam++", "gradient", "smoothgrad", "integrated-gradients")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="a .keras or .h5 model file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="PATH", help="one image (PNG, JPEG or DICOM)")
    source.add_argument("--split", metavar="FILE", help="labels file of a split (batch mode; needs --images)")
    parser.add_argument("--images", metavar="DIR", help="image folder of the split")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--class", dest="classes", action="append", metavar="LABEL",
                         help="class to explain (repeatable; default: the top classes)")
    classes.add_argument("--top", type=int, default=4, metavar="K",
                         help="explain the K most probable classes (default 4)")
    parser.add_argument("--method", choices=METHOD_CHOICES, default="cam",
                        help="map method (default cam, the fast path; the last three work on any model)")
    parser.add_argument("--layer", metavar="NAME", help="layer for Grad-CAM (default: the last feature map)")
    parser.add_argument("--samples", type=int, default=25, metavar="N",
                        help="SmoothGrad: noisy copies averaged (default 25)")
    parser.add_argument("--noise", type=float, default=0.15, metavar="S",
                        help="SmoothGrad: noise sigma as a share of the input's range, 0-1 (default 0.15)")
    parser.add_argument("--steps", type=int, default=32, metavar="N",
                        help="Integrated Gradients: points on the path from the flat baseline (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="SmoothGrad: noise seed (default 0)")
    parser.add_argument("--opacity", type=float, default=0.4, help="map opacity in the overlay, 0-1 (default 0.4)")
    parser.add_argument("--colormap", default="jet", help="OpenCV colormap: jet, turbo, inferno, magma, viridis, hot")
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="Gaussian smoothing, sigma as a share of the image side (default 0)")
    parser.add_argument("--boxes", metavar="FILE", help="NIH BBox_List_2017-format box file")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="share of the map's maximum that bounds the map's box (default 0.5)")
    parser.add_argument("--limit", type=int, metavar="N", help="batch mode: at most N images")
    parser.add_argument("--faithfulness", action="store_true",
                        help="batch mode: also mask the most salient pixels and measure the probability drop, "
                             "and the deletion / insertion curves' areas")
    parser.add_argument("--normalize-from", metavar="FILE",
                        help="training split to fit 'dataset' normalization on (the course's .h5 files); "
                             "needs --images")
    parser.add_argument("--out", required=True, metavar="PATH", help="figure PNG (one image) or output folder (split)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _check(args: argparse.Namespace) -> None:
    from cxrcore.errors import ConfigError

    if not 0.0 <= args.opacity <= 1.0:
        raise ConfigError(f"--opacity must be between 0 and 1, got {args.opacity}.")
    if args.smooth < 0 or args.smooth > 0.2:
        raise ConfigError(f"--smooth must be between 0 and 0.2, got {args.smooth}.")
    if args.top is not None and args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}.")
    if not 0.0 < args.threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}.")
    if args.split and not args.images:
        raise ConfigError("--split needs --images (the image folder).", fix="add --images DIR.")
    if args.normalize_from and not args.images:
        raise ConfigError("--normalize-from needs --images (the training images' folder).")
    if not 1 <= args.samples <= 1000:
        raise ConfigError(f"--samples must be from 1 to 1000, got {args.samples}.")
    if not 0.0 <= args.noise <= 1.0:
        raise ConfigError(f"--noise must be between 0 and 1 (a share of the input's range), got {args.noise}.",
                          fix="SmoothGrad's authors recommend 0.1 to 0.2.")
    if not 1 <= args.steps <= 1000:
        raise ConfigError(f"--steps must be from 1 to 1000, got {args.steps}.")
    if args.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {args.seed}.")
    if args.image and Path(args.out).suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file for one image, got {args.out}.", fix="write e.g. --out map.png.")


def _saliency_options(args: argparse.Namespace):
    from cxrcore.explain.saliency import SaliencyOptions

    return SaliencyOptions(samples=args.samples, noise=args.noise, steps=args.steps, seed=args.seed)


def _load(args: argparse.Namespace):
    from cxrcore.errors import ConfigError
    from cxrcore.train.model import load_model
    from cxrcore.train.registry import describe_model

    entry = describe_model(Path(args.model), Path(args.model).stem)
    with quiet_native_stderr():  # TensorFlow's start-up log lines
        loaded = load_model(args.model, entry.info)
    if not loaded.info.normalization.fitted:
        if not args.normalize_from:
            raise ConfigError("this model uses 'dataset' normalization without stored mean/std.", file=args.model,
                              fix="pass --normalize-from TRAIN_FILE --images DIR (the course fits it on 100 "
                                  "training images).")
        from cxrcore.commands.audit import load_named_splits
        from cxrcore.train.inference import fit_normalization

        train = load_named_splits([f"train={args.normalize_from}"])[0]
        with quiet_native_stderr():
            loaded = fit_normalization(loaded, train, args.images)
    return loaded


def _boxes(args: argparse.Namespace, near: Path | None):
    from cxrcore.data.boxes import read_boxes
    from cxrcore.data.catalog import BBOX_NAMES

    if args.boxes:
        return read_boxes(args.boxes)
    if near is not None:
        for name in BBOX_NAMES:
            if (near / name).is_file():
                if not args.quiet:
                    print(f"boxes: {near / name}", file=sys.stderr)
                return read_boxes(near / name)
    return None


def _figure(image, result, boxes, truth, args):
    from cxrcore.explain.cam import explanation_figure

    own = [] if boxes is None else [(r.Label, (r.x, r.y, r.w, r.h)) for r in boxes.itertuples(index=False)]
    return explanation_figure(image, result, opacity=args.opacity, colormap=args.colormap, boxes=own,
                              truth=truth, columns=min(5, len(result.labels) + 1))


def read_image(path: str):
    """cxrcore.data.images.read_image without libpng's own 'libpng error' line on stderr (see quiet_native_stderr)."""
    from cxrcore.data import images

    with quiet_native_stderr():
        return images.read_image(path)


def run_single(args: argparse.Namespace) -> int:
    from cxrcore.commands import input_files
    from cxrcore.data.boxes import boxes_for
    from cxrcore.explain.cam import explain, png_bytes, top_labels
    from cxrcore.fileio import atomic_write_bytes, check_output_file, writing

    out = check_output_file(args.out, inputs=input_files(args.image, args.boxes, args.normalize_from,
                                                         models=[args.model]))  # before any work
    image = read_image(args.image)
    loaded = _load(args)
    labels = args.classes
    if not labels:
        probs = loaded.predict([image])[0]
        labels = top_labels(probs, args.top, available=loaded.info.labels)
    result = explain(loaded, image, labels, method=args.method, layer=args.layer, smooth=args.smooth,
                     saliency_options=_saliency_options(args))
    boxes = _boxes(args, None)
    own = boxes_for(boxes, Path(args.image).name) if boxes is not None else None
    fig = _figure(image, result, own, sorted(set(own["Label"])) if own is not None else [], args)
    with writing(out):
        atomic_write_bytes(out, png_bytes(fig))
    for label in result.labels:
        print(f"{label}\t{result.prob(label):.4f}")
    if not args.quiet:
        print(f"{result.extra['description']} maps on layer {result.layer} -> {out}", file=sys.stderr)
    return 0


def _report_text(summary, args, n_images: int, faith=None, curves=None) -> str:
    from cxrcore.explain.cam import describe_method

    lines = [f"# Localization report: {Path(args.model).name} on {Path(args.split).name}", "",
             f"Method: {describe_method(args.method, _saliency_options(args))}"
             f"{f' on layer {args.layer}' if args.layer else ''}; "
             f"{n_images} boxed images; map box threshold {args.threshold:g} of the maximum.", "",
             "pointing: share of (image, class) findings whose map maximum lies in a box of that class; "
             "random baseline: the boxes' share of the image (a random point's chance); "
             "IoBB: intersection over the map box's area (Wang et al. 2017); IoBB>=T: accuracy at T(IoBB).", ""]
    if summary.empty:
        lines.append("No box matches an image of the split and a class of the model.")
    else:
        cols = list(summary.columns)
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for row in summary.itertuples(index=False):
            lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    if faith is not None and not faith.empty:
        lines += ["", "## Faithfulness (deletion)", "",
                  "Mean drop of the class probability when the top k% most salient cells are masked, "
                  "against as many random cells.", "", "| masked | drop (salient) | drop (random) | pairs |",
                  "|---|---|---|---|"]
        for fraction, group in faith.groupby("fraction"):
            lines.append(f"| {fraction:.0%} | {group['drop salient'].mean():.4f} | {group['drop random'].mean():.4f} "
                         f"| {len(group)} |")
    if curves is not None and not curves.empty:
        lines += ["", "## Faithfulness (deletion / insertion curves)", "",
                  "Mean area under p(class) as the most salient cells are removed (deletion: lower is more "
                  "faithful) or put back into a blurred image (insertion: higher is more faithful), against a "
                  "random cell order.", "", "| deletion AUC | random | insertion AUC | random | pairs |",
                  "|---|---|---|---|---|",
                  f"| {curves['deletion AUC'].mean():.4f} | {curves['deletion AUC (random)'].mean():.4f} "
                  f"| {curves['insertion AUC'].mean():.4f} | {curves['insertion AUC (random)'].mean():.4f} "
                  f"| {len(curves)} |"]
    return "\n".join(lines) + "\n"


def run_split(args: argparse.Namespace) -> int:
    import pandas as pd

    from cxrcore.commands.audit import load_named_splits
    from cxrcore.data.boxes import boxes_for
    from cxrcore.data.labels import LABELS
    from cxrcore.data.pipeline import resolve_image_paths
    from cxrcore.errors import DatasetError
    from cxrcore.explain.cam import explain_batch, png_bytes, top_labels
    from cxrcore.explain.localization import deletion_test, localize_images, summarize_localization
    from cxrcore.export import csv_text

    from cxrcore.commands import input_files
    from cxrcore.fileio import check_output_folder, writing

    split = load_named_splits([f"split={args.split}"])[0]
    frame = split.frame
    paths = resolve_image_paths(frame, args.images)
    written = ["localization.csv", "localization_summary.csv", "faithfulness.csv", "faithfulness_auc.csv",
               "report.md", "maps.csv", *(f"maps/{Path(p).stem}.png" for p in paths)]
    check_output_folder(args.out, names=written, inputs=input_files(
        args.boxes, args.normalize_from, *paths, specs=[f"split={args.split}"], models=[args.model]))
    by_name = {Path(p).name: p for p in paths}
    truth = {str(row["Image"]): [label for label in LABELS if row[label]] for _, row in frame.iterrows()}
    loaded = _load(args)
    boxes = _boxes(args, Path(args.split).parent)
    out = Path(args.out)
    maps_dir = out / "maps"
    with writing(maps_dir):
        maps_dir.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int, stage: str) -> None:
        if not args.quiet:
            print(f"\r{stage}: {done}/{total}", end="" if done >= total else "", file=sys.stderr)
            if done >= total:
                print(file=sys.stderr)

    def save(name: str, image, result) -> None:
        fig = _figure(image, result, boxes_for(boxes, name) if boxes is not None else None, truth.get(name, []), args)
        (maps_dir / f"{Path(name).stem}.png").write_bytes(png_bytes(fig))

    names = [Path(p).name for p in paths]
    if boxes is not None:
        boxed = [n for n in names if n in set(boxes["Image"])]
        if args.limit:
            boxed = boxed[:args.limit]
        if not boxed:
            raise DatasetError("no image of the split has a box.", file=args.boxes or args.split,
                               fix="check that the box file belongs to this dataset.")
        records = localize_images(loaded, boxed, boxes, image_root=str(Path(paths[0]).parent), method=args.method,
                                  layer=args.layer, threshold=args.threshold, smooth=args.smooth,
                                  read=lambda p: read_image(by_name[Path(p).name]), on_maps=save, progress=progress,
                                  saliency_options=_saliency_options(args))
        summary = summarize_localization(records)
        (out / "localization.csv").write_text(csv_text(records), encoding="utf-8")
        (out / "localization_summary.csv").write_text(csv_text(summary), encoding="utf-8")
        faith = curves = None
        if args.faithfulness:
            faith, curves = _faithfulness(loaded, records, by_name, args, deletion_test, read_image, progress)
            (out / "faithfulness.csv").write_text(csv_text(faith), encoding="utf-8")
            (out / "faithfulness_auc.csv").write_text(csv_text(curves), encoding="utf-8")
        (out / "report.md").write_text(_report_text(summary, args, len(boxed), faith, curves), encoding="utf-8")
        if not args.quiet:
            print(summary.round(3).to_string(index=False))
        print(f"{len(records)} findings on {len(boxed)} images -> {out}", file=sys.stderr)
        return 0
    chosen = names[:args.limit] if args.limit else names
    rows = []
    for start in range(0, len(chosen), 8):
        part = chosen[start:start + 8]
        images = [read_image(by_name[n]) for n in part]
        if args.classes:
            results = explain_batch(loaded, images, args.classes, method=args.method, layer=args.layer,
                                    smooth=args.smooth, saliency_options=_saliency_options(args))
        else:
            probs = loaded.predict(images)
            results = [explain_batch(loaded, [img], top_labels(p, args.top, available=loaded.info.labels),
                                     method=args.method, layer=args.layer, smooth=args.smooth,
                                     saliency_options=_saliency_options(args))[0]
                       for img, p in zip(images, probs)]
        for name, image, result in zip(part, images, results):
            save(name, image, result)
            rows += [{"Image": name, "Label": label, "prob": result.prob(label)} for label in result.labels]
        progress(min(start + 8, len(chosen)), len(chosen), "maps")
    (out / "maps.csv").write_text(csv_text(pd.DataFrame(rows)), encoding="utf-8")
    print(f"maps of {len(chosen)} images -> {maps_dir} (no boxes: no localization report)", file=sys.stderr)
    return 0


def _faithfulness(loaded, records, by_name, args, deletion_test, read_image, progress):
    """(deletion test rows, one row of deletion / insertion areas per finding) for every boxed finding."""
    import pandas as pd

    from cxrcore.explain.cam import explain
    from cxrcore.explain.localization import faithfulness_curves, work_size

    parts, areas = [], []
    pairs = list(records[["Image", "Label"]].itertuples(index=False))
    for i, (name, label) in enumerate(pairs):
        image = read_image(by_name[name])
        heat = explain(loaded, image, [label], method=args.method, layer=args.layer, smooth=args.smooth,
                       saliency_options=_saliency_options(args)).maps[0]
        table = deletion_test(loaded, image, heat, label)
        parts.append(table.assign(Image=name, Label=label))
        size = work_size(image.shape[:2], 512)  # the curves' 68 variants at most 512 px: the model sees S px
        small = cv2_resize(image, size)
        areas.append({"Image": name, "Label": label,
                      **faithfulness_curves(loaded, small, cv2_resize(heat, size), label).summary()})
        progress(i + 1, len(pairs), "deletion test")
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(),
            pd.DataFrame(areas, columns=["Image", "Label", "deletion AUC", "insertion AUC", "deletion AUC (random)",
                                         "insertion AUC (random)"]))


def cv2_resize(array, size):
    """An (H, W) float array resized to size (H, W) with area interpolation (unchanged when it fits)."""
    import cv2
    import numpy as np

    array = np.asarray(array, np.float32)
    if array.shape[:2] == tuple(size):
        return array
    return cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.image:
        return run_single(args)
    return run_split(args)
