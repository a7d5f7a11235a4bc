"""The 14 labels: one canonical order, aliases normalized, 'No Finding' recognized."""
from __future__ import annotations

import pytest

from cxrcore.data.labels import COURSE_LABEL_ORDER, LABELS, NO_FINDING, canonical_label, is_no_finding, label_index

NIH_ORDER = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
             "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")


def test_fourteen_labels_in_one_canonical_alphabetical_order():
    assert LABELS == NIH_ORDER
    assert len(set(LABELS)) == 14
    assert list(LABELS) == sorted(LABELS)
    assert isinstance(LABELS, tuple)  # immutable: nobody can reorder it in place


def test_course_order_is_a_permutation_of_the_same_labels_not_the_same_order():
    assert sorted(COURSE_LABEL_ORDER) == sorted(LABELS)
    assert COURSE_LABEL_ORDER != LABELS
    assert COURSE_LABEL_ORDER[0] == "Cardiomegaly" and COURSE_LABEL_ORDER[-1] == "Consolidation"


@pytest.mark.parametrize("label", LABELS)
def test_every_canonical_name_maps_to_itself(label):
    assert canonical_label(label) == label
    assert label_index(label) == LABELS.index(label)


@pytest.mark.parametrize("alias, expected", [
    ("Pleural Thickening", "Pleural_Thickening"),
    ("pleural_thickening", "Pleural_Thickening"),
    ("PLEURAL-THICKENING", "Pleural_Thickening"),
    ("  Pleural  Thickening ", "Pleural_Thickening"),
    ("Infiltrate", "Infiltration"),
    ("infiltrates", "Infiltration"),
    ("INFILTRATION", "Infiltration"),
    ("Effusions", "Effusion"),
    ("Pleural Effusion", "Effusion"),
    ("Nodules", "Nodule"),
    ("Masses", "Mass"),
    ("cardiomegaly", "Cardiomegaly"),
])
def test_aliases_are_normalized(alias, expected):
    assert canonical_label(alias) == expected
    assert label_index(alias) == LABELS.index(expected)


@pytest.mark.parametrize("name", ["Pneumonitis", "", "No Finding", "Finding", "COVID-19", "Lung Opacity", 7])
def test_unknown_names_are_none_and_label_index_raises(name):
    assert canonical_label(name) is None
    with pytest.raises(KeyError):
        label_index(name)


def test_no_finding_is_recognized_in_any_spelling_but_is_not_a_label():
    assert NO_FINDING == "No Finding"
    for spelling in ("No Finding", "no finding", "NO_FINDING", "No-Finding", " no  finding "):
        assert is_no_finding(spelling)
        assert canonical_label(spelling) is None
    for other in ("Finding", "No", "Normal", "Mass"):
        assert not is_no_finding(other)
