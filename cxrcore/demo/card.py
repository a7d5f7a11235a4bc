"""The dataset card (README.md) of a demo set: how it was made, what is in it, what it teaches.

Numbers about the files (counts, prevalence, boxes, leakage) are computed from the set being written;
model numbers come from `teaching_results.json`, written by `bench/bench_demo_teaching.py`, and are
shown with the date, command and arguments they were measured with, or marked as not measured.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrcore.data.labels import LABELS
from cxrcore.demo.config import (DEFAULT_PREVALENCE, DISTINCT_FINDINGS, NIH_PREVALENCE, OVERLAPPING_GROUPS,
                                 DemoConfig)
from cxrcore.errors import ConfigError
from cxrcore.fileio import read_json_file

TEACHING_RESULTS = Path(__file__).with_name("teaching_results.json")
COMMAND = "python bench/bench_demo_teaching.py"

#: What each finding looks like in the demo images (the card's signature column).
SIGNATURES: dict[str, str] = {
    "Atelectasis": "plate-like band or basal wedge, hemidiaphragm pulled up (volume loss)",
    "Cardiomegaly": "cardiac silhouette widened about 1.5x (cardiothoracic ratio > 0.55)",
    "Consolidation": "dense lobar airspace opacity with air bronchograms; upper-lobe ones stop at the fissure",
    "Edema": "bilateral perihilar (bat-wing) haze with septal lines at the bases",
    "Effusion": "homogeneous basal opacity with a meniscus, costophrenic angle and dome hidden",
    "Emphysema": "hyperlucent, taller lungs, low flat diaphragm, pruned peripheral vessels, narrow heart",
    "Fibrosis": "coarse reticular lines and small rings, peripheral and basal, slight volume loss",
    "Hernia": "retrocardiac round opacity holding a gas bubble with a flat air-fluid level",
    "Infiltration": "faint ill-defined hazy patches, mid and lower zones",
    "Mass": "round, slightly lobulated opacity, 6-9% of the image width across",
    "Nodule": "one to three small sharp round opacities, 2-4% of the image width across",
    "Pleural_Thickening": "dense rim along the lateral chest wall or an apical cap",
    "Pneumonia": "patchy heterogeneous airspace opacity, usually basal, sometimes both lungs",
    "Pneumothorax": "apical-lateral lucent rim without lung markings, thin visceral pleural line",
}


def load_teaching_results(path: str | Path | None = None) -> dict | None:
    """The measured teaching numbers, or None when the benchmark has not been run."""
    try:
        return read_json_file(Path(path or TEACHING_RESULTS), error=ConfigError, what="teaching results")
    except (OSError, ConfigError):
        return None


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text in ("", "-", "n/a")


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Markdown table; columns holding only numbers are right-aligned."""
    align = ["---:" if i and all(_numeric(r[i]) for r in rows) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(config: DemoConfig, out: str = "data/demo") -> str:
    """The CLI call that reproduces a config."""
    parts = [f"python -m cxrcore demo --out {out}", f"--images {config.images}", f"--size {config.size}",
             f"--seed {config.seed}"]
    if config.rates != DEFAULT_PREVALENCE:
        changed = ",".join(f"{k}={v:g}" for k, v in config.rates.items() if DEFAULT_PREVALENCE[k] != v)
        parts.append(f"--prevalence {changed}")
    if config.ap_rate != 0.2:
        parts.append(f"--ap-rate {config.ap_rate:g}")
    return " ".join(parts)


def difficulty(auroc: float | None) -> str:
    """Words for a measured test AUROC."""
    if auroc is None:
        return "not measured"
    if auroc >= 0.9:
        return "easy"
    if auroc >= 0.75:
        return "moderate"
    return "hard"


def _split_section(frame: pd.DataFrame) -> str:
    rows = []
    patients = {name: set(frame.loc[frame["Split"] == name, "PatientId"]) for name in
                ("train", "valid", "test", "valid_leaky")}
    for name in ("train", "valid", "test", "valid_leaky"):
        part = frame[frame["Split"] == name]
        shared = len(patients[name] & patients["train"]) if name != "train" else 0
        rows.append([f"`{name}.csv`", str(len(part)), str(len(patients[name])),
                     "-" if name == "train" else str(shared)])
    return _table(["split", "images", "patients", "patients also in train"], rows)


def _prevalence_section(frame: pd.DataFrame, config: DemoConfig) -> str:
    rows = []
    rates = config.rates
    for label in LABELS:
        counts = [int(frame.loc[frame["Split"] == s, label].sum()) for s in ("train", "valid", "test", "valid_leaky")]
        rows.append([label, f"{rates[label]:.3f}", f"{frame[label].mean():.3f}", *map(str, counts),
                     f"{NIH_PREVALENCE[label]:.3f}"])
    none = (frame[list(LABELS)].sum(axis=1) == 0).mean()
    rows.append(["No Finding", "-", f"{none:.3f}", "", "", "", "", "0.538"])
    return _table(["label", "requested", "actual", "train", "valid", "test", "valid_leaky", "NIH"], rows)


def _findings_section(boxes: pd.DataFrame, teaching: dict | None, comparable: bool) -> str:
    per_label = boxes.groupby("Finding Label").size().to_dict() if len(boxes) else {}
    test_auroc = (teaching or {}).get("test_auroc", {}) if comparable else {}
    rows = []
    for label in LABELS:
        others = sorted({other for g in OVERLAPPING_GROUPS if label in g for other in g if other != label})
        group = "distinct" if label in DISTINCT_FINDINGS else (
            "overlaps " + ", ".join(others) if others else "fine texture")
        auc = test_auroc.get(label)
        rows.append([label, SIGNATURES[label], group, str(per_label.get(label, 0)), _fmt(auc),
                     difficulty(auc)])
    return _table(["finding", "what is drawn", "look", "boxes", "test AUROC", "measured difficulty"], rows)


def _teaching_section(teaching: dict | None, config: DemoConfig) -> tuple[str, bool]:
    if not teaching:
        return ("**Not measured yet.** Run `python bench/bench_demo_teaching.py` to train the small CNN and "
                "write `cxrcore/demo/teaching_results.json`; regenerate the set to embed the numbers here.", False)
    measured = DemoConfig.from_dict(teaching["config"])
    comparable = measured == config
    lines = []
    if not comparable:
        lines.append(f"> These numbers were measured on the set made by `{command_line(measured)}`, "
                     "not on this one; per-finding AUROCs below are therefore left out.\n")
    m = teaching
    lines.append(f"Measured {m['measured_on']} with `{m['command']}` ({m.get('machine', 'machine not recorded')}): "
                 f"{m['model']}, trained {m['epochs']} epochs at {m['image_size']} px on `train.csv` "
                 f"({m['train_seconds']:.0f} s); mean over {m.get('repeats', 1)} training run(s).\n")
    lines.append(_table(["measure", "value"], [
        ["mean AUROC on `test.csv`, distinct findings (" + ", ".join(DISTINCT_FINDINGS) + ")",
         _fmt(m["distinct_mean_auroc_test"])],
        ["mean AUROC on `test.csv`, all 14 findings", _fmt(m["all_mean_auroc_test"])],
        ["mean AUROC on `valid.csv` (clean: no patient shared with train)", _fmt(m["valid_mean_auroc"])],
        ["mean AUROC on `valid_leaky.csv` (every patient also in train)", _fmt(m["valid_leaky_mean_auroc"])],
        ["leak gap (leaky - clean)", _fmt(m["leak_gap"])],
    ]))
    if "leak_gap_runs" in m:
        runs = ", ".join(_fmt(v) for v in m["leak_gap_runs"])
        lines.append(f"\nLeak gap of each training run: {runs}.")
    one = m.get("one_click")
    if isinstance(one, dict) and one.get("runs"):
        runs = "; ".join(f"seed {r['seed']}: valid {_fmt(r['valid'])}, valid_leaky {_fmt(r['valid_leaky'])}, gap "
                         f"{r['gap']:+.3f}, {r['seconds']:.0f} s" for r in one["runs"])
        shown = "met in every run" if one.get("lesson_shown") else "not met in every run"
        lines.append(f"\nThe one-click demo model (the app's Train button: `{one['command']}`), measured "
                     f"{one.get('measured_on', 'n/a')} with `{one.get('bench', COMMAND)}`: {runs}. Target "
                     f"(`valid_leaky` at least 0.030 above `valid` in each run): {shown}.")
    return "\n".join(lines), comparable


def build_card(cohort, boxes: pd.DataFrame, teaching: dict | None | bool = True) -> str:
    """README.md text for a demo set (`teaching=True` loads teaching_results.json; None: not measured)."""
    config: DemoConfig = cohort.config
    frame = cohort.frame
    if teaching is True:
        teaching = load_teaching_results()
    teaching_text, comparable = _teaching_section(teaching or None, config)
    n_patients = frame["PatientId"].nunique()
    leak_patients = len(set(frame.loc[frame["Split"] == "valid_leaky", "PatientId"])
                        & set(frame.loc[frame["Split"] == "train", "PatientId"]))
    gap = (teaching or {}).get("leak_gap") if teaching else None
    gap_text = (f"In the measurement below the leaky split scored {_fmt(gap)} AUROC "
                f"{'higher' if (gap or 0) > 0 else 'lower'} than the clean one." if gap is not None
                else "The size of the effect has not been measured yet (see below).")
    overlaps = "; ".join(" / ".join(g) for g in OVERLAPPING_GROUPS)
    return f"""# Demo chest X-ray set (synthetic phantoms)

Synthetic frontal chest radiographs with known findings, boxes and patients, generated by `cxrcore`
so the dashboard works on a fresh machine and a class can see what a leaky split does. **Not real
patients, not for clinical use.** The labels are the 14 of NIH ChestX-ray14 and every file uses the
NIH or course format, so everything that reads NIH data reads this set.

## How it was made

```
{command_line(config)}
```

{len(frame)} grayscale PNGs of {config.size}x{config.size} px from {n_patients} patients (seed {config.seed}).
The same arguments give byte-identical files. Each patient has a stable build drawn from their own
random stream: body and lung size, heart size and shape, diaphragm height, rib spacing, clavicles,
lung vessel pattern, breast shadows (women), in 9% a pacemaker or sternotomy wires. Each image
varies: depth of inspiration, view (AP in {config.ap_rate:.0%}: heart magnified about 7%, clavicles
higher), rotation up to 4 degrees, shift up to 3%, scale up to 7%, exposure, contrast, edge enhancement,
quantum noise, bowel gas, side marker. Findings are drawn where they occur, with their place fixed
per patient and their size varying a little per image. Patients keep most findings across follow-ups
(a carried finding shows on 85% of their images; 80% of each label's prevalence comes from carriers),
as in real archives, which is what lets a model memorise patients.

## Files

| file | content |
|---|---|
| `images/` | `PPPPPPPP_FFF.png` (patient, follow-up), patient ids from 1 |
| `train.csv`, `valid.csv`, `test.csv` | course one-hot format: `Image`, the 14 labels (0/1) in canonical order, `PatientId`; patient-wise split |
| `valid_leaky.csv` | same format and size as `valid.csv`, made of held-out follow-ups of **train** patients |
| `Data_Entry.csv` | NIH table: `Image Index`, `Finding Labels` (pipe-separated, `No Finding`), `Follow-up #`, `Patient ID`, `Patient Age`, `Patient Gender`, `View Position` |
| `bbox.csv` | NIH BBox_List_2017 layout: `Image Index`, `Finding Label`, `Bbox [x,y,w,h]` in this image's pixels; one row per drawn component (both sides of a bilateral effusion, each nodule) |
| `.complete` | written last: the arguments; a folder without it is incomplete and is regenerated |

## Splits

{_split_section(frame)}

The split is patient-wise and stratified over the 14 labels. `valid_leaky.csv` holds images of
{leak_patients} train patients (never their first image) and demonstrates leakage: a model that has seen
those patients in training recognises their anatomy and recalls their findings, so its score there
overstates how it does on new patients. That is the only difference between the two validation splits:
both are drawn by the same renderer from the same label rates, and `valid_leaky`'s findings are no
more conspicuous; its patients are simply known to the model (their build, and their carried findings
in the same place). The gap is largest for findings that are hard to see and that a patient carries
across follow-ups (Hernia, Atelectasis, Pleural_Thickening, Mass): there the model answers from the
patient rather than from the image, as with patient leakage in real archives. {gap_text}

## Prevalence

Per-image rates (requested, actual overall) and positive images per split; NIH's real rates for
comparison. The default rates keep NIH's order (Infiltration most common, Hernia rarest) with the range
compressed so each class has test positives in a 1,000-image set; `--prevalence nih` uses NIH's rates.

{_prevalence_section(frame, config)}

## Findings

Distinct findings (the benchmark's headline set): {", ".join(DISTINCT_FINDINGS)}. Drawn alike on purpose,
as they are in real films and in NIH's text-mined labels: {overlaps}. The difficulty column is measured
(test AUROC >= 0.9 easy, >= 0.75 moderate, else hard), not assumed.

{_findings_section(boxes, teaching or None, comparable)}

A box surrounds the pixels where the finding's drawn mask is at least half its peak, after the
image's rotation and shift, so it lies over the rendered finding (box rows: {len(boxes)}).

## Teaching results

{teaching_text}

## Limits

The phantoms are drawn from simple shapes: they read as chest films at thumbnail size but not to a
radiologist at full size, the findings are cleaner than real ones, and there are no lateral views,
no tubes and lines other than pacemakers and sternal wires, and no label noise. Scores on this set
say nothing about performance on real radiographs.
"""
