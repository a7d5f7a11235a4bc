"""Fix splits: patient-grouped multilabel-stratified splitting, and repair of a leaky split.

`stratify` splits a labels table into named fractions so that no patient is in two splits and each
class's prevalence is as even as possible (iterative stratification, Sechidis et al. 2011, run on
patients instead of images). `repair_leakage` moves each leaking patient's images into the split
that already holds most of them (the fewest moves); when that would drain a split (it keeps less than
half its images), `resplit_same_sizes` is the way out: a patient-grouped re-split that keeps every
split's name and size. All return the new splits and a before/after balance report; `write_outputs` /
`outputs_zip` save them in the input's own file format.
"""
from __future__ import annotations

import io
import json
import math
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from cxrcore.audit.audit import class_balance, count_leaked
from cxrcore.audit.report import markdown_table
from cxrcore.data.dataset import FORMAT_LIST, FORMAT_ONEHOT, IMAGE, PATIENT, Split, write_split
from cxrcore.data.labels import LABELS
from cxrcore.errors import DatasetError
from cxrcore.fileio import atomic_write_text, refuse_overwriting_inputs, writing

#: Fractions must add up to 1 within this.
FRACTION_TOLERANCE = 1e-6
REPORT_JSON, REPORT_MD = "split_report.json", "split_report.md"
MODE_STRATIFY, MODE_REPAIR = "stratify", "repair"

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_EPS = 1e-9
#: How the CLI re-splits keeping sizes (the Fix page words it as its own button).
CLI_RESPLIT_SIZES = "re-split by patient with --input (every split file) and --fractions {fractions}"
#: A repair drains a split when the split keeps less than this share of its images (a built-to-leak
#: split such as the demo's valid_leaky holds only images of other splits' patients: it ends empty).
DRAIN_KEEP = 0.5


# ---------------------------------------------------------------------------------------------
# Names and fractions


def check_split_names(names: Iterable[str]) -> list[str]:
    """Refuse split names that are not plain file stems (they become `<name>.csv`) or repeat."""
    names = list(names)
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not _PLAIN_NAME.match(name) or name.lower() in _RESERVED:
            raise DatasetError(f"split name '{str(name)[:40]}' is not a plain name.",
                               fix="use letters, digits, '_' or '-' (e.g. train, valid, test); "
                                   "it becomes the output file name.")
        if name.lower() in seen:
            raise DatasetError(f"split name '{name}' is used twice (names are compared ignoring case).",
                               fix="give each split its own name.")
        seen[name.lower()] = name
    return names


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check named fractions: at least two, plain unique names, positive, summing to 1 (within 1e-6)."""
    if len(fractions) < 2:
        raise DatasetError(f"{len(fractions)} fraction(s) given; a split needs at least two.",
                           fix="write e.g. train=0.7,valid=0.1,test=0.2.")
    check_split_names(fractions)
    out: dict[str, float] = {}
    for name, value in fractions.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DatasetError(f"fraction of '{name}' is '{value}', not a number.",
                               fix="write fractions as decimals, e.g. train=0.7.") from None
        if not math.isfinite(number) or number <= 0:
            raise DatasetError(f"fraction of '{name}' is {value}; fractions must be positive.",
                               fix="give every split a fraction above 0, e.g. train=0.7,valid=0.1,test=0.2.")
        out[name] = number
    total = sum(out.values())
    if abs(total - 1.0) > FRACTION_TOLERANCE:
        hint = " (percentages? write 0.7, not 70)" if total > 1.5 else ""
        raise DatasetError(f"fractions add up to {total:g}, not 1{hint}.",
                           fix="make them sum to 1, e.g. train=0.7,valid=0.1,test=0.2.")
    return out


def parse_fractions(text: str) -> dict[str, float]:
    """'train=0.7,valid=0.1,test=0.2' -> validated {name: fraction}."""
    fractions: dict[str, str] = {}
    for item in str(text).split(","):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise DatasetError(f"'{item.strip()[:40]}' in --fractions is not NAME=FRACTION.",
                               fix="write e.g. train=0.7,valid=0.1,test=0.2.")
        if name in fractions:
            raise DatasetError(f"split name '{name}' is used twice.", fix="give each split its own name.")
        fractions[name] = value
    return validate_fractions(fractions)


# ---------------------------------------------------------------------------------------------
# Building splits from rows of other splits


def _same_layout(parts: list[Split]) -> bool:
    """Whether rows of these splits can be written into one file of their shared format."""
    formats = {p.format for p in parts}
    if len(formats) != 1 or any(p.original is None for p in parts):
        return False
    if parts[0].format == FORMAT_LIST:
        return len({p.source.rpartition("@")[0] for p in parts}) == 1
    return len({tuple(p.original.columns) for p in parts}) == 1


def _subset(split: Split, positions: np.ndarray, name: str) -> Split:
    """Rows of `split` at `positions`, keeping index labels so write_split finds the original rows."""
    frame = split.frame.iloc[positions]
    original = None if split.original is None else split.original.loc[frame.index]
    return Split(name=name, frame=frame, source=split.source, format=split.format,
                 warnings=list(split.warnings), original=original)


def _concat(name: str, parts: list[tuple[Split, np.ndarray]], notes: list[str]) -> Split:
    """One split from rows of several (in order); falls back to a normalized one-hot CSV when the
    sources' file layouts differ. Duplicate image names are dropped (first kept)."""
    chosen = [(s, np.asarray(p, dtype=np.int64)) for s, p in parts if len(p)]
    if not chosen:
        chosen = [(parts[0][0], np.zeros(0, dtype=np.int64))]
    sources = [s for s, _ in chosen]
    frames = [s.frame.iloc[p] for s, p in chosen]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    keep_layout = _same_layout(sources)
    if keep_layout:
        originals = [s.original.loc[f.index] for s, f in zip(sources, frames)]
        original = pd.concat(originals, ignore_index=True) if len(originals) > 1 \
            else originals[0].reset_index(drop=True)
        fmt = sources[0].format
    else:
        original, fmt = None, FORMAT_ONEHOT
        notes.append(f"split '{name}' takes rows from files of different layouts "
                     f"({', '.join(sorted({s.format for s in sources}))}); it is written as a one-hot CSV.")
    dup = frame[IMAGE].astype(str).duplicated().to_numpy()
    if dup.any():
        notes.append(f"split '{name}': {int(dup.sum())} duplicate image row(s) dropped "
                     f"(e.g. {frame[IMAGE][dup].iloc[0]}).")
        frame = frame.loc[~dup]
        if original is not None:
            original = original.loc[frame.index]
    distinct = list(dict.fromkeys(s.source for s in sources))
    if len(distinct) == 1:
        source = distinct[0]
    elif fmt == FORMAT_LIST:  # one label table, several lists: keep 'TABLE@LISTS' so the table stays findable
        source = distinct[0].rpartition("@")[0] + "@" + " + ".join(s.rpartition("@")[2] for s in distinct)
    else:
        source = " + ".join(distinct)
    return Split(name=name, frame=frame, source=source, format=fmt,
                 warnings=[w for s in sources for w in s.warnings], original=original)


def combine_splits(splits: list[Split], name: str = "all", notes: list[str] | None = None) -> Split:
    """Pool several splits into one (for re-stratifying); duplicate image names are kept once."""
    if not splits:
        raise DatasetError("no input to split.", fix="pass a labels file with --input.")
    if len(splits) == 1:
        return splits[0]
    return _concat(name, [(s, np.arange(len(s))) for s in splits], notes if notes is not None else [])


# ---------------------------------------------------------------------------------------------
# Stratified patient-grouped split


def _patient_table(split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(patient ids sorted, row -> patient index, per-patient positives (P, 14), images per patient)."""
    ids, inverse = np.unique(split.patients, return_inverse=True)
    labels = split.labels
    counts = np.empty((ids.size, len(LABELS)), dtype=np.int64)
    for k in range(len(LABELS)):
        counts[:, k] = np.bincount(inverse, weights=labels[:, k], minlength=ids.size)
    images = np.bincount(inverse, minlength=ids.size).astype(np.int64)
    return ids, inverse, counts, images


def _best(candidates: list[int], *keys: list[float]) -> int:
    """Index in `candidates` order with the largest first key, ties broken by the next keys."""
    for key in keys:
        if len(candidates) == 1:
            break
        top = max(key[j] for j in candidates)
        candidates = [j for j in candidates if key[j] >= top - _EPS]
    return candidates[0]


def assign_patients(counts: np.ndarray, images: np.ndarray, fractions: np.ndarray, seed: int = 0) -> np.ndarray:
    """Split index per patient by iterative stratification on patients (Sechidis et al. 2011).

    Classes are handled rarest first (fewest unassigned patients); each patient carrying the class,
    largest first, goes to the split with the largest remaining demand for that class (ties: largest
    remaining image demand, then a seeded random order). Label-free patients then fill image demand.
    """
    counts = np.asarray(counts, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    fractions = np.asarray(fractions, dtype=float)
    n_patients, n_splits = counts.shape[0], fractions.size
    rng = np.random.default_rng(seed)
    order_noise = rng.random(n_patients)
    split_noise = rng.random((n_patients, n_splits))
    class_demand = [list(row) for row in fractions[:, None] * counts.sum(axis=0)[None, :]]  # [split][class]
    image_demand = list(fractions * images.sum())
    assigned = np.full(n_patients, -1, dtype=np.int64)
    has = counts > 0
    remaining = has.sum(axis=0)
    splits = list(range(n_splits))
    while True:
        open_classes = np.flatnonzero(remaining > 0)
        if open_classes.size == 0:
            break
        label = int(open_classes[np.argmin(remaining[open_classes])])
        members = np.flatnonzero(has[:, label] & (assigned < 0))
        members = members[np.lexsort((order_noise[members], -counts[members, label]))]
        demand_label = [class_demand[j][label] for j in splits]
        for p in members.tolist():
            noise = split_noise[p].tolist()
            j = _best(splits, demand_label, image_demand, noise)
            assigned[p] = j
            row = counts[p]
            demand = class_demand[j]
            for k in np.flatnonzero(row).tolist():
                demand[k] -= row[k]
            demand_label[j] = demand[label]
            image_demand[j] -= images[p]
        remaining -= has[members].sum(axis=0)
    rest = np.flatnonzero(assigned < 0)
    rest = rest[np.lexsort((order_noise[rest], -images[rest]))]
    for p in rest.tolist():
        j = _best(splits, image_demand, split_noise[p].tolist())
        assigned[p] = j
        image_demand[j] -= images[p]
    return assigned


def _fractions_array(names: list[str], fractions: Mapping[str, float]) -> np.ndarray:
    return np.array([fractions[n] for n in names], dtype=float)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed {seed!r} is not a whole number >= 0.", fix="use e.g. --seed 0.")
    return int(seed)


def _check_enough_patients(split: Split, n_patients: int, names: list[str]) -> None:
    if n_patients < len(names):
        raise DatasetError(f"{split.source} has {n_patients} patient(s), too few for {len(names)} splits.",
                           fix="use fewer splits or a larger labels file.")


def _splits_from_assignment(split: Split, names: list[str], row_split: np.ndarray) -> dict[str, Split]:
    out = {}
    for j, name in enumerate(names):
        positions = np.flatnonzero(row_split == j)
        if positions.size == 0:
            raise DatasetError(f"split '{name}' came out empty: its fraction is too small for "
                               f"{pd.unique(split.patients).size} patients.",
                               fix="raise that fraction or use a larger labels file.")
        out[name] = _subset(split, positions, name)
    return out


def stratified_group_split(split: Split, fractions: Mapping[str, float], seed: int = 0) -> dict[str, Split]:
    """Split rows into named fractions: no patient in two splits, per-class prevalence as even as possible.

    Deterministic for a seed and independent of row order; each output keeps the input's format and rows.
    """
    seed = _check_seed(seed)
    fractions = validate_fractions(fractions)
    names = list(fractions)
    ids, inverse, counts, images = _patient_table(split)
    _check_enough_patients(split, ids.size, names)
    assigned = assign_patients(counts, images, _fractions_array(names, fractions), seed)
    return _splits_from_assignment(split, names, assigned[inverse])


def random_group_split(split: Split, fractions: Mapping[str, float], seed: int = 0) -> dict[str, Split]:
    """Baseline: shuffle patients and cut by cumulative image count (grouped, not stratified)."""
    seed = _check_seed(seed)
    fractions = validate_fractions(fractions)
    names = list(fractions)
    ids, inverse, _, images = _patient_table(split)
    _check_enough_patients(split, ids.size, names)
    order = np.random.default_rng(seed).permutation(ids.size)
    cumulative = np.cumsum(images[order]) - images[order] / 2  # each patient at the middle of its images
    bounds = np.cumsum(_fractions_array(names, fractions))[:-1] * images.sum()
    assigned = np.empty(ids.size, dtype=np.int64)
    assigned[order] = np.searchsorted(bounds, cumulative, side="right")
    return _splits_from_assignment(split, names, assigned[inverse])


# ---------------------------------------------------------------------------------------------
# Balance report


@dataclass
class SplitBalance:
    """Size and per-class prevalence of one split, and its largest deviation from the overall prevalence."""

    name: str
    rows: int
    patients: int
    share: float
    prevalence: np.ndarray
    positives: np.ndarray
    deviation: np.ndarray
    target: float | None = None

    @property
    def max_abs_deviation(self) -> float:
        return float(np.abs(self.deviation).max()) if self.rows else 0.0

    @property
    def worst_class(self) -> str:
        return LABELS[int(np.abs(self.deviation).argmax())]

    def to_dict(self) -> dict:
        return {"rows": self.rows, "images": self.rows, "patients": self.patients, "share": self.share,
                "target_fraction": self.target,
                "prevalence": {label: float(v) for label, v in zip(LABELS, self.prevalence)},
                "positives": {label: int(v) for label, v in zip(LABELS, self.positives)},
                "max_abs_deviation": self.max_abs_deviation, "worst_class": self.worst_class}


def balance(splits: list[Split], overall: np.ndarray, total_rows: int,
            targets: Mapping[str, float] | None = None) -> list[SplitBalance]:
    """Per split: rows, patients, share of all rows, per-class prevalence (audit.class_balance) and
    its deviation from `overall`."""
    out = []
    for split in splits:
        classes = class_balance(split.labels)
        prevalence = classes["pos_freq"].to_numpy(dtype=float)
        out.append(SplitBalance(
            name=split.name, rows=len(split), patients=int(pd.unique(split.patients).size),
            share=len(split) / total_rows if total_rows else 0.0, prevalence=prevalence,
            positives=classes["positives"].to_numpy(dtype=np.int64),
            deviation=prevalence - overall if len(split) else np.zeros(len(LABELS)),
            target=None if targets is None else targets.get(split.name)))
    return out


@dataclass
class Move:
    """Images (and their patients) moved from one split to another by a repair."""

    source: str
    target: str
    patients: int
    images: int

    def to_dict(self) -> dict:
        return {"from": self.source, "to": self.target, "patients": self.patients, "images": self.images}


@dataclass
class BalanceReport:
    """Before/after view of a re-split or repair: sizes, prevalence, deviation, leakage, moves."""

    mode: str
    rows: int
    patients: int
    overall: np.ndarray
    before: list[SplitBalance]
    after: list[SplitBalance]
    leaked_before: tuple[int, int]
    leaked_after: tuple[int, int]
    seed: int | None = None
    fractions: dict[str, float] | None = None
    priority: list[str] | None = None
    moves: list[Move] = field(default_factory=list)
    moved_images: int = 0
    moved_patients: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @staticmethod
    def _worst(balances: list[SplitBalance]) -> float:
        return max((b.max_abs_deviation for b in balances), default=0.0)

    def verdict(self) -> str:
        """One sentence: what was done and whether any patient is still in two splits."""
        worst = max(self.after, key=lambda b: b.max_abs_deviation)
        dev = f"largest prevalence deviation {worst.max_abs_deviation:.5f} ({worst.worst_class}, {worst.name})"
        clean = "no patient is in two splits" if self.leaked_after[0] == 0 else \
            f"{self.leaked_after[0]} patient(s) are still in two splits"
        if self.mode == MODE_STRATIFY:
            parts = ", ".join(f"{b.name} {b.share:.1%}" for b in self.after)
            return (f"Split {self.rows} images of {self.patients} patients into {parts} (seed {self.seed}); "
                    f"{clean}; {dev}.")
        if not self.moved_images:
            return f"Nothing to repair: {clean}; {dev}."
        drained = self.drained()
        if drained:
            lost = "; ".join(f"'{name}' keeps {after} of its {before} images" for name, before, after in drained)
            return (f"Moved {self.moved_images} image(s) of {self.moved_patients} patient(s): {clean}, but this "
                    f"drains a split ({lost}). Re-split by patient keeping the sizes instead.")
        return (f"Moved {self.moved_images} image(s) of {self.moved_patients} patient(s) "
                f"(was {self.leaked_before[0]} patient(s) with {self.leaked_before[1]} image(s) leaking); "
                f"{clean}; {dev}.")

    def drained(self) -> list[tuple[str, int, int]]:
        """(split, images before, images after) of each split a repair left with under DRAIN_KEEP of its images."""
        if self.mode != MODE_REPAIR:
            return []
        return [(b.name, b.rows, a.rows) for b, a in zip(self.before, self.after)
                if b.rows and a.rows < DRAIN_KEEP * b.rows]

    def to_dict(self) -> dict:
        """JSON-ready dict (stable keys, documented in the module docstring of commands/split.py)."""
        def side(balances: list[SplitBalance], leaked: tuple[int, int]) -> dict:
            return {"splits": {b.name: b.to_dict() for b in balances}, "leaked_patients": leaked[0],
                    "leaked_images": leaked[1], "max_abs_deviation": self._worst(balances)}

        return {
            "mode": self.mode,
            "verdict": self.verdict(),
            "seed": self.seed,
            "fractions": self.fractions,
            "priority": self.priority,
            "overall": {"rows": self.rows, "images": self.rows, "patients": self.patients,
                        "prevalence": {label: float(v) for label, v in zip(LABELS, self.overall)}},
            "before": side(self.before, self.leaked_before),
            "after": side(self.after, self.leaked_after),
            "moves": [m.to_dict() for m in self.moves],
            "moved_images": self.moved_images,
            "moved_patients": self.moved_patients,
            "drained": [{"split": n, "images_before": b, "images_after": a} for n, b, a in self.drained()],
            "files": list(self.files),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def render(self, fmt: str = "text", *, heading_level: int = 1) -> str:
        """The report as 'text', 'markdown' or 'json'; Markdown's title at `heading_level` (a page showing
        it inside a section passes e.g. 4), its sections one level below."""
        if fmt == "json":
            return self.to_json() + "\n"
        markdown = fmt == "markdown"
        table = markdown_table if markdown else _table_text
        sub = "#" * min(6, heading_level + 1)
        heading = (lambda t: f"{sub} {t}") if markdown else (lambda t: f"{t}\n{'-' * len(t)}")
        title = "Split repair" if self.mode == MODE_REPAIR else "Stratified split"
        out = [f"{'#' * heading_level} {title}" if markdown else f"{title.upper()}\n{'=' * len(title)}", "",
               f"**{self.verdict()}**" if markdown else self.verdict(), ""]
        header = ["split", "images", "patients", "share", "target", "max |dev|", "worst class"]
        for caption, balances, leaked in (("Before", self.before, self.leaked_before),
                                          ("After", self.after, self.leaked_after)):
            rows = [[b.name, str(b.rows), str(b.patients), f"{b.share:.3f}",
                     "" if b.target is None else f"{b.target:.3f}", f"{b.max_abs_deviation:.5f}",
                     b.worst_class] for b in balances]
            out += [heading(f"{caption}: {leaked[0]} patient(s) in more than one split"),
                    table(header, rows), ""]
        if self.mode == MODE_REPAIR:
            out += [heading("Moves"), table(["from", "to", "patients", "images"],
                                            [[m.source, m.target, str(m.patients), str(m.images)]
                                             for m in self.moves]) if self.moves else "No image moved.", ""]
        columns = ["class", "overall"] + [f"{b.name} (before)" for b in self.before] + \
            [f"{b.name} (after)" for b in self.after]
        rows = [[label, f"{self.overall[i]:.4f}"] + [f"{b.prevalence[i]:.4f}" for b in self.before]
                + [f"{b.prevalence[i]:.4f}" for b in self.after] for i, label in enumerate(LABELS)]
        out += [heading("Prevalence by class"), table(columns, rows), ""]
        if self.files:
            out += [heading("Files"), *[f"- {f}" for f in self.files], ""]
        if self.notes or self.warnings:
            out += [heading("Notes"), *[f"- {n}" for n in [*self.notes, *self.warnings]], ""]
        return "\n".join(out).rstrip() + "\n"


def _table_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def balance_report(mode: str, before: list[Split], after: list[Split], **extra) -> BalanceReport:
    """Compare splits before and after: prevalence per class against the pooled `after` prevalence."""
    rows = sum(len(s) for s in after)
    labels = np.concatenate([s.labels for s in after]) if after else np.zeros((0, len(LABELS)), np.uint8)
    overall = class_balance(labels)["pos_freq"].to_numpy(dtype=float)
    patients = int(np.unique(np.concatenate([s.patients for s in after])).size) if after else 0
    targets = extra.get("fractions")
    before_rows = sum(len(s) for s in before)
    return BalanceReport(
        mode=mode, rows=rows, patients=patients, overall=overall,
        before=balance(before, overall, before_rows),
        after=balance(after, overall, rows, targets), leaked_before=count_leaked(before),
        leaked_after=count_leaked(after),
        warnings=list(dict.fromkeys(str(w) for s in before for w in s.warnings)), **extra)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class SplitResult:
    """New splits and the before/after report."""

    splits: list[Split]
    report: BalanceReport

    @property
    def by_name(self) -> dict[str, Split]:
        return {s.name: s for s in self.splits}


@dataclass
class RepairResult(SplitResult):
    """Repaired splits, the moves per split pair and, per moved patient, the split it now lives in."""

    moves: list[Move] = field(default_factory=list)
    moved_images: int = 0
    moved_patients: int = 0
    #: One row per patient that was in more than one split: PatientId, the split kept, images moved.
    assignment: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[PATIENT, "split", "moved"]))


def stratify(inputs: Split | list[Split], fractions: Mapping[str, float], seed: int = 0) -> SplitResult:
    """Pool the input split(s) and re-split them into stratified, patient-disjoint named fractions."""
    fractions = validate_fractions(fractions)
    inputs = [inputs] if isinstance(inputs, Split) else list(inputs)
    notes: list[str] = []
    pool = combine_splits(inputs, notes=notes)
    new = stratified_group_split(pool, fractions, seed)
    report = balance_report(MODE_STRATIFY, inputs, list(new.values()), seed=int(seed),
                            fractions=dict(fractions), notes=notes)
    return SplitResult(splits=list(new.values()), report=report)


def same_size_fractions(splits: list[Split]) -> dict[str, float]:
    """Each split's current share of all images (exact, summing to 1): the sizes a re-split keeps."""
    total = sum(len(s) for s in splits)
    if total == 0:
        raise DatasetError("the splits hold no images.", fix="pass split files with rows.")
    shares = {s.name: len(s) / total for s in splits if len(s)}
    first = next(iter(shares))
    shares[first] = 1.0 - sum(v for k, v in shares.items() if k != first)
    return shares


def resplit_same_sizes(splits: list[Split], seed: int = 0) -> SplitResult:
    """Pool the splits and deal their patients out again, stratified: same split names, about the same sizes,
    no patient in two splits (most images change split; the way out when a repair would drain a split)."""
    return stratify(list(splits), same_size_fractions(splits), seed)


def fractions_text(fractions: Mapping[str, float]) -> str:
    """'train=0.56,valid=0.12' (3 decimals, the last share absorbing rounding) for --fractions."""
    names = list(fractions)
    rounded = {n: round(fractions[n], 3) for n in names}
    rounded[names[0]] = round(1 - sum(rounded[n] for n in names[1:]), 3)
    return ",".join(f"{n}={rounded[n]:g}" for n in names)


def _priority_ranks(names: list[str], priority: list[str] | None) -> np.ndarray:
    order = list(priority or [])
    unknown = [p for p in order if p not in names]
    if unknown:
        raise DatasetError(f"priority names split '{unknown[0]}', which is not one of {', '.join(names)}.",
                           fix="list split names given with --split.")
    if len(set(order)) != len(order):
        raise DatasetError("a split is named twice in the priority order.", fix="name each split once.")
    order += [n for n in names if n not in order]
    return np.array([order.index(n) for n in names], dtype=np.int64)


def repair_leakage(splits: list[Split], priority: list[str] | None = None) -> RepairResult:
    """Move every patient found in several splits into the split holding most of their images.

    That is the fewest image moves that leaves no patient in two splits; ties go to the split that
    comes first in `priority` (default: the order given, so e.g. train keeps them).
    """
    if len(splits) < 2:
        raise DatasetError(f"{len(splits)} split(s) given; repairing leakage needs at least two.",
                           fix="pass every split: --split train=... --split valid=... --split test=...")
    names = check_split_names([s.name for s in splits])
    ranks = _priority_ranks(names, priority)
    n_splits = len(splits)
    split_of_row = np.concatenate([np.full(len(s), j) for j, s in enumerate(splits)])
    patients = np.concatenate([s.patients for s in splits])
    ids, inverse = np.unique(patients, return_inverse=True)
    per_split = np.zeros((ids.size, n_splits), dtype=np.int64)
    np.add.at(per_split, (inverse, split_of_row), 1)
    leaky = (per_split > 0).sum(axis=1) > 1
    # Largest count wins; among equal counts, the lowest priority rank.
    score = per_split * (n_splits + 1) + (n_splits - ranks)[None, :]
    target = np.where(leaky, score.argmax(axis=1), -1)
    row_target = target[inverse]
    new_split = np.where(row_target >= 0, row_target, split_of_row)
    moved = new_split != split_of_row

    offsets = np.concatenate([[0], np.cumsum([len(s) for s in splits])])
    notes: list[str] = []
    repaired = []
    for j, name in enumerate(names):
        parts = []
        for i, source in enumerate(splits):  # the split's own rows first, then rows moved in
            rows = np.flatnonzero(new_split[offsets[i]:offsets[i + 1]] == j)
            parts.append((source, rows))
        parts.sort(key=lambda part: part[0] is not splits[j])
        repaired.append(_concat(name, parts, notes))

    moves = []
    for a in range(n_splits):
        for b in range(n_splits):
            mask = moved & (split_of_row == a) & (new_split == b)
            if mask.any():
                moves.append(Move(source=names[a], target=names[b], patients=int(np.unique(patients[mask]).size),
                                  images=int(mask.sum())))
    moved_per_patient = per_split.sum(axis=1) - per_split[np.arange(ids.size), np.maximum(target, 0)]
    assignment = pd.DataFrame({PATIENT: ids[leaky], "split": [names[t] for t in target[leaky]],
                               "moved": moved_per_patient[leaky]})
    moved_images = int(moved.sum())
    moved_patients = int((assignment["moved"] > 0).sum())
    report = balance_report(MODE_REPAIR, list(splits), repaired, priority=[names[i] for i in np.argsort(ranks)],
                            moves=moves, moved_images=moved_images, moved_patients=moved_patients, notes=notes)
    for old, new in zip(report.before, report.after):
        if abs(new.share - old.share) > 0.05:
            report.notes.append(f"split '{new.name}' went from {old.share:.1%} to {new.share:.1%} of the images "
                                "(repair moves as few images as possible, not towards target sizes); to get "
                                "target sizes back, re-split with --input and --fractions.")
    for split in repaired:
        if len(split) == 0:
            report.notes.append(f"split '{split.name}' is empty after repair: all its patients had more images "
                                "elsewhere, so no file is written for it; re-split with --input and --fractions "
                                "instead.")
    drained = report.drained()
    if drained:
        report.warnings.append(
            "the fewest-moves repair drains " + ", ".join(f"'{n}' ({b} -> {a} images)" for n, b, a in drained)
            + ": each shared patient went to the split holding most of their images. To keep every split's "
            "name and size with no patient in two splits, " + CLI_RESPLIT_SIZES.format(
                fractions=fractions_text(same_size_fractions(list(splits)))) + ".")
    shared = _shared_images(repaired)
    if shared:
        report.notes.append(f"{shared} image name(s) are still in more than one split under different "
                            "patient ids; check the PatientId column.")
    return RepairResult(splits=repaired, report=report, moves=moves, moved_images=moved_images,
                        moved_patients=moved_patients, assignment=assignment)


def _shared_images(splits: list[Split]) -> int:
    names = pd.concat([s.frame[IMAGE].astype(str).drop_duplicates() for s in splits], ignore_index=True)
    return int(names.duplicated().sum())


# ---------------------------------------------------------------------------------------------
# Writing


def output_name(split: Split) -> str:
    """`<name>.txt` for list-file splits, `<name>.csv` otherwise."""
    check_split_names([split.name])
    return f"{split.name}.txt" if split.format == FORMAT_LIST else f"{split.name}.csv"


def _list_note(result: SplitResult) -> None:
    tables = sorted({s.source.rpartition("@")[0] for s in result.splits if s.format == FORMAT_LIST})
    for table in tables:
        note = f"list files name images of the label table {table}; load one as NAME={table}@NAME.txt."
        if note not in result.report.notes:
            result.report.notes.append(note)


def write_outputs(result: SplitResult, out_dir: str | Path, *, protect: Iterable[str | Path] = ()) -> list[Path]:
    """Write each split as `<name>.csv`/`.txt` in its input's format, plus split_report.json and .md,
    inside `out_dir` only; refuses to overwrite any path in `protect` (the input files). A split left
    empty (by a repair) gets no file: a header-only file could not be loaded back as a split."""
    out = Path(out_dir)
    kept = [s for s in result.splits if len(s)]
    if out.exists() and not out.is_dir():
        raise DatasetError("output path is a file, not a folder.", file=str(out), fix="give a folder with --out.")
    names = [output_name(s) for s in kept] + [REPORT_JSON, REPORT_MD]
    root = out.resolve()
    targets = [(root / n).resolve() for n in names]
    for path in targets:
        if path.parent != root:
            raise DatasetError(f"output '{path.name}' would land outside the output folder.", file=str(out),
                               fix="use plain split names.")
    refuse_overwriting_inputs(targets, protect)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    _list_note(result)
    result.report.files = names
    for split, path in zip(kept, targets):
        with writing(path):
            write_split(split, split.frame, path)
    with writing(targets[-2]):
        atomic_write_text(targets[-2], result.report.to_json() + "\n")
    with writing(targets[-1]):
        atomic_write_text(targets[-1], result.report.render("markdown"))
    return targets


def outputs_zip(result: SplitResult) -> bytes:
    """The same files as write_outputs, zipped in memory (for a download button)."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="cxr-split-") as tmp:
        paths = write_outputs(result, tmp)
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in paths:
                archive.write(path, arcname=path.name)
    return buffer.getvalue()
