"""Duplicate check: precision and recall of near-duplicate detection, and hashing speed against the old code.

Run from the repository root (2 CPU cores):

    python bench/bench_duplicates.py                 # real NIH sample images + demo sets
    python bench/bench_duplicates.py --demo-seeds 0  # fewer demo sets

Measures, in one run:
1. real radiographs (../shared/nih/sample_images, 30 patients): every original in split "orig", altered
   copies of each (resized, lightly cropped, contrast or gamma changed, JPEG re-encoded, rotated by 2-3
   degrees, and all at once) in split "copies". Found: copy pairs with their own original (recall, target
   >= 95%); pairs of different patients (target 0), across and within splits;
2. clean demo splits (train/valid/test, patient-wise) of generated demo sets: cross-split pairs (target 0);
3. hashing speed per image (decode + hashes): the code before #19 (64-bit hash of the full image) vs now
   (a 64x64 thumbnail, the hash taken from it): the ratio, target <= 1.3x; and the pair stage's time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrcore.data.dataset import load_split  # noqa: E402
from cxrcore.data.imagecheck import _decode_gray, _hash_file, check_images  # noqa: E402
from cxrcore.data.labels import LABELS  # noqa: E402

COMMAND = "python bench/bench_duplicates.py"


def alterations(image: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Re-exports of one image: what a copy of an image in another split looks like."""
    rng = np.random.default_rng(seed)
    h, w = image.shape
    out: dict[str, np.ndarray] = {"resized": cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)}
    top, left, bottom, right = (int(rng.uniform(0.01, 0.05) * h) for _ in range(4))
    out["cropped"] = image[top:h - bottom, left:w - right]
    out["contrast"] = np.clip((image.astype(np.float32) - 25) * rng.uniform(1.15, 1.3), 0, 255).astype(np.uint8)
    out["gamma"] = (255 * (image / 255.0) ** rng.uniform(0.65, 0.8)).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
    out["jpeg70"] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    angle = float(rng.choice([-3, -2, 2, 3]))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    out["rotated"] = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_CONSTANT)
    all_at_once = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 2.0, 1.0), (w, h),
                                 borderMode=cv2.BORDER_REPLICATE)[int(0.03 * h):int(0.97 * h), int(0.04 * w):w]
    all_at_once = cv2.resize(all_at_once, (700, 700), interpolation=cv2.INTER_AREA)
    all_at_once = (255 * (all_at_once / 255.0) ** 0.8).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", all_at_once, [cv2.IMWRITE_JPEG_QUALITY, 80])
    out["all_at_once"] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


def _split_file(folder: Path, name: str, images: list[str], patients: list[int]) -> Path:
    frame = pd.DataFrame({"Image": images, **{label: 0 for label in LABELS}, "PatientId": patients})
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def real_corpus(nih: Path, folder: Path) -> tuple[list, dict[str, str]]:
    """Originals and altered copies written under folder; splits and copy -> original map."""
    files = sorted((nih / "sample_images").glob("*.png"))
    if not files:
        raise SystemExit(f"no PNGs in {nih / 'sample_images'}")
    originals, copies, patients_o, patients_c, source = [], [], [], [], {}
    for k, path in enumerate(files):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / path.name), image)
        originals.append(path.name)
        patients_o.append(int(path.name[:8]))
        for kind, altered in alterations(image, k).items():
            name = f"{path.stem}_{kind}.{'jpg' if kind in ('jpeg70', 'all_at_once') else 'png'}"
            if name.endswith(".jpg"):
                cv2.imwrite(str(folder / name), altered, [cv2.IMWRITE_JPEG_QUALITY, 95])
            else:
                cv2.imwrite(str(folder / name), altered)
            copies.append(name)
            patients_c.append(100_000_000 + len(copies))  # a copy carries another id, as a re-export may
            source[name] = path.name
    splits = [load_split(_split_file(folder, "orig", originals, patients_o), split_name="orig"),
              load_split(_split_file(folder, "copies", copies, patients_c), split_name="copies")]
    return splits, source


def score_real(check, source: dict[str, str]) -> dict:
    """Recall per alteration kind and false pairs (different patients) among the reported pairs."""
    found = {(d.image_a, d.image_b) for d in check.duplicates} | {(d.image_b, d.image_a) for d in check.duplicates}
    kinds: dict[str, list[bool]] = {}
    for copy, original in source.items():
        kind = copy[len(original) - 4 + 1:].rsplit(".", 1)[0]
        kinds.setdefault(kind, []).append((original, copy) in found)

    def patient(name: str) -> str:
        return source.get(name, name)[:8]

    false = [d for d in check.duplicates if patient(d.image_a) != patient(d.image_b)]
    recall = float(np.mean([v for vs in kinds.values() for v in vs]))
    return {"recall": recall, "per_kind": {k: float(np.mean(v)) for k, v in kinds.items()}, "false_pairs": false,
            "pairs": len(check.duplicates)}


def old_hash(path: Path) -> int:
    """The hashing before #19: decode, then the 64-bit DCT hash of the full image."""
    import hashlib

    data = path.read_bytes()
    hashlib.blake2b(data, digest_size=16).hexdigest()
    gray = _decode_gray(data)
    thumb = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(thumb)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def hashing_speed(folder: Path, names: list[str], rounds: int) -> tuple[float, float]:
    """Seconds per image, old and new, interleaved rounds (one thread: the per-image cost)."""
    old, new = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for name in names:
            old_hash(folder / name)
        old.append((time.perf_counter() - start) / len(names))
        start = time.perf_counter()
        for name in names:
            _hash_file(folder, "s", name, True)
        new.append((time.perf_counter() - start) / len(names))
    return float(np.median(old)), float(np.median(new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nih", default=str(ROOT.parent / "shared" / "nih"))
    parser.add_argument("--demo-seeds", default="0,1,2", help="demo sets to check (seeds; default 0,1,2)")
    parser.add_argument("--demo-images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (median)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-dup-") as tmp:
        folder = Path(tmp) / "real"
        folder.mkdir()
        splits, source = real_corpus(Path(args.nih), folder)
        start = time.perf_counter()
        check = check_images(splits, folder, workers=2)
        seconds = time.perf_counter() - start
        real = score_real(check, source)
        print(f"1. real NIH images: {len(splits[0])} originals, {len(splits[1])} altered copies, checked in "
              f"{seconds:.1f} s (2 threads)")
        print(f"   copies found: {real['recall']:.1%} (target >= 95%): " +
              ", ".join(f"{k} {v:.0%}" for k, v in real["per_kind"].items()))
        print(f"   pairs of different patients reported: {len(real['false_pairs'])} (target 0)")
        for d in real["false_pairs"][:5]:
            print(f"     {d.image_a} / {d.image_b}: {d.distance} bits, similarity {d.similarity:.3f}")
        ok &= real["recall"] >= 0.95 and not real["false_pairs"]
        from cxrcore.demo import DemoConfig, generate_demo_dataset

        for seed in [int(s) for s in args.demo_seeds.split(",") if s.strip()]:
            demo = generate_demo_dataset(Path(tmp) / f"demo{seed}", DemoConfig(images=args.demo_images, seed=seed),
                                         workers=2)
            clean = [load_split(demo / f"{n}.csv", split_name=n) for n in ("train", "valid", "test")]
            start = time.perf_counter()
            demo_check = check_images(clean, demo / "images", workers=2)
            cross = demo_check.cross_split_duplicates()
            print(f"2. demo seed {seed} ({args.demo_images} images), clean train/valid/test: {len(cross)} "
                  f"cross-split pair(s) (target 0), {time.perf_counter() - start:.1f} s")
            ok &= not cross
        names = sorted(p.name for p in folder.glob("000*.png") if len(p.stem) == 12)
        old, new = hashing_speed(folder, names, args.rounds)
        print(f"3. hashing, one thread, {len(names)} real 1024-px PNGs x {args.rounds} rounds: before "
              f"{old * 1000:.1f} ms/image, now {new * 1000:.1f} ms/image: {new / old:.2f}x (target <= 1.3x)")
        ok &= new / old <= 1.3
    print("all targets met" if ok else "SOME TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
