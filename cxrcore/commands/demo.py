"""`demo`: generate the built-in teaching dataset (synthetic chest X-rays with known findings and boxes).

    python -m cxrcore demo [--out data/demo] [--images 1000] [--size 256] [--seed 0]
                           [--prevalence nih | LABEL=RATE,...] [--ap-rate 0.2] [--workers N] [--force]

Writes images/, train.csv, valid.csv, test.csv (patient-wise), valid_leaky.csv (patients shared with
train), Data_Entry.csv (NIH table), bbox.csv (NIH box format), README.md (dataset card) and .complete.
Same arguments, byte-identical files. A complete set made from the same arguments is kept as it is
(use --force to redo it). Exit 0 when the set is in place, 2 on invalid arguments or an --out folder
that holds something other than a demo set.
"""
from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "Generate the built-in teaching dataset: synthetic chest X-rays with known findings, boxes and patients."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/demo", metavar="DIR", help="output folder (default data/demo)")
    parser.add_argument("--images", type=int, default=1000, help="number of images (default 1000, about 300 patients)")
    parser.add_argument("--size", type=int, default=256, help="image width and height in pixels, 64 to 1024 (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--prevalence", default="default", metavar="nih|LABEL=RATE,...",
                        help="per-image label rates: 'nih' for NIH's real rates, or overrides such as "
                             "Hernia=0.01,Infiltration=0.3 (default: NIH's order, range compressed)")
    parser.add_argument("--ap-rate", type=float, default=0.2, help="share of AP views (default 0.2)")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: up to 2)")
    parser.add_argument("--force", action="store_true", help="regenerate even when a complete set is there")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    import time

    from cxrcore.demo import DemoConfig, generate_demo_dataset, is_complete, prevalence_from_text
    from cxrcore.errors import ConfigError

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be at least 1.", fix="use e.g. --workers 2.")
    config = DemoConfig(images=args.images, size=args.size, seed=args.seed, ap_rate=args.ap_rate)
    config = config.with_prevalence(prevalence_from_text(args.prevalence))
    if not args.force and is_complete(args.out, config):
        print(f"{args.out}: demo set already complete for these arguments (use --force to regenerate).")
        return 0

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 100 < 16):
            print(f"\rrendered {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    start = time.perf_counter()
    out = generate_demo_dataset(args.out, config, workers=args.workers, progress=progress)
    seconds = time.perf_counter() - start
    print(f"{out}: {config.images} images of {config.size} px generated in {seconds:.1f} s "
          f"(train/valid/test/valid_leaky CSVs, Data_Entry.csv, bbox.csv, README.md).")
    return 0
