"""Image checks under an image root: missing and unreadable files, exact duplicates (content hash) and
near-duplicates (perceptual hash, configurable threshold) across splits, symlinks that escape the root,
progress reporting. Images are small PNGs generated with OpenCV in tmp_path."""
from __future__ import annotations

import os
import shutil
from itertools import combinations

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrcore.audit.audit import run_audit
from cxrcore.audit.report import render, to_dict, verdict
from cxrcore.data.dataset import load_split
from cxrcore.data.imagecheck import (CONFIRM_CORRELATION, check_images, hamming, near_duplicate_pairs,
                                perceptual_hash)
from cxrcore.data.labels import LABELS
from cxrcore.data.paths import resolve_image
from cxrcore.errors import DatasetError
from tests.csv_corpus import near_copy, onehot_frame, smooth_image, to_csv_bytes, truncate_file, write_png


def _split(names: list[str], name: str, patients: list[int] | None = None):
    frame = onehot_frame(range(1, len(names) + 1), per_patient=1)
    frame["Image"] = names
    base = 1000 * sum(map(ord, name))  # distinct patients per split unless given
    frame["PatientId"] = patients or [base + i for i in range(len(names))]
    return load_split(to_csv_bytes(frame), name=f"{name}.csv", split_name=name)


def _bits(a: np.ndarray, b: np.ndarray) -> int:
    return bin(perceptual_hash(a) ^ perceptual_hash(b)).count("1")


@pytest.fixture()
def image_root(tmp_path):
    """Six distinct images (a1-a3 for split a, b1-b3 for split b) plus copies and broken files."""
    root = tmp_path / "images"
    root.mkdir()
    images = {name: smooth_image(seed) for seed, name in enumerate(["a1", "a2", "a3", "b1", "b2", "b3"])}
    for name, image in images.items():
        write_png(root / f"{name}.png", image)
    shutil.copyfile(root / "a1.png", root / "b_exact.png")                   # byte copy of a1
    write_png(root / "b_near.png", near_copy(images["a2"]))                   # resized + re-encoded a2
    write_png(root / "b_big.png", cv2.resize(images["a3"], (128, 128)))       # a3 at twice the size
    truncate_file(root / "b1.png", root / "b_trunc.png")                       # cut short
    (root / "b_empty.png").write_bytes(b"")
    (root / "b_text.png").write_text("not an image")
    return root, images


def test_perceptual_hash_is_close_for_copies_and_far_for_different_images():
    images = [smooth_image(seed) for seed in range(10)]
    for image in images:
        assert _bits(image, near_copy(image)) <= 4
        assert _bits(image, cv2.resize(image, (256, 256), interpolation=cv2.INTER_CUBIC)) <= 4
        assert perceptual_hash(image) == perceptual_hash(image.copy())
    assert min(_bits(a, b) for a, b in combinations(images, 2)) > 16


def test_missing_unreadable_exact_and_near_duplicates(image_root):
    root, _ = image_root
    a = _split(["a1.png", "a2.png", "a3.png"], "a")
    b = _split(["b1.png", "b2.png", "b3.png", "b_exact.png", "b_near.png", "b_big.png", "b_trunc.png",
                "b_empty.png", "b_text.png", "b_gone.png"], "b")
    check = check_images([a, b], root)
    assert check.checked == 13
    assert check.missing == {"b": ["b_gone.png"]}
    unreadable = dict(check.unreadable["b"])
    assert set(unreadable) == {"b_trunc.png", "b_empty.png", "b_text.png"} and "a" not in check.unreadable
    assert unreadable["b_empty.png"] == "empty file"
    cross = {(d.image_a, d.image_b): d for d in check.cross_split_duplicates()}
    assert set(cross) == {("a1.png", "b_exact.png"), ("a2.png", "b_near.png"), ("a3.png", "b_big.png")}
    assert cross[("a1.png", "b_exact.png")].exact and cross[("a1.png", "b_exact.png")].distance == 0
    assert not cross[("a2.png", "b_near.png")].exact and not cross[("a3.png", "b_big.png")].exact
    data = check.to_dict()
    assert len(data["duplicates_across_splits"]) == 3 and data["duplicates_within_splits"] == 0
    assert data["missing"] == {"b": ["b_gone.png"]} and data["near_threshold"] == 4


def test_duplicates_within_one_split_are_not_leakage(image_root):
    root, _ = image_root
    a = _split(["a1.png", "b_exact.png", "a2.png"], "a")
    b = _split(["b1.png"], "b")
    check = check_images([a, b], root)
    assert [(d.image_a, d.image_b) for d in check.duplicates] == [("a1.png", "b_exact.png")]
    assert check.cross_split_duplicates() == []
    assert run_audit([a, b], image_root=str(root)).leak_free


def test_duplicates_across_splits_are_leakage_even_with_different_patient_ids(image_root):
    root, _ = image_root
    a = _split(["a1.png", "a2.png"], "train", patients=[1, 2])
    b = _split(["b_exact.png", "b_near.png", "b1.png"], "test", patients=[3, 4, 5])
    report = run_audit([a, b], image_root=str(root))
    assert report.leakage[0].patients == 0 and report.leakage[0].images == 0
    assert report.duplicate_leaks == 2 and not report.leak_free
    assert "2 duplicate image pair(s) cross splits" in verdict(report)
    data = to_dict(report)
    assert data["leak_free"] is False and len(data["images"]["duplicates_across_splits"]) == 2
    text = render(report, "text")
    assert "Image files" in text and "exact" in text and "near (" in text


def test_near_duplicate_threshold_widens_the_hash_shortlist_and_copies_are_confirmed(tmp_path):
    """The threshold only widens the hash shortlist: a copy with a brightness ramp (6 bits away) is still
    found at threshold 0 through the nearest-neighbour shortlist, and confirmed by its aligned detail."""
    root = tmp_path / "img"
    root.mkdir()
    image = smooth_image(8)
    ramp = np.clip(image.astype(float) + 60 * np.linspace(-1, 1, 64)[None, :], 0, 255).astype(np.uint8)
    distance = _bits(image, ramp)
    assert 1 <= distance <= 16
    write_png(root / "x.png", image)
    write_png(root / "y.png", ramp)
    for k in range(2):
        write_png(root / f"other{k}.png", smooth_image(100 + k))
    a, b = _split(["x.png", "other0.png"], "a"), _split(["y.png", "other1.png"], "b")
    for threshold in (distance, 0):
        found = check_images([a, b], root, near_threshold=threshold).cross_split_duplicates()
        assert [(d.image_a, d.image_b, d.distance) for d in found] == [("x.png", "y.png", distance)]
        assert found[0].similarity >= CONFIRM_CORRELATION and found[0].to_dict()["similarity"] < 1
    assert check_images([a, b], root, near_threshold=0, hash_images=False).duplicates == []
    for bad in (-1, 17):
        with pytest.raises(DatasetError, match="threshold"):
            check_images([a, b], root, near_threshold=bad)


def test_rgba_and_16_bit_copies_decode_and_match(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    gray = smooth_image(3, size=96)
    write_png(root / "g.png", gray)
    write_png(root / "rgba.png", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA))
    write_png(root / "deep.png", gray.astype(np.uint16) * 257)
    check = check_images([_split(["g.png"], "a"), _split(["rgba.png", "deep.png"], "b")], root)
    assert check.unreadable == {} and check.missing == {}
    assert {d.image_b for d in check.cross_split_duplicates()} == {"rgba.png", "deep.png"}


def test_symlinks_escaping_the_image_root_are_refused(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    secret = tmp_path / "outside.png"
    write_png(secret, smooth_image(1))
    shutil.copyfile(secret, root / "a.png")          # inside: a.png has the very same bytes
    os.symlink(secret, root / "escape.png")          # points outside the root
    os.symlink(root / "a.png", root / "inside.png")  # points inside: fine
    os.symlink("/etc/passwd", root / "passwd.png")
    check = check_images([_split(["a.png"], "a"), _split(["escape.png", "inside.png", "passwd.png"], "b")], root)
    refused = dict(check.unreadable["b"])
    assert set(refused) == {"escape.png", "passwd.png"}
    assert all("outside the image folder" in problem for problem in refused.values())
    # The escaping file was never read: only the link inside the root matches a.png.
    assert [(d.image_a, d.image_b, d.exact) for d in check.cross_split_duplicates()] == [("a.png", "inside.png", True)]
    with pytest.raises(DatasetError, match="outside"):
        resolve_image(root, "escape.png")
    assert resolve_image(root, "inside.png") == (root / "a.png").resolve()


def test_an_image_root_that_is_itself_a_symlink_works(image_root, tmp_path):
    root, _ = image_root
    link = tmp_path / "link_to_images"
    os.symlink(root, link)
    check = check_images([_split(["a1.png"], "a"), _split(["b_exact.png"], "b")], link)
    assert check.unreadable == {} and len(check.cross_split_duplicates()) == 1


def test_progress_callback_is_called_up_to_the_total(image_root):
    root, _ = image_root
    calls = []
    a = _split(["a1.png", "a2.png", "a3.png"], "a")
    b = _split(["b1.png", "b2.png", "b3.png", "b_gone.png"], "b")
    run_audit([a, b], image_root=str(root), progress=lambda done, total, stage: calls.append((done, total, stage)))
    assert calls and calls[-1] == (7, 7, "hashing images")
    done = [c[0] for c in calls]
    assert done == sorted(done) and all(c[1] == 7 for c in calls)


def test_one_worker_and_default_workers_agree(image_root):
    root, _ = image_root
    names = sorted(p.name for p in root.iterdir())
    a, b = _split(names[:5], "a"), _split(names[5:], "b")
    one = check_images([a, b], root, workers=1)
    many = check_images([a, b], root)
    assert one.to_dict() == many.to_dict()
    assert [d.to_dict() for d in one.duplicates] == [d.to_dict() for d in many.duplicates]


def test_missing_image_root_is_a_domain_error(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        check_images([_split(["a.png"], "a")], tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# The near-duplicate search itself (multi-index hashing) against brute force


def _brute(hashes: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    dist = hamming(hashes[:, None], hashes[None, :])
    i, j = np.nonzero(np.triu(dist <= threshold, k=1))
    return set(zip(i.tolist(), j.tolist()))


def test_hamming_distance():
    a = np.array([0, 0b1011, 2 ** 64 - 1], dtype=np.uint64)
    b = np.array([0, 0b0001, 0], dtype=np.uint64)
    assert hamming(a, b).tolist() == [0, 2, 64]


@pytest.mark.parametrize("threshold", [0, 1, 4, 8, 12, 16])
def test_near_duplicate_pairs_equal_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 2 ** 63, 300, dtype=np.uint64)
    # Plant copies at distances 0..threshold+2 with the flipped bits spread over the whole hash.
    copies = []
    for k, h in enumerate(base[:60]):
        bits = rng.choice(64, size=k % (threshold + 3), replace=False)
        copies.append(h ^ np.uint64(sum(1 << int(b) for b in bits)))
    hashes = np.concatenate([base, np.array(copies, dtype=np.uint64)])
    found = set(map(tuple, near_duplicate_pairs(hashes, threshold).tolist()))
    assert found == _brute(hashes, threshold)
    planted = {(k, 300 + k) for k in range(60) if k % (threshold + 3) <= threshold}
    assert planted <= found and (threshold + 1, 300 + threshold + 1) not in found


def test_threshold_16_finds_pairs_that_differ_in_every_chunk():
    # 16 flipped bits, one per 4-bit nibble: with only 16 chunks no chunk would agree.
    a = np.uint64(0)
    b = np.uint64(0x1111111111111111)
    assert int(hamming(a, b)) == 16
    assert near_duplicate_pairs(np.array([a, b]), 16).tolist() == [[0, 1]]
    assert near_duplicate_pairs(np.array([a, b]), 15).tolist() == []


def test_large_buckets_are_searched_completely():
    # 3,000 hashes share their lowest 13 bits (one huge bucket for the first chunk); the planted pair
    # agrees only on that chunk and sorts far apart, so a capped bucket would miss it.
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2 ** 63, 3000, dtype=np.uint64) & ~np.uint64((1 << 13) - 1)
    hashes[-1] = hashes[0] ^ np.uint64((1 << 14) | (1 << 28) | (1 << 40) | (1 << 55))
    found = set(map(tuple, near_duplicate_pairs(hashes, 4, max_bucket=500).tolist()))
    assert (0, 2999) in found
    assert found == _brute(hashes, 4)


def test_unreadable_files_are_listed_per_split_in_json_and_text(image_root):
    root, _ = image_root
    report = run_audit([_split(["a1.png", "missing.png"], "a"), _split(["b_trunc.png"], "b")],
                       image_root=str(root))
    data = to_dict(report)["images"]
    assert data["missing"] == {"a": ["missing.png"]}
    assert data["unreadable"]["b"][0]["image"] == "b_trunc.png"
    assert report.leak_free  # missing and broken files are problems, not leakage
    assert "1 missing, 1 unreadable" in render(report, "markdown")


def test_labels_do_not_matter_for_duplicates(image_root):
    root, _ = image_root
    frame = pd.DataFrame({"Image": ["a1.png"], "PatientId": [1], **{label: [1] for label in LABELS}})
    a = load_split(to_csv_bytes(frame), name="a.csv", split_name="a")
    check = check_images([a, _split(["b_exact.png"], "b")], root)
    assert len(check.cross_split_duplicates()) == 1


# ---------------------------------------------------------------------------------------------
# Precision and recall on radiograph-like images (demo phantoms: all chests look alike at low resolution)


def _re_exports(image: np.ndarray) -> dict[str, np.ndarray]:
    """The same image exported again: resized, lightly cropped, contrast-changed, JPEG re-encoded, rotated."""
    h, w = image.shape
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 2.5, 1.0), (w, h))
    jpeg = cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_GRAYSCALE)
    return {"resized": cv2.resize(image, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA),
            "cropped": image[h // 25:h - h // 40, w // 30:w - w // 25],
            "contrast": np.clip((image.astype(np.float32) - 20) * 1.25, 0, 255).astype(np.uint8),
            "jpeg": jpeg, "rotated": rotated}


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    from cxrcore.demo import DemoConfig, generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", DemoConfig(images=100, size=128, seed=4),
                                 workers=2)


def test_clean_demo_splits_have_no_duplicate_pairs_although_their_hashes_collide(demo_set):
    splits = [load_split(demo_set / f"{n}.csv", split_name=n) for n in ("train", "valid", "test")]
    check = check_images(splits, demo_set / "images", workers=2)
    assert check.cross_split_duplicates() == []
    # within a split only a patient's own near-identical follow-ups may pair (the demo redraws little between them)
    assert all(d.image_a[:8] == d.image_b[:8] for d in check.duplicates)
    # the hash alone pairs different patients here: the shortlist is not the verdict
    hashes = np.array([perceptual_hash(cv2.imread(str(demo_set / "images" / n), cv2.IMREAD_GRAYSCALE))
                       for s in splits for n in s.images], dtype=np.uint64)
    assert len(near_duplicate_pairs(hashes, 4)) > 0


def test_re_exported_demo_images_are_found_and_never_paired_with_other_patients(demo_set, tmp_path):
    train = load_split(demo_set / "train.csv", split_name="train")
    originals = list(train.images[:6])
    root = tmp_path / "img"
    root.mkdir()
    for name in train.images:
        shutil.copyfile(demo_set / "images" / name, root / name)
    copies, source = [], {}
    for name in originals:
        image = cv2.imread(str(demo_set / "images" / name), cv2.IMREAD_GRAYSCALE)
        for kind, altered in _re_exports(image).items():
            copy = f"{name[:-4]}_{kind}.png"
            write_png(root / copy, altered)
            copies.append(copy)
            source[copy] = name
    check = check_images([train, _split(copies, "export")], root, workers=2)
    found = {(d.image_a, d.image_b) for d in check.cross_split_duplicates()}
    assert {(source[c], c) for c in copies} <= found, sorted({(source[c], c) for c in copies} - found)
    # nothing pairs different patients (a demo patient's follow-ups differ too little to be told apart)
    assert all(a[:8] == b[:8] for a, b in found)
    assert all(not d.exact and d.similarity >= CONFIRM_CORRELATION for d in check.cross_split_duplicates())
