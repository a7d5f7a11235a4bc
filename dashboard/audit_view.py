"""Leakage audit page sections: choosing splits, the verdict, leaked patients, duplicates, shift, fixes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cxrcore.audit.audit import AuditReport, Leak, run_audit, shared_patient_images
from cxrcore.audit.report import format_p, render, verdict
from cxrcore.data.catalog import splits_from_files
from cxrcore.data.dataset import IMAGE, PATIENT, Split
from cxrcore.data.labels import LABELS
from dashboard.loaders import ActiveDataset, audit, preview, split_key
from dashboard.widgets import fitted_columns, show_warnings, teaching_note, user_errors

IMAGECHECK_KEY = "audit_image_check"
#: What a reported duplicate pair is, said under the check's result.
PAIR_MEANING = ("A duplicate pair is one radiograph saved twice: the same bytes, or the same image exported again "
                "(resized, lightly cropped, contrast-changed, re-encoded, rotated by a few degrees), confirmed by "
                "aligning the two images and comparing their fine detail; at most a retake of the same patient in "
                "the same position can share that detail. Different patients who merely look alike are not "
                "paired: a pair across splits means the same image, or the same patient, is in both.")


def choose_splits(dataset: ActiveDataset | None) -> tuple[list[Split], Path | None]:
    """Splits to audit: picked from the active dataset, or uploaded here (labels files or NIH table + lists)."""
    source = st.radio("Splits to audit", ["From the active dataset", "Upload split files"], horizontal=True,
                      key="audit_source", index=0 if dataset else 1)
    if source == "Upload split files":
        files = st.file_uploader("Two or more split files (course CSVs), or an NIH Data_Entry table with "
                                 "list files (train_val_list.txt, test_list.txt)", type=["csv", "gz", "txt"],
                                 accept_multiple_files=True, key="audit_uploads")
        if not files:
            return [], None
        with user_errors("reading the uploads"):
            return _uploaded(tuple((f.name, f.getvalue()) for f in files)), None
        return [], None
    if dataset is None:
        st.info("No dataset found; upload split files instead.")
        return [], None
    names = list(dataset.splits)
    default = [n for n in names if "leak" not in n.lower()] or names
    key = f"audit_splits_{dataset.name}"
    chosen = st.multiselect("Splits", names, default=default, key=key)
    point_to_leaky(names, chosen, key)
    return [dataset.splits[n] for n in chosen], dataset.image_root


def point_to_leaky(names: list[str], chosen: list[str], key: str) -> None:
    """Name the splits built to leak (e.g. the demo's valid_leaky) that are left out, with a button adding them."""
    leaky = [n for n in names if "leak" in n.lower() and n not in chosen]
    if not leaky:
        return
    listed = ", ".join(f"**{n}**" for n in leaky)
    st.info(f"Left out of this audit: {listed}, a split built to leak (other images of patients in the "
            "training split). Add it to see the audit catch the leak, and the fix below handle it.",
            icon=":material/visibility:")

    def add() -> None:
        st.session_state[key] = [*st.session_state.get(key, chosen), *leaky]

    st.button(f"Audit with {', '.join(leaky)}", key=f"{key}_add_leaky", on_click=add)


@st.cache_data(show_spinner="Reading the uploaded files...", max_entries=16)
def _uploaded(files: tuple[tuple[str, bytes], ...]) -> list[Split]:
    return splits_from_files(list(files))


def audit_report(splits: list[Split]) -> AuditReport:
    return audit(splits, split_key(splits))


def render_verdict(report: AuditReport) -> None:
    text = verdict(report)
    if report.leak_free:
        st.success(text, icon=":material/verified:")
    else:
        st.error(text, icon=":material/warning:")
    teaching_note("why leakage matters",
                  "Images of one patient look alike (same anatomy, same devices, often the same finding). "
                  "If a patient is in both training and validation, the model can recognise the patient "
                  "instead of the disease, and the validation AUROC overstates how it will do on new "
                  "patients. Split by patient, never by image.")


def render_pairs(report: AuditReport) -> None:
    rows = [{"split a": leak.a, "split b": leak.b, "shared patients": leak.patients,
             "shared images": leak.images, "images of shared patients in a": leak.images_a,
             "images of shared patients in b": leak.images_b,
             "example patient ids": ", ".join(map(str, leak.patient_ids[:10]))} for leak in report.leakage]
    pairs = pd.DataFrame(rows)
    st.dataframe(pairs, hide_index=True, width="stretch", column_config=fitted_columns(pairs))


def render_leaked_patients(splits: list[Split], report: AuditReport, image_root: Path | None) -> None:
    """The shared patients with their images side by side across the two splits."""
    leaks = report.leaking_pairs
    if not leaks:
        return
    st.subheader("Leaked patients")
    labels = [f"{leak.a} / {leak.b} ({leak.patients} patients)" for leak in leaks]
    leak: Leak = leaks[st.selectbox("Pair", range(len(leaks)), format_func=labels.__getitem__,
                                    key="audit_leak_pair")]
    patient = st.selectbox("Patient", leak.patient_ids, key="audit_leak_patient")
    rows = shared_patient_images(splits, leak, limit=len(leak.patient_ids))
    rows = rows[rows[PATIENT] == patient]
    rows = rows.assign(findings=rows[list(LABELS)].apply(
        lambda r: ", ".join(l for l in LABELS if r[l]) or "No Finding", axis=1))
    columns = st.columns(2)
    for column, split_name in zip(columns, (leak.a, leak.b)):
        part = rows[rows["split"] == split_name]
        column.markdown(f"**{split_name}**: {len(part)} image(s)")
        if image_root is None:
            column.dataframe(part[[IMAGE, "findings"]], hide_index=True, width="stretch")
            continue
        grid = column.columns(3)
        for i, row in enumerate(part.head(9).itertuples()):
            thumb = preview(image_root, row.Image)
            cell = grid[i % 3]
            if thumb is None:
                cell.caption(f"{row.Image} (missing)")
            else:
                cell.image(thumb, caption=f"{row.Image}: {row.findings}", width="stretch")


def render_image_check(splits: list[Split], image_root: Path | None) -> None:
    """Optional file check with a progress bar: missing, unreadable, exact and near-duplicate images."""
    if image_root is None:
        return
    st.subheader("Image files and duplicates")
    key = (split_key(splits), str(image_root))
    threshold = st.slider("Hash shortlist width (bits of the 64-bit perceptual hash)", 0, 10, 4,
                          key="audit_near_threshold",
                          help="Pairs whose hashes differ in at most this many bits are compared, as are each "
                               "image's nearest look-alikes in the other splits. A pair is reported only when "
                               "the aligned images share their fine detail, so a wider shortlist finds more "
                               "copies without adding false pairs; it takes longer.")
    stored = st.session_state.get(IMAGECHECK_KEY)
    clicked = st.button(f"Check {sum(len(s) for s in splits):,} image files for duplicates", key="audit_hash")
    if clicked:
        bar = st.progress(0.0, text="Hashing images...")
        report = run_audit(splits, image_root=str(image_root), near_threshold=threshold,
                           progress=lambda done, total, stage: bar.progress(done / total, text=f"{stage}: "
                                                                             f"{done}/{total}"))
        bar.empty()
        stored = (key, threshold, report.images)
        st.session_state[IMAGECHECK_KEY] = stored
    if not stored or stored[0] != key:
        st.caption("Exact duplicates (same bytes) and near-duplicates (re-exported copies) across splits leak "
                   "even when their patient ids differ.")
        return
    check = stored[2]
    missing = sum(len(v) for v in check.missing.values())
    unreadable = sum(len(v) for v in check.unreadable.values())
    cross = check.cross_split_duplicates()
    (st.error if cross or missing or unreadable else st.success)(
        f"{check.checked:,} files checked: {missing} missing, {unreadable} unreadable, {len(cross)} duplicate "
        f"pair(s) across splits.")
    st.caption(PAIR_MEANING)
    for split_name, names in check.missing.items():
        st.caption(f"Missing in {split_name}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    for split_name, items in check.unreadable.items():
        st.caption(f"Unreadable in {split_name}: " + ", ".join(f"{n} ({p})" for n, p in items[:10]))
    for pair in cross[:12]:
        a, b = st.columns(2)
        for column, split_name, name in ((a, pair.split_a, pair.image_a), (b, pair.split_b, pair.image_b)):
            thumb = preview(check.root, name)
            if thumb is not None:
                kind = "byte-identical copy" if pair.exact else f"re-exported copy, detail correlation {pair.similarity:.2f}"
                column.image(thumb, caption=f"{split_name}: {name} ({kind})", width=220)


#: p-values as `format_p` writes them, said in the column's help.
_P_HELP = "Four decimals; <0.0001 below that (the same format on every page)."


def render_shift(report: AuditReport) -> None:
    if len(report.summaries) < 2:
        return
    st.subheader("Prevalence shift between splits")
    shift = report.shift.copy()
    shift["p_value"] = shift["p_value"].map(format_p)
    st.dataframe(shift, hide_index=True, width="stretch", column_config=fitted_columns(shift, {
        "prevalence_a": st.column_config.NumberColumn(format="%.4f"),
        "prevalence_b": st.column_config.NumberColumn(format="%.4f"),
        "difference": st.column_config.NumberColumn(format="%+.4f"),
        "p_value": st.column_config.TextColumn("p-value", help=_P_HELP)}))
    if not report.metadata_shift.empty:
        st.markdown("**Age, sex and view position between splits**")
        meta = report.metadata_shift.copy()
        meta["p_value"] = meta["p_value"].map(format_p)
        meta["level"] = meta["level"].fillna("") if "level" in meta else ""  # age has no "most common value"
        st.dataframe(meta, hide_index=True, width="stretch", column_config=fitted_columns(meta, {
            "summary_a": st.column_config.NumberColumn(
                "in a", format="%.3f", help="Age: the mean age in split a. Sex and view: the share of split a's "
                                           "images with the most common value."),
            "summary_b": st.column_config.NumberColumn("in b", format="%.3f", help="The same for split b."),
            "statistic": st.column_config.NumberColumn(format="%.3f"),
            "p_value": st.column_config.TextColumn("p-value", help=_P_HELP),
            "level": st.column_config.TextColumn(
                "most common value", width=140,
                help="Sex and view: the value whose share is compared (e.g. M, PA).")}))
        st.caption("Age: mean age and a Kolmogorov-Smirnov test of the two age distributions. Sex and view "
                   "position: the share of the most common value and a chi-square test over all values.")
    teaching_note("reading p-values here",
                  "A two-proportion test per class. Images of one patient are not independent, so with many "
                  "images per patient the p-values are optimistic: treat small ones as a flag to look at "
                  "the split, not as proof.")


def render_downloads(report: AuditReport) -> None:
    st.download_button("Audit report (Markdown)", render(report, "markdown"), file_name="audit_report.md",
                       mime="text/markdown", key="dl_audit_md")
    st.download_button("Audit report (JSON)", render(report, "json"), file_name="audit_report.json",
                       mime="application/json", key="dl_audit_json")


def render_all(splits: list[Split], image_root: Path | None) -> None:
    """Every section of the audit for the chosen splits."""
    if len(splits) < 2:
        st.info("Choose two or more splits to compare.")
        return
    report = audit_report(splits)
    render_verdict(report)
    show_warnings(report.warnings)
    render_pairs(report)
    render_leaked_patients(splits, report, image_root)
    render_image_check(splits, image_root)
    render_shift(report)
    from dashboard.fix_view import render_fix

    render_fix(splits, report)
    render_downloads(report)
