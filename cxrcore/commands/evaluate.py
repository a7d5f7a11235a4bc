"""`evaluate`: per-class AUROC (patient-bootstrap CI), AUPRC, operating points and calibration of a prediction file."""
from __future__ import annotations

import argparse
import json
import math
import sys

NAME = "evaluate"
HELP = ("Evaluate a predictions CSV against a labels file: per-class AUROC with patient-level bootstrap CI, "
        "AUPRC, Youden threshold, sensitivity at specificity 0.9, Brier score.")

MAX_BOOTSTRAP = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, metavar="FILE",
                        help="labels: course CSV, NIH table, or TABLE@LIST "
                             "(e.g. Data_Entry_2017_v2020.csv.gz@test_list.txt); against a whole-dataset "
                             "table (NIH's, or one with *_list.txt beside it) the images with predictions "
                             "are evaluated, against a split every image needs one")
    parser.add_argument("--predictions", required=True, metavar="FILE",
                        help="CSV with Image (or Image Index) and prob_<Label> or <Label> columns")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap replicates for the CIs, resampling patients (default 1000; 0 = no CIs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default 0)")
    parser.add_argument("--resample", choices=("patient", "image"), default="patient",
                        help="bootstrap unit (default patient: all images of a drawn patient)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def load_labels(spec: str):
    """Load a labels file given as FILE or TABLE@LIST (NAME= prefix optional) with cxrcore.data.dataset."""
    from cxrcore.data.dataset import load_split, load_table, parse_split_spec

    name, file, list_file = parse_split_spec(spec)
    if list_file is None:
        return load_split(file, split_name=name)
    return load_split(list_file, split_name=name, label_table=load_table(file))


def check_bootstrap(n: int) -> None:
    """Refuse negative or absurd replicate counts with a clear message."""
    from cxrcore.errors import ConfigError

    if n < 0 or n > MAX_BOOTSTRAP:
        raise ConfigError(f"--bootstrap {n} is out of range.", fix=f"use 0 (no CIs) to {MAX_BOOTSTRAP}; 1000 is usual.")


def print_warnings(warnings: list) -> None:
    """Data warnings go to stderr so stdout stays machine-readable."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _f(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _thr(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def render_text(result, labels_file: str, predictions_file: str, coverage: str | None = None) -> str:
    """Aligned per-class table, the mean AUROC line and notes; `coverage` (part of a whole-dataset
    table evaluated) comes first."""
    level = int(round(result.ci_level * 100))
    header = ["Label", "n_pos", "n_neg", "prev", "AUROC", f"{level}% CI", "AUPRC", "thresh", "sens", "spec",
              "sens@spec90", "Brier"]
    rows = []
    for label, m in result.classes.items():
        ci = "-" if math.isnan(m.ci_low) else f"[{m.ci_low:.3f}, {m.ci_high:.3f}]"
        rows.append([label, str(m.n_pos), str(m.n_neg), _f(m.prevalence), _f(m.auroc), ci, _f(m.auprc),
                     _thr(m.threshold), _f(m.sensitivity), _f(m.specificity), _f(m.sens_at_spec90), _f(m.brier)])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = ([coverage] if coverage else []) + [f"Predictions {predictions_file} against labels {labels_file}",
             f"{result.n_images} images, {result.n_patients} patients, {len(result.classes)} classes"]
    if result.n_bootstrap:
        lines.append(f"{level}% CI: percentile interval of {result.n_bootstrap} bootstrap replicates resampling "
                     f"{result.resample}s (seed {result.seed}); threshold: Youden's J, positive when p >= threshold.")
    else:
        lines.append("No bootstrap (--bootstrap 0): no confidence intervals.")
    lines += ["", fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows] + [""]
    k = len(result.mean_auroc_classes)
    mean = f"Mean AUROC over {k} class{'es' if k != 1 else ''}: {_f(result.mean_auroc)}"
    if not math.isnan(result.mean_auroc_ci_low):
        mean += f" ({level}% CI {result.mean_auroc_ci_low:.3f} to {result.mean_auroc_ci_high:.3f})"
    lines.append(mean)
    dropped = [f"{label} ({m.bootstrap_used} of {result.n_bootstrap} replicates used)"
               for label, m in result.classes.items()
               if result.n_bootstrap and m.bootstrap_used and m.bootstrap_used < result.n_bootstrap
               and not math.isnan(m.ci_low)]
    notes = list(result.notes)
    notes += [f"{label}: {m.note}" for label, m in result.classes.items()
              if m.note and m.note.startswith("no CI") and not math.isnan(m.auroc)]
    if dropped:
        notes.append("replicates with a single class were dropped for: " + ", ".join(dropped) + ".")
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def coverage_json(n_evaluated: int, n_labelled: int, whole_table: bool) -> dict:
    """What was evaluated, for JSON: images, the labels file's images, and the rule applied."""
    return {"images": n_evaluated, "labelled_images": n_labelled,
            "rule": "whole-dataset table: the images with predictions" if whole_table
            else "split: every labelled image must have a prediction"}


def run(args: argparse.Namespace) -> int:
    from cxrcore.data.dataset import is_dataset_table
    from cxrcore.data.predictions import align, coverage_line, read_predictions
    from cxrcore.evaluate.metrics import evaluate

    check_bootstrap(args.bootstrap)
    split = load_labels(args.labels)
    predictions = read_predictions(args.predictions)
    whole = is_dataset_table(split)
    data = align(predictions, split, labels_name=args.labels, subset=whole)
    print_warnings(list(split.warnings) + list(predictions.warnings))
    result = evaluate(data.y, data.probs, data.labels, data.patient_ids, n_bootstrap=args.bootstrap,
                      seed=args.seed, resample=args.resample)
    coverage = coverage_line(len(data), data.n_labelled) if data.is_subset else None
    if args.format == "json":
        out = {"labels_file": args.labels, "predictions_file": args.predictions,
               "coverage": coverage_json(len(data), data.n_labelled, whole), **result.to_dict(),
               "warnings": [str(w) for w in list(split.warnings) + list(predictions.warnings)]}
        sys.stdout.write(json.dumps(out, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(render_text(result, args.labels, args.predictions, coverage))
    return 0
