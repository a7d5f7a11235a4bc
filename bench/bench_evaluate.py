"""Benchmark `evaluate` and `compare` at NIH test-set scale.

Synthetic data: 22,000 images x 14 classes from ~7,000 patients (NIH-like prevalences, 1 to 12 images
per patient), two models; 1,000 patient-level bootstrap replicates. Prints seconds for the core
functions and the full CLI, their ratio to the 10 s target, and the speedup over a naive loop that
resamples patients and calls sklearn's roc_auc_score per replicate and class (measured on 20
replicates and extrapolated to 1,000). With the real NIH files present (default ../shared/nih), also
evaluates synthetic scores on the official test list's real patient structure.

Run: python bench/bench_evaluate.py [--nih ../shared/nih] [--bootstrap 1000]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrcore.cli import main as cli_main  # noqa: E402
from cxrcore.data.labels import LABELS  # noqa: E402
from cxrcore.data.predictions import write_predictions  # noqa: E402
from cxrcore.evaluate.delong import compare_models  # noqa: E402
from cxrcore.evaluate.metrics import evaluate  # noqa: E402

TARGET_S = 10.0
#: Approximate NIH ChestX-ray14 prevalences (whole dataset), in LABELS order.
PREVALENCE = np.array([0.103, 0.025, 0.042, 0.021, 0.119, 0.022, 0.015, 0.002, 0.177, 0.052, 0.056, 0.030,
                       0.013, 0.047])


def synthetic(n_images: int = 22_000, n_patients: int = 7_000, seed: int = 0):
    """Clustered labels and two models' probabilities; images of a patient share a label tendency."""
    rng = np.random.default_rng(seed)
    per_patient = np.minimum(rng.geometric(n_patients / n_images, n_patients), 12)
    pid = np.repeat(np.arange(1, n_patients + 1), per_patient)
    if pid.size < n_images:
        pid = np.r_[pid, rng.integers(1, n_patients + 1, n_images - pid.size)]
    pid = np.sort(pid[:n_images])
    logit_prev = np.log(PREVALENCE / (1 - PREVALENCE))
    patient_effect = rng.normal(0, 1.0, (n_patients + 1, len(LABELS)))[pid]
    y = (rng.random((n_images, len(LABELS))) < 1 / (1 + np.exp(-(logit_prev + patient_effect)))).astype(np.uint8)
    signal = 1.6 * y + 0.5 * patient_effect
    p_a = 1 / (1 + np.exp(-(logit_prev + signal + rng.normal(0, 1.0, y.shape))))
    p_b = 1 / (1 + np.exp(-(logit_prev + signal + rng.normal(0, 1.3, y.shape))))
    starts = np.r_[0, np.flatnonzero(np.diff(pid)) + 1]
    follow = np.arange(n_images) - np.repeat(starts, np.diff(np.r_[starts, n_images]))
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(pid, follow)]
    return names, pid, y, p_a, p_b


def naive_bootstrap(y: np.ndarray, p: np.ndarray, pid: np.ndarray, n_boot: int, seed: int = 0) -> float:
    """Per-replicate Python loop: draw patients, gather their images, sklearn roc_auc_score per class."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    patients, codes = np.unique(pid, return_inverse=True)
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    start = time.perf_counter()
    for _ in range(n_boot):
        drawn = rng.integers(0, patients.size, patients.size)
        idx = np.concatenate([members[d] for d in drawn])
        for c in range(y.shape[1]):
            yc = y[idx, c]
            if 0 < yc.sum() < yc.size:
                roc_auc_score(yc, p[idx, c])
    return time.perf_counter() - start


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run_cli(argv: list[str]) -> tuple[float, int]:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    return time.perf_counter() - start, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nih", default=str(ROOT.parent / "shared" / "nih"), help="NIH folder (optional)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--naive-replicates", type=int, default=20)
    args = parser.parse_args()
    B = args.bootstrap

    print(f"machine: {os.cpu_count()} CPU cores; numpy {np.__version__}")
    names, pid, y, p_a, p_b = synthetic()
    print(f"synthetic: {len(names)} images, {np.unique(pid).size} patients, {y.shape[1]} classes, "
          f"{B} bootstrap replicates (patient resampling)")

    t_eval, result = timed(lambda: evaluate(y, p_a, LABELS, pid, n_bootstrap=B, seed=0), 3)
    print(f"evaluate() core: {t_eval:.2f} s (median of 3) -> {t_eval / TARGET_S:.2f} of the {TARGET_S:.0f} s target;"
          f" mean AUROC {result.mean_auroc:.4f} [{result.mean_auroc_ci_low:.4f}, {result.mean_auroc_ci_high:.4f}]")

    t_cmp, _ = timed(lambda: compare_models(y, [p_a, p_b], LABELS, ["a", "b"]), 3)
    print(f"compare_models() DeLong, 2 models x 14 classes: {t_cmp:.3f} s (median of 3)")
    t_cmp_b, _ = timed(lambda: compare_models(y, [p_a, p_b], LABELS, ["a", "b"], patient_ids=pid,
                                              n_bootstrap=B), 1)
    print(f"compare_models() DeLong + {B}-replicate patient bootstrap of the differences: {t_cmp_b:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        frame = pd.DataFrame({"Image": names})
        for i, label in enumerate(LABELS):
            frame[label] = y[:, i]
        frame["PatientId"] = pid
        frame.to_csv(tmp_path / "labels.csv", index=False)
        write_predictions(tmp_path / "a.csv", names, p_a)
        write_predictions(tmp_path / "b.csv", names, p_b)
        t_cli, code = run_cli(["evaluate", "--labels", str(tmp_path / "labels.csv"), "--predictions",
                               str(tmp_path / "a.csv"), "--bootstrap", str(B), "--format", "json"])
        print(f"CLI evaluate (read labels + predictions, {B} replicates, JSON): {t_cli:.2f} s, exit {code} "
              f"-> {t_cli / TARGET_S:.2f} of the target")
        t_cli2, code = run_cli(["compare", "--labels", str(tmp_path / "labels.csv"), "--predictions",
                                str(tmp_path / "a.csv"), "--predictions", str(tmp_path / "b.csv"), "--format", "json"])
        print(f"CLI compare (2 models, DeLong + Holm): {t_cli2:.2f} s, exit {code}")

    n_naive = args.naive_replicates
    t_naive = naive_bootstrap(y, p_a, pid, n_naive)
    extrapolated = t_naive * B / n_naive
    # the fast bootstrap alone (same replicates count) for a like-for-like ratio
    from cxrcore.evaluate.metrics import bootstrap_auroc
    t_fast, _ = timed(lambda: bootstrap_auroc(y, p_a, pid, n_bootstrap=B, seed=0), 3)
    print(f"naive sklearn loop: {t_naive:.2f} s for {n_naive} replicates, extrapolated {extrapolated:.1f} s for {B} "
          f"(measured on {n_naive} and scaled linearly)")
    print(f"fast bootstrap_auroc(): {t_fast:.2f} s for {B} -> speedup {extrapolated / t_fast:.0f}x "
          f"(vs whole evaluate(): {extrapolated / t_eval:.0f}x)")

    nih = Path(args.nih)
    table, test_list = nih / "Data_Entry_2017_v2020.csv.gz", nih / "test_list.txt"
    if table.exists() and test_list.exists():
        from cxrcore.data.dataset import load_split, load_table

        start = time.perf_counter()
        split = load_split(test_list, label_table=load_table(table))
        t_load = time.perf_counter() - start
        yr = split.labels
        pr = split.patients
        rng = np.random.default_rng(1)
        # scores share a per-patient offset (a model's errors correlate across one patient's images)
        offset = rng.normal(0, 0.8, (int(pr.max()) + 1, len(LABELS)))[pr]
        probs = 1 / (1 + np.exp(-(np.log(PREVALENCE / (1 - PREVALENCE)) + 1.6 * yr + offset
                                  + rng.normal(0, 0.6, yr.shape))))
        t_real, res = timed(lambda: evaluate(yr, probs, LABELS, pr, n_bootstrap=B, seed=0), 1)
        hernia = res.classes["Hernia"]
        print(f"real NIH test list: {len(split)} images, {np.unique(pr).size} patients (load {t_load:.2f} s); "
              f"evaluate() with synthetic scores: {t_real:.2f} s; Hernia n_pos {hernia.n_pos}, CI "
              f"[{hernia.ci_low:.3f}, {hernia.ci_high:.3f}] from {hernia.bootstrap_used} replicates")
        res_img = evaluate(yr, probs, LABELS, pr, n_bootstrap=B, seed=0, resample="image")
        w_pat = np.mean([m.ci_high - m.ci_low for m in res.classes.values()])
        w_img = np.mean([m.ci_high - m.ci_low for m in res_img.classes.values()])
        print(f"  mean CI width over classes: patient resampling {w_pat:.4f}, image resampling {w_img:.4f} "
              f"(ratio {w_pat / w_img:.2f}: the image bootstrap understates uncertainty when patients repeat)")
    else:
        print(f"real NIH files not found under {nih}; skipped the real-structure run")


if __name__ == "__main__":
    main()
