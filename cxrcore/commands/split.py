"""`split`: make a patient-grouped, stratified split, or repair a leaky one, and report the balance.

    python -m cxrcore split --input FILE --fractions train=0.7,valid=0.1,test=0.2 [--seed 0] --out DIR
    python -m cxrcore split --repair --split train=FILE --split test=FILE [--priority train,test] --out DIR

FILE is a course one-hot CSV, an NIH table or TABLE@LIST (repeat --input to pool and re-split).
Writes `<split>.csv` (`<split>.txt` for list files) in the input's format, split_report.json and
split_report.md into DIR, and prints the report (--format text|markdown|json) on stdout.
JSON keys: mode, verdict, seed, fractions, priority, overall{rows, patients, prevalence},
before/after{splits{NAME: {rows, patients, share, target_fraction, prevalence, positives,
max_abs_deviation, worst_class}}, leaked_patients, leaked_images, max_abs_deviation}, moves[{from, to,
patients, images}], moved_images, moved_patients, files, notes, warnings.
Exit 0 when the files were written, 2 on invalid input (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys

NAME = "split"
HELP = "Make a patient-grouped stratified split, or repair a leaky split; write CSVs and a balance report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", metavar="FILE",
                        help="labels file to split: course CSV, NIH table or TABLE@LIST (repeat to pool)")
    parser.add_argument("--fractions", metavar="NAME=F,...",
                        help="named fractions summing to 1, e.g. train=0.7,valid=0.1,test=0.2")
    parser.add_argument("--seed", type=int, default=0, help="random seed for tie-breaking (default 0)")
    parser.add_argument("--repair", action="store_true",
                        help="repair the --split files: move leaking patients with the fewest image moves")
    parser.add_argument("--split", action="append", metavar="NAME=FILE",
                        help="with --repair: a split, NAME=FILE or NAME=TABLE@LIST; repeat")
    parser.add_argument("--priority", metavar="NAME,...",
                        help="with --repair: which split keeps a patient on a tie (default: --split order)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")


def run(args: argparse.Namespace) -> int:
    from cxrcore.audit.splitting import parse_fractions, repair_leakage, stratify, write_outputs
    from cxrcore.commands import input_files
    from cxrcore.commands.audit import load_named_splits
    from cxrcore.errors import ConfigError

    if args.repair:
        if args.input or args.fractions:
            raise ConfigError("--repair works on --split files; --input and --fractions make a new split.",
                              fix="drop --input/--fractions, or drop --repair.")
        if not args.split or len(args.split) < 2:
            raise ConfigError("--repair needs at least two --split NAME=FILE.",
                              fix="pass every split, e.g. --split train=train.csv --split test=test.csv.")
        specs = list(args.split)
        priority = [p.strip() for p in args.priority.split(",") if p.strip()] if args.priority else None
        splits = load_named_splits(specs)
        result = repair_leakage(splits, priority)
    else:
        if args.split or args.priority:
            raise ConfigError("--split and --priority go with --repair.",
                              fix="add --repair, or give the file to split with --input.")
        if not args.input or not args.fractions:
            raise ConfigError("a new split needs --input FILE and --fractions.",
                              fix="e.g. --input labels.csv --fractions train=0.7,valid=0.1,test=0.2.")
        fractions = parse_fractions(args.fractions)
        specs = [f"input{i}={spec}" if len(args.input) > 1 else f"input={spec}"
                 for i, spec in enumerate(args.input, 1)]
        result = stratify(load_named_splits(specs), fractions, seed=args.seed)
    write_outputs(result, args.out, protect=input_files(specs=specs))
    sys.stdout.write(result.report.render(args.format))
    return 0
