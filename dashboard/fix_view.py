"""'Fix the split': repair a leaky split with the fewest moves, or re-split stratified by patient."""
from __future__ import annotations

import streamlit as st

from cxrcore.audit.audit import AuditReport
from cxrcore.audit.splitting import (DRAIN_KEEP, CLI_RESPLIT_SIZES, SplitResult, outputs_zip, repair_leakage,
                               resplit_same_sizes, stratify)
from cxrcore.data.catalog import split_role
from cxrcore.data.dataset import Split
from dashboard.loaders import split_key
from dashboard.widgets import teaching_note, user_errors


@st.cache_data(show_spinner="Repairing the split...", max_entries=8)
def _repair(_splits: list[Split], key: tuple, priority: tuple[str, ...]) -> SplitResult:
    return repair_leakage(_splits, list(priority))


@st.cache_data(show_spinner="Re-splitting by patient, keeping the sizes...", max_entries=8)
def _resplit_same_sizes(_splits: list[Split], key: tuple) -> SplitResult:
    return resplit_same_sizes(_splits, seed=0)


@st.cache_data(show_spinner="Re-splitting by patient...", max_entries=8)
def _stratify(_splits: list[Split], key: tuple, fractions: tuple[tuple[str, float], ...], seed: int) -> SplitResult:
    return stratify(_splits, dict(fractions), seed)


def _default_fractions(splits: list[Split]) -> dict[str, float]:
    """Current shares of the splits, rounded, as the starting point for a re-split."""
    total = sum(len(s) for s in splits)
    shares = {s.name: round(len(s) / total, 2) for s in splits}
    first = next(iter(shares))
    shares[first] = round(1 - sum(v for k, v in shares.items() if k != first), 2)
    return shares


#: The core's notes name the CLI's re-split flags; on this page the re-split is the second tab.
CLI_RESPLIT = "re-split with --input and --fractions"
PAGE_RESPLIT = "re-split in the 'Re-split stratified by patient' tab"


PAGE_RESPLIT_SIZES = "use 'Re-split by patient, keeping the sizes' on this page"


def page_note(note: str) -> str:
    """A report note in this page's words (its tab, not the CLI's flags)."""
    head = CLI_RESPLIT_SIZES.partition("{fractions}")[0]
    if head in note:  # the CLI's command (it ends the note, fractions included) becomes this page's button
        note = note[:note.index(head)] + PAGE_RESPLIT_SIZES + "."
    return note.replace(CLI_RESPLIT, PAGE_RESPLIT)


def _show_result(result: SplitResult, file_stem: str) -> None:
    report = result.report
    good = report.leaked_after[0] == 0 and not report.drained()
    (st.success if good else st.warning)(report.verdict())
    for note in [*report.notes, *report.warnings]:
        st.caption(page_note(note))
    with st.expander("Before/after balance report"):
        st.markdown(report.render("markdown", heading_level=4))
    st.download_button("Download the fixed split files (zip)", outputs_zip(result), file_name=f"{file_stem}.zip",
                       mime="application/zip", key=f"dl_{file_stem}", type="primary")


def render_drained(splits: list[Split], key: tuple, repaired: SplitResult) -> None:
    """The repair would drain a split: say so, offer the re-split that keeps sizes first, the repair second."""
    drained = repaired.report.drained()
    lost = "; ".join(f"**{name}** would keep {after} of its {before} images" for name, before, after in drained)
    st.warning(f"The fewest-moves repair would drain a split: {lost}. All its patients have more images in "
               "another split, so they would all move there. Two ways to fix the leak:",
               icon=":material/warning:")
    sizes = ", ".join(f"{s.name} {len(s):,}" for s in splits)
    st.markdown(
        "1. **Re-split by patient, keeping the sizes** (recommended): pools every image and deals whole patients "
        f"out again, stratified by class, so each split keeps its name and about its size ({sizes} images) "
        "and no patient is in two splits. Most images change split: results of models trained on the old "
        "split are no longer comparable.\n"
        "2. **Repair with the fewest moves**: each shared patient moves to the split that holds most of their "
        f"images. Few images move, but a split that loses more than {DRAIN_KEEP:.0%} of its images is "
        "no longer the split you had.")
    st.markdown("##### 1. Re-split by patient, keeping the sizes")
    _show_result(_resplit_same_sizes(splits, key), "resplit_same_sizes")
    with st.expander("2. Repair with the fewest moves anyway"):
        _show_result(repaired, "repaired_split")


def render_fix(splits: list[Split], report: AuditReport) -> None:
    """Both ways to fix a split, with downloads; the files keep the input's format."""
    st.subheader("Fix the split")
    key = split_key(splits)
    repair_tab, stratify_tab = st.tabs(["Repair with the fewest moves", "Re-split stratified by patient"])
    with repair_tab:
        if report.leak_free:
            st.caption("Nothing to repair: no patient is in two of these splits.")
        else:
            names = [s.name for s in splits]
            default = sorted(names, key=lambda n: ("train", "valid", "test").index(split_role(n))
                             if split_role(n) else 3)
            priority = st.multiselect("On a tie, keep the patient in (first wins)", names, default=default,
                                      key="fix_priority")
            st.caption("Each leaking patient moves to the split that already holds most of their images, "
                       "so as few images as possible change split.")
            with user_errors("repairing the split"):
                repaired = _repair(splits, key, tuple(priority or default))
                if repaired.report.drained():
                    render_drained(splits, key, repaired)
                else:
                    _show_result(repaired, "repaired_split")
    with stratify_tab:
        fractions = _default_fractions(splits)
        # Widget keys carry the chosen split names, so a new selection starts from its own shares.
        tag = "_".join(fractions)
        columns = st.columns(len(fractions) + 1)
        chosen = {name: columns[i].number_input(f"{name} fraction", 0.0, 1.0, value, 0.05,
                                                key=f"fix_fraction_{tag}_{name}")
                  for i, (name, value) in enumerate(fractions.items())}
        seed = columns[-1].number_input("Seed", 0, 2**31 - 1, 0, key="fix_seed")
        teaching_note("stratified by patient",
                      "All images of a patient go to one split, and patients are assigned rarest class "
                      "first so each class keeps about the same prevalence in every split.")
        if st.button("Make the new split", key="fix_stratify"):
            st.session_state["fix_stratify_args"] = (key, tuple(chosen.items()), int(seed))
        args = st.session_state.get("fix_stratify_args")
        if args and args[0] == key:
            with user_errors("re-splitting"):
                _show_result(_stratify(splits, key, args[1], args[2]), "stratified_split")
