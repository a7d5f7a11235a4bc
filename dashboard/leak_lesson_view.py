"""Results page section: the demo's leakage lesson, each sidebar model's valid and valid_leaky scores side by side."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from cxrcore.evaluate.leak_lesson import CLEAN, LEAKY, LeakComparison, compare_clean_and_leaky, has_leak_lesson
from dashboard.loaders import ActiveDataset
from dashboard.models import active_models, predictions_for
from dashboard.widgets import teaching_note, user_errors


def _aurocs(name: str, entry, split, dataset: ActiveDataset) -> dict[str, float]:
    from dashboard.results_view import evaluate_source

    evaluated = evaluate_source(name, predictions_for(entry, split, dataset), split, 0)
    return {label: m.auroc for label, m in evaluated.result.classes.items()}


def comparisons(dataset: ActiveDataset) -> dict[str, LeakComparison]:
    """Each active model's clean/leaky comparison (models that fail show their error and are left out)."""
    out: dict[str, LeakComparison] = {}
    for entry in active_models():
        with user_errors(f"model '{entry.name}' on {CLEAN} and {LEAKY}"):
            found = compare_clean_and_leaky(_aurocs(entry.name, entry, dataset.splits[CLEAN], dataset),
                                            _aurocs(entry.name, entry, dataset.splits[LEAKY], dataset))
            if found is not None:
                out[entry.name] = found
    return out


def is_demo_with_lesson(dataset: ActiveDataset | None) -> bool:
    """The generated demo set (its completion marker), with both splits of the lesson and its images."""
    from cxrcore.demo.generate import read_marker

    return (dataset is not None and dataset.entry is not None and dataset.image_root is not None
            and has_leak_lesson(dataset.splits) and read_marker(dataset.entry.root) is not None)


def render_leak_lesson(dataset: ActiveDataset | None) -> None:
    """Only for the demo set (valid and valid_leaky) and sidebar models that can predict it."""
    if not is_demo_with_lesson(dataset) or not active_models():
        return
    st.subheader(f"The leakage lesson: {CLEAN} beside {LEAKY}")
    found = comparisons(dataset)
    if not found:
        return
    table = pd.DataFrame([{"model": name, f"{CLEAN} (new patients)": c.clean,
                           f"{LEAKY} (training patients)": c.leaky, "gap": c.gap} for name, c in found.items()])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        column: st.column_config.NumberColumn(format="%.3f" if column != "gap" else "%+.3f")
        for column in table.columns if column != "model"})
    for name, comparison in found.items():
        box = st.warning if comparison.shown else st.info
        box(f"**{name}**: {comparison.message()}", icon=":material/school:")
    teaching_note("why a leaky split flatters",
                  f"{LEAKY} holds other images of patients in the training split. Their anatomy, devices and "
                  "chronic findings repeat from image to image, so a model that memorised them scores higher "
                  f"there than on {CLEAN}, whose patients it never saw. Mean AUROC over the findings both splits "
                  "can score.")
