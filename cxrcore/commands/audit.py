"""`audit`: leakage, class balance and prevalence shift of named splits (exit 1 when leaking)."""
from __future__ import annotations

import argparse
import sys

NAME = "audit"
HELP = "Check splits for patient/image leakage and report class balance, weights and prevalence shift."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", action="append", required=True, metavar="NAME=FILE",
                        help="a split: NAME=FILE (course CSV or NIH table) or NAME=TABLE@LIST; repeat")
    parser.add_argument("--images", metavar="DIR", help="image folder: also check files and duplicates")
    parser.add_argument("--near-threshold", type=int, default=4, metavar="BITS",
                        help="hash shortlist width: pairs whose perceptual hashes differ in at most BITS bits are "
                             "compared (default 4); a pair is reported only when the aligned images share their "
                             "fine detail")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def load_named_splits(specs: list[str]) -> list:
    """Load NAME=FILE / NAME=TABLE@LIST specs; a label table named twice is read once."""
    from cxrcore.data.dataset import load_split, load_table, parse_split_spec

    tables: dict[str, object] = {}
    splits = []
    for spec in specs:
        name, file, list_file = parse_split_spec(spec)
        if list_file is None:
            splits.append(load_split(file, split_name=name))
        else:
            if file not in tables:
                tables[file] = load_table(file)
            splits.append(load_split(list_file, split_name=name, label_table=tables[file]))
    return splits


def run(args: argparse.Namespace) -> int:
    from cxrcore.audit.audit import run_audit
    from cxrcore.audit.report import render

    splits = load_named_splits(args.split)

    def progress(done: int, total: int, stage: str) -> None:
        if not args.quiet:
            print(f"\r{stage}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    report = run_audit(splits, image_root=args.images, near_threshold=args.near_threshold,
                       progress=progress)
    sys.stdout.write(render(report, args.format))
    return 0 if report.leak_free else 1
