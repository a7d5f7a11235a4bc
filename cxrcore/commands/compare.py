"""`compare`: paired AUROC comparison of several prediction files on the same labelled images (DeLong + Holm).

Every prediction file must cover exactly the images of the labels file (the rule of `evaluate`), so
all models are compared on one identical image set; classes are those present in every file. Against
a whole-dataset table (NIH's) the models are compared on the images every file predicted, and the
output says how many. Besides each class, the difference of mean AUROC gets a paired patient-bootstrap
interval and p-value.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

NAME = "compare"
HELP = ("Compare models from their prediction files on the same labels: per-class AUROC differences against "
        "a reference with DeLong's paired test and Holm-adjusted p-values.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, metavar="FILE",
                        help="labels: course CSV, NIH table, or TABLE@LIST")
    parser.add_argument("--predictions", action="append", required=True, metavar="FILE",
                        help="a predictions CSV; repeat, once per model (two or more)")
    parser.add_argument("--names", metavar="A,B,...", help="model names, comma-separated (default: file names)")
    parser.add_argument("--reference", metavar="NAME_OR_INDEX",
                        help="reference model: a name, or its 1-based position among --predictions (default 1)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="patient-bootstrap replicates for the CI and p-value of the mean-AUROC difference "
                             "and the CI of each class's difference (default 1000; 0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default 0)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def model_names(files: list[str], names: str | None) -> list[str]:
    """Names from --names, or unique file stems."""
    from cxrcore.errors import ConfigError

    if names:
        out = [n.strip() for n in names.split(",")]
        if len(out) != len(files) or any(not n for n in out):
            raise ConfigError(f"--names gives {len(out)} name(s) for {len(files)} prediction file(s).",
                              fix="give one non-empty name per --predictions, comma-separated.")
        if len(set(out)) != len(out):
            raise ConfigError("--names repeats a name.", fix="give each model its own name.")
        return out
    stems = [Path(f).name.split(".")[0] or f for f in files]
    return [s if stems.count(s) == 1 else f"{s}#{i + 1}" for i, s in enumerate(stems)]


def reference_index(reference: str | None, names: list[str]) -> int:
    """Position of the reference model: by name, else a 1-based index."""
    from cxrcore.errors import ConfigError

    if reference is None:
        return 0
    if reference in names:
        return names.index(reference)
    if reference.strip().isdigit() and 1 <= int(reference) <= len(names):
        return int(reference) - 1
    raise ConfigError(f"--reference '{reference}' is neither a model name nor a position 1..{len(names)}.",
                      fix=f"use one of: {', '.join(names)}.")


def _f(value: float, digits: int = 3, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def mean_line(pair) -> str:
    """'Mean AUROC difference weak - good over 14 classes: -0.081 (95% CI -0.102 to -0.060, p < 0.002; ...)'."""
    m = pair.mean
    k = len(m.classes)
    text = (f"Mean AUROC difference {pair.model} - {pair.reference} over {k} class{'es' if k != 1 else ''}: "
            f"{_f(m.delta, sign=True)}")
    if not math.isnan(m.ci_low):
        text += (f" (95% CI {m.ci_low:+.3f} to {m.ci_high:+.3f}, p {m.p_text()}; paired patient bootstrap, "
                 f"{m.replicates_used} replicates)")
    elif m.note:
        text += f" ({m.note})"
    return text


def render_text(comparison, labels_file: str, coverage: str | None = None) -> str:
    """Per-model AUROCs, then one table per pair with delta, CI, p and Holm p, and the mean difference."""
    lines = ([coverage] if coverage else []) + [
        f"Comparison on {comparison.n_images} images of {labels_file}; reference: {comparison.reference}",
        "", "AUROC (DeLong 95% CI):"]
    header = ["Label", "n_pos"] + comparison.names
    rows = []
    for label in comparison.labels:
        cells = [label, str(comparison.n_pos[label])]
        for name in comparison.names:
            auc, low, high = comparison.aurocs[name][label]
            cells.append("-" if math.isnan(auc) else f"{auc:.3f} [{_f(low)}, {_f(high)}]")
        rows.append(cells)
    lines += _table(header, rows)
    for pair in comparison.pairs:
        lines += ["", f"{pair.model} vs {pair.reference} (delta = {pair.model} - {pair.reference}; DeLong paired "
                      f"test, Holm across {len(comparison.labels)} classes; * p_holm < 0.05):"]
        header = ["Label", f"AUROC {pair.reference}", f"AUROC {pair.model}", "delta", "95% CI (DeLong)"]
        if pair.bootstrap_ci:
            header.append("95% CI (patient bootstrap)")
        header += ["p", "p_holm", ""]
        rows = []
        for label in comparison.labels:
            t = pair.classes[label]
            ci = "-" if math.isnan(t.ci_low) else f"[{t.ci_low:+.3f}, {t.ci_high:+.3f}]"
            cells = [label, _f(t.auc_reference), _f(t.auc_model), _f(t.delta, sign=True), ci]
            if pair.bootstrap_ci:
                low, high = pair.bootstrap_ci[label]
                cells.append("-" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]")
            holm = pair.p_holm[label]
            cells += [_p(t.p_value), _p(holm), "*" if not math.isnan(holm) and holm < 0.05 else ""]
            rows.append(cells)
        lines += _table(header, rows)
        if pair.mean is not None:
            lines.append(mean_line(pair))
    lines += [""] + [f"Note: {n}" for n in comparison.notes]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from cxrcore.commands.evaluate import check_bootstrap, coverage_json, load_labels, print_warnings
    from cxrcore.data.dataset import is_dataset_table
    from cxrcore.data.predictions import align, common_images, coverage_line, read_predictions
    from cxrcore.errors import ConfigError, PredictionsError
    from cxrcore.evaluate.delong import compare_models

    if len(args.predictions) < 2:
        raise ConfigError("compare needs at least two --predictions files.", fix="repeat --predictions per model.")
    check_bootstrap(args.bootstrap)
    names = model_names(args.predictions, args.names)
    ref = reference_index(args.reference, names)
    split = load_labels(args.labels)
    whole = is_dataset_table(split)
    aligned = []
    warnings = list(split.warnings)
    for file in args.predictions:
        predictions = read_predictions(file)
        warnings += predictions.warnings
        aligned.append(align(predictions, split, labels_name=args.labels, subset=whole))
    aligned = common_images(aligned)
    coverage = (coverage_line(len(aligned[0]), aligned[0].n_labelled, "those in every predictions file")
                if aligned[0].is_subset else None)
    common = [label for label in aligned[0].labels if all(label in a.labels for a in aligned)]
    if not common:
        raise PredictionsError("the prediction files have no class column in common.",
                               fix="give every file at least one shared prob_<Label> column.")
    skipped = sorted({label for a in aligned for label in a.labels} - set(common))
    base = aligned[0]
    y = base.y[:, [base.labels.index(label) for label in common]]
    probs = [a.probs[:, [a.labels.index(label) for label in common]] for a in aligned]
    print_warnings(warnings)
    comparison = compare_models(y, probs, common, names, ref, patient_ids=base.patient_ids,
                                n_bootstrap=args.bootstrap, seed=args.seed)
    if skipped:
        comparison.notes.append(f"classes not in every file were skipped: {', '.join(skipped)}.")
    if args.format == "json":
        out = {"labels_file": args.labels, "predictions_files": dict(zip(names, args.predictions)),
               "coverage": coverage_json(len(aligned[0]), aligned[0].n_labelled, whole), **comparison.to_dict(),
               "warnings": [str(w) for w in warnings]}
        sys.stdout.write(json.dumps(out, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(render_text(comparison, args.labels, coverage))
    return 0
