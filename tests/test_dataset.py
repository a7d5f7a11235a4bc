"""Loading splits: the three layouts detected automatically, one normalized table out, and every kind
of bad input refused with a one-line domain error that names file, rows, column, problem and fix."""
from __future__ import annotations

import gzip
import zlib

import numpy as np
import pandas as pd
import pytest

from cxrcore.data.dataset import (FORMAT_LIST, FORMAT_NIH, FORMAT_ONEHOT, load_split, load_table,
                             neutralize_formulas, parse_split_spec, read_list_file, write_split)
from cxrcore.data.labels import LABELS
from cxrcore.errors import CxrError, DatasetError, DataWarning
from tests.csv_corpus import (million_row_csv, nih_frame, onehot_frame, random_labels, to_csv_bytes, write_csv,
                              write_list)


def _error(source, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_split(source, **kwargs)
    err = info.value
    assert "\n" not in str(err), "an error is one readable line"
    return err


def _assert_normalized(split, n: int) -> None:
    """Image, PatientId, the 14 labels as uint8 0/1 in canonical order, then metadata."""
    frame = split.frame
    assert list(frame.columns[:16]) == ["Image", "PatientId", *LABELS]
    assert len(frame) == n == len(split)
    for label in LABELS:
        assert frame[label].dtype == np.uint8
    assert frame["PatientId"].dtype == np.int64
    assert split.labels.shape == (n, 14) and split.labels.dtype == np.uint8
    assert set(np.unique(split.labels)) <= {0, 1}


# ---------------------------------------------------------------------------------------------
# a) the course's one-hot CSV


def test_onehot_csv_loads_into_the_normalized_table(tmp_path):
    y = random_labels(8, seed=3)
    frame = onehot_frame([8270, 12, 5, 40], labels=y, extra={"Notes": "ok", "Site": "A"})
    path = write_csv(frame, tmp_path / "train.csv")
    split = load_split(path)
    _assert_normalized(split, 8)
    assert split.format == FORMAT_ONEHOT
    assert split.name == "train" and split.source == str(path)
    np.testing.assert_array_equal(split.labels, y)
    assert split.frame["Image"].tolist() == frame["Image"].tolist()
    assert split.frame["PatientId"].tolist() == frame["PatientId"].tolist()
    assert list(split.frame.columns[16:]) == ["Notes", "Site"]  # extra columns kept, after the labels
    assert split.frame["Site"].tolist() == ["A"] * 8
    assert split.warnings == []


def test_label_columns_are_read_by_name_in_any_order(tmp_path):
    y = random_labels(10, seed=4)
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(LABELS))
    assert shuffled != list(LABELS)
    a = load_split(to_csv_bytes(onehot_frame(range(1, 6), labels=y)), name="a.csv")
    b = load_split(to_csv_bytes(onehot_frame(range(1, 6), labels=y, label_order=shuffled)), name="b.csv")
    # Columns before the image column, patient id last, labels reversed: still read by name.
    frame = onehot_frame(range(1, 6), labels=y, label_order=list(reversed(LABELS)))
    c = load_split(to_csv_bytes(frame[["PatientId", *reversed(LABELS), "Image"]]), name="c.csv")
    for split in (a, b, c):
        np.testing.assert_array_equal(split.labels, y)
        assert list(split.frame.columns[2:16]) == list(LABELS)


def test_aliases_in_the_header_are_normalized():
    y = random_labels(6, seed=5)
    order = [{"Pleural_Thickening": "Pleural Thickening", "Infiltration": "Infiltrate"}.get(l, l) for l in LABELS]
    split = load_split(to_csv_bytes(onehot_frame([1, 2, 3], labels=y, label_order=order)), name="x.csv")
    assert "Pleural_Thickening" in split.frame and "Infiltration" in split.frame
    assert "Pleural Thickening" not in split.frame and "Infiltrate" not in split.frame
    np.testing.assert_array_equal(split.labels, y)


def test_patient_id_is_inferred_from_nih_file_names_when_the_column_is_absent():
    frame = onehot_frame([8270, 3], per_patient=1, patient_column=False)
    frame.loc[0, "Image"] = "00008270_015.png"
    split = load_split(to_csv_bytes(frame), name="x.csv")
    assert split.frame["PatientId"].tolist() == [8270, 3]
    assert split.warnings == []


def test_without_patient_column_non_nih_names_are_an_error_naming_the_rows():
    frame = onehot_frame([1, 2, 3], per_patient=1, patient_column=False)
    frame.loc[1, "Image"] = "chest_b.png"
    frame.loc[2, "Image"] = "IM-0001.jpg"
    err = _error(to_csv_bytes(frame), name="nopid.csv")
    assert err.file == "nopid.csv" and err.rows == [3, 4]
    assert "PatientId" in err.fix and "chest_b.png" in str(err)


def test_path_bytes_and_gzip_give_the_same_table(tmp_path):
    frame = onehot_frame(range(1, 20), seed=9)
    plain = load_split(write_csv(frame, tmp_path / "t.csv"))
    as_str = load_split(str(tmp_path / "t.csv"))
    as_bytes = load_split(to_csv_bytes(frame), name="t.csv")
    zipped = load_split(write_csv(frame, tmp_path / "t.csv.gz", gz=True))
    for other in (as_str, as_bytes, zipped):
        pd.testing.assert_frame_equal(other.frame, plain.frame)
    assert zipped.name == "t"


# ---------------------------------------------------------------------------------------------
# b) the NIH label table


def test_nih_table_pipe_separated_findings_patient_and_metadata(tmp_path):
    y = random_labels(12, seed=6)
    y[0] = 0  # a 'No Finding' row
    y[1] = 0
    y[1, [LABELS.index("Infiltration"), LABELS.index("Pleural_Thickening"), LABELS.index("Mass")]] = 1
    frame = nih_frame(range(100, 106), labels=y)
    frame.loc[1, "Finding Labels"] = "Infiltrate|Pleural Thickening| Mass"  # aliases and spaces
    split = load_split(write_csv(frame, tmp_path / "Data_Entry_2017_v2020.csv.gz", gz=True))
    _assert_normalized(split, 12)
    assert split.format == FORMAT_NIH
    np.testing.assert_array_equal(split.labels, y)
    assert split.frame.loc[0, list(LABELS)].sum() == 0
    assert split.frame["PatientId"].tolist() == frame["Patient ID"].tolist()
    assert split.frame["Age"].tolist() == frame["Patient Age"].astype(float).tolist()
    assert split.frame["Sex"].tolist() == frame["Patient Gender"].tolist()
    assert split.frame["View"].tolist() == frame["View Position"].tolist()
    assert split.frame["FollowUp"].tolist() == frame["Follow-up #"].tolist()
    assert split.name == "Data_Entry_2017_v2020"


def test_kaggle_sample_labels_with_ages_like_058Y(tmp_path):
    frame = nih_frame([1, 2, 3], kaggle_ages=True)
    frame.loc[0, "Patient Age"] = "058Y"
    frame.loc[1, "Patient Age"] = "006M"
    frame.loc[2, "Patient Age"] = "073D"
    split = load_split(write_csv(frame, tmp_path / "sample_labels.csv"))
    assert split.format == FORMAT_NIH
    ages = split.frame["Age"].to_numpy()
    assert ages[0] == 58 and ages[1] == pytest.approx(0.5) and ages[2] == pytest.approx(0.2)
    assert ages[3:].tolist() == [float(a[:3]) for a in frame["Patient Age"][3:]]


def test_the_layout_is_detected_from_the_header_not_the_file_name(tmp_path):
    nih = load_split(write_csv(nih_frame([1, 2]), tmp_path / "labels.csv"))
    course = load_split(write_csv(onehot_frame([1, 2]), tmp_path / "Data_Entry_2017.csv"))
    assert nih.format == FORMAT_NIH and course.format == FORMAT_ONEHOT


def test_unknown_finding_is_an_error_with_rows_and_column():
    frame = nih_frame([1, 2, 3])
    frame.loc[[1, 4], "Finding Labels"] = "Mass|Pneumonitis"
    err = _error(to_csv_bytes(frame), name="nih.csv")
    assert err.rows == [3, 6] and err.column == "Finding Labels" and "Pneumonitis" in err.problem


def test_nih_patient_id_disagreeing_with_the_file_name_is_a_warning(tmp_path):
    frame = nih_frame([1, 2, 3])
    frame.loc[2, "Patient ID"] = 99
    split = load_split(to_csv_bytes(frame), name="nih.csv")
    assert split.frame.loc[2, "PatientId"] == 99
    assert len(split.warnings) == 1 and split.warnings[0].rows == (4,)


# ---------------------------------------------------------------------------------------------
# c) a list file joined to a label table


def test_list_file_joined_to_a_label_table_keeps_the_list_order(tmp_path):
    table_frame = nih_frame(range(1, 11), seed=2)
    table_path = write_csv(table_frame, tmp_path / "Data_Entry_2017.csv.gz", gz=True)
    names = table_frame["Image Index"].tolist()
    picked = [names[7], names[0], names[12], names[3]]
    list_path = write_list(tmp_path / "test_list.txt", picked)
    split = load_split(list_path, label_table=table_path, split_name="test")
    _assert_normalized(split, 4)
    assert split.format == FORMAT_LIST and split.name == "test"
    assert split.frame["Image"].tolist() == picked
    table = load_table(table_path)
    expected = table.frame.set_index("Image").loc[picked, list(LABELS)].to_numpy()
    np.testing.assert_array_equal(split.labels, expected)
    assert "Age" in split.frame and "View" in split.frame  # metadata comes along
    # An already loaded table is reused as is.
    again = load_split(list_path, label_table=table, split_name="test")
    pd.testing.assert_frame_equal(again.frame, split.frame)


def test_list_file_with_bom_crlf_and_blank_lines(tmp_path):
    table = load_table(to_csv_bytes(nih_frame([1, 2])), name="t.csv")
    data = "\ufeff00000001_000.png\r\n\r\n00000002_001.png\r\n".encode("utf-8")
    split = load_split(data, name="l.txt", label_table=table)
    assert split.frame["Image"].tolist() == ["00000001_000.png", "00000002_001.png"]


def test_list_naming_images_missing_from_the_table_is_an_error(tmp_path):
    table = load_table(to_csv_bytes(nih_frame([1, 2])), name="Data_Entry_2017.csv")
    data = b"00000001_000.png\n00000777_000.png\n00000002_000.png\n00000778_001.png\n"
    err = _error(data, name="val_list.txt", label_table=table)
    assert err.file == "val_list.txt" and err.rows == [2, 4]
    assert "2 listed image(s)" in err.problem and "00000777_000.png" in err.problem
    assert "Data_Entry_2017.csv" in err.problem and err.fix


def test_list_file_errors_report_the_real_line_numbers():
    table = load_table(to_csv_bytes(nih_frame([1, 2])), name="t.csv")
    err = _error(b"00000001_000.png\n../00000002_000.png\n", name="l.txt", label_table=table)
    assert err.rows == [2] and ".." in err.problem
    err = _error(b"00000001_000.png\n\n00000002_000.png\n00000001_000.png\n", name="l.txt", label_table=table)
    assert err.rows == [1, 4] and "more than once" in err.problem
    err = _error(b"\n\n  \n", name="l.txt", label_table=table)
    assert "empty" in err.problem


def test_a_list_file_without_a_label_table_says_how_to_pair_them():
    err = _error(b"00000001_000.png\n00000002_000.png\n", name="train_val_list.txt")
    assert "NAME=TABLE@LIST" in err.fix and err.file == "train_val_list.txt"


def test_read_list_file_returns_names_in_order():
    assert read_list_file(b"b.png\n\na.png\n", name="l.txt") == ["b.png", "a.png"]


@pytest.mark.parametrize("spec, expected", [
    ("train=train.csv", ("train", "train.csv", None)),
    ("test=Data_Entry_2017_v2020.csv.gz@test_list.txt", ("test", "Data_Entry_2017_v2020.csv.gz", "test_list.txt")),
    ("val.csv", ("val", "val.csv", None)),
    (" a =dir@x/t.csv@l.txt", ("a", "dir@x/t.csv", "l.txt")),
])
def test_parse_split_spec(spec, expected):
    assert parse_split_spec(spec) == expected


@pytest.mark.parametrize("spec", ["=train.csv", "train=", " =x.csv"])
def test_parse_split_spec_refuses_incomplete_specs(spec):
    with pytest.raises(DatasetError, match="NAME=FILE"):
        parse_split_spec(spec)


# ---------------------------------------------------------------------------------------------
# Bad input: each names file, rows, column, problem and fix


def test_missing_label_column_suggests_the_close_match():
    frame = onehot_frame([1, 2]).rename(columns={"Cardiomegaly": "Cardiomegally", "Mass": "Mas"})
    err = _error(to_csv_bytes(frame), name="typo.csv")
    assert err.file == "typo.csv"
    assert "'Cardiomegaly' (found 'Cardiomegally'?)" in err.problem and "'Mass' (found 'Mas'?)" in err.problem
    assert "rename" in err.fix


def test_missing_label_column_without_a_close_match():
    err = _error(to_csv_bytes(onehot_frame([1, 2]).drop(columns=["Hernia"])), name="x.csv")
    assert "missing label column 'Hernia'" in err.problem and "found" not in err.problem


def test_missing_image_column_suggests_the_close_match():
    err = _error(to_csv_bytes(onehot_frame([1, 2]).rename(columns={"Image": "Imagee"})), name="x.csv")
    assert "'Image' (found 'Imagee'?)" in err.problem


@pytest.mark.parametrize("rename, missing, found", [
    ({"Finding Labels": "Finding Label"}, "Finding Labels", "Finding Label"),
    ({"Image Index": "Image Indx"}, "Image Index", "Image Indx"),
])
def test_nih_table_with_a_misspelt_column_suggests_the_close_match(rename, missing, found):
    err = _error(to_csv_bytes(nih_frame([1, 2]).rename(columns=rename)), name="Data_Entry_2017.csv")
    assert f"'{missing}' (found '{found}'?)" in err.problem
    assert "Atelectasis" not in err.problem  # not reported as 14 missing one-hot columns


@pytest.mark.parametrize("value, problem, fix", [
    ("2", "has label '2', not 0 or 1", "0 for absent"),
    ("-1", "uncertainty labels (-1)", "U-Ones"),
    ("yes", "has label 'yes', not 0 or 1", "0 for absent"),
    ("", "empty/NaN labels", "fill every label"),
    ("NaN", "empty/NaN labels", "fill every label"),
    ("0.5", "has label '0.5', not 0 or 1", "0 for absent"),
])
def test_labels_other_than_0_or_1_are_refused(value, problem, fix):
    frame = onehot_frame([1, 2, 3]).astype({"Effusion": object})
    frame.loc[[2, 4], "Effusion"] = value
    err = _error(to_csv_bytes(frame), name="bad.csv")
    assert err.file == "bad.csv" and err.rows == [4, 6] and err.column == "Effusion"
    assert problem in err.problem and fix in err.fix
    assert str(err).startswith("bad.csv, lines 4, 6, column 'Effusion': ")


def test_labels_as_0_0_1_0_and_true_false_are_accepted():
    frame = onehot_frame([1, 2]).astype({"Mass": object, "Edema": object})
    frame["Mass"] = ["1.0", "0.0", "1.0", "0"]
    frame["Edema"] = ["True", "False", "true", "false"]
    split = load_split(to_csv_bytes(frame), name="x.csv")
    assert split.frame["Mass"].tolist() == [1, 0, 1, 0] and split.frame["Edema"].tolist() == [1, 0, 1, 0]


def test_rows_beyond_the_first_five_are_counted_not_listed():
    frame = onehot_frame(range(1, 11)).astype({"Mass": object})
    frame.loc[:, "Mass"] = "2"
    err = _error(to_csv_bytes(frame), name="x.csv")
    assert len(err.rows) == 20 and "lines 2, 3, 4, 5, 6 and 15 more" in str(err)


def test_duplicate_image_rows_are_refused_with_both_lines():
    frame = onehot_frame([1, 2, 3])
    frame.loc[4, "Image"] = frame.loc[1, "Image"]
    frame.loc[4, "PatientId"] = frame.loc[1, "PatientId"]
    err = _error(to_csv_bytes(frame), name="dup.csv")
    assert err.rows == [3, 6] and err.column == "Image" and frame.loc[1, "Image"] in err.problem
    assert "one row per image" in err.fix


def test_duplicate_rows_in_an_nih_table_are_refused():
    frame = nih_frame([1, 2])
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    err = _error(to_csv_bytes(frame), name="nih.csv")
    assert err.rows == [2, 6] and err.column == "Image Index"


@pytest.mark.parametrize("data, problem", [
    (b"", "empty"),
    (b"\n \n\n", "empty"),
    (gzip.compress(b"", mtime=0), "empty"),  # a fixed header: both xdist workers must collect the same test ids
], ids=["no-bytes", "blank-lines", "empty-gzip"])
def test_empty_file(data, problem):
    err = _error(data, name="empty.csv")
    assert problem in err.problem and err.file == "empty.csv" and err.fix


def test_header_only():
    header = onehot_frame([1]).iloc[:0]
    err = _error(to_csv_bytes(header), name="h.csv")
    assert "header but no rows" in err.problem


@pytest.mark.parametrize("sep, word", [(";", "semicolons"), ("\t", "tabs"), ("|", "pipes")])
def test_wrong_delimiter(sep, word):
    err = _error(to_csv_bytes(onehot_frame([1, 2]), sep=sep), name="excel.csv")
    assert word in err.problem and err.rows == [1] and "comma" in err.fix


def test_wrong_encoding_names_the_line():
    frame = onehot_frame([1, 2, 3], extra={"Notes": "ok"})
    frame.loc[3, "Notes"] = "épanchement"
    err = _error(to_csv_bytes(frame, encoding="latin-1"), name="latin.csv")
    assert "not UTF-8" in err.problem and err.rows == [5] and "UTF-8" in err.fix
    err = _error(to_csv_bytes(frame, encoding="utf-16"), name="u16.csv")
    assert "not UTF-8" in err.problem


def test_utf8_bom_is_fine():
    frame = onehot_frame([1, 2, 3], extra={"Notes": "épanchement"})
    split = load_split(b"\xef\xbb\xbf" + to_csv_bytes(frame), name="bom.csv")
    assert split.frame.columns[0] == "Image" and split.frame["Notes"].iloc[0] == "épanchement"


def test_binary_and_ragged_files_are_errors():
    err = _error(b"Image,Mass\x00\x00\x00\x01\x02", name="x.bin")
    assert "binary" in err.problem
    text = to_csv_bytes(onehot_frame([1, 2])).decode().splitlines()
    text[2] += ",extra,fields"
    err = _error(("\n".join(text) + "\n").encode(), name="ragged.csv")
    assert "not valid CSV" in err.problem and err.rows == [3]


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_gzip_is_a_domain_error(damage, tmp_path):
    data = bytearray(gzip.compress(to_csv_bytes(onehot_frame(range(1, 400)))))
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[20:28] = b"\xff" * 8  # breaks the deflate stream itself (zlib.error, not OSError)
        with pytest.raises(zlib.error):
            gzip.decompress(bytes(data))
    path = tmp_path / "t.csv.gz"
    path.write_bytes(bytes(data))
    err = _error(path)
    assert "gzip file is damaged" in err.problem and err.file == str(path)


def test_missing_file_and_folder():
    assert "not found" in _error("/no/such/labels.csv").problem


def test_folder_is_not_a_labels_file(tmp_path):
    assert "folder" in _error(tmp_path).problem


@pytest.mark.parametrize("name", ["../00000001_000.png", "sub/00000001_000.png", "sub\\00000001_000.png",
                                  "..", "/etc/passwd", "C:evil.png", "", "   "])
def test_image_names_with_path_separators_or_dotdot_are_refused(name):
    frame = onehot_frame([1, 2, 3])
    frame.loc[3, "Image"] = name
    err = _error(to_csv_bytes(frame), name="evil.csv")
    assert err.rows == [5] and err.column == "Image" and "plain file name" in err.problem
    assert "image folder" in err.fix


def test_image_names_with_path_separators_are_refused_in_nih_tables_too():
    frame = nih_frame([1, 2])
    frame.loc[0, "Image Index"] = "../../etc/passwd"
    assert _error(to_csv_bytes(frame), name="nih.csv").rows == [2]


def test_patient_id_disagreeing_with_the_file_name_is_a_warning_not_an_error():
    frame = onehot_frame([1, 2, 3])
    frame.loc[[1, 3], "PatientId"] = [7, 9]
    split = load_split(to_csv_bytes(frame), name="w.csv")
    assert split.frame["PatientId"].tolist() == [1, 7, 2, 9, 3, 3]  # the column wins
    [warning] = split.warnings
    assert isinstance(warning, DataWarning) and not isinstance(warning, Exception)
    assert warning.rows == (3, 5) and warning.column == "PatientId" and warning.file == "w.csv"
    assert "2 PatientId value(s) disagree" in str(warning) and "\n" not in str(warning)


def test_warnings_and_errors_are_distinct_types():
    assert issubclass(DatasetError, CxrError) and issubclass(CxrError, Exception)
    assert not issubclass(DataWarning, Exception)
    err = DatasetError("x.", file="f.csv", rows=[2], column="Mass", fix="y.")
    assert str(err) == "f.csv, line 2, column 'Mass': x. Fix: y."


def test_non_numeric_patient_ids_get_the_same_number_in_every_file():
    def split(ids: list[str], name: str):
        frame = onehot_frame(range(1, len(ids) + 1), per_patient=1)
        frame["Image"] = [f"{name}{i}.png" for i in range(len(ids))]
        frame["PatientId"] = ids
        return load_split(to_csv_bytes(frame), name=f"{name}.csv")

    train = split(["alice", "bob", "alice"], "train")
    test = split(["carol", "dave"], "test")
    other = split(["dave", "erin"], "other")
    assert train.frame["PatientId"].iloc[0] == train.frame["PatientId"].iloc[2]
    assert train.frame["PatientId"].nunique() == 2
    assert not set(train.patients) & set(test.patients)  # distinct people never collide across files
    assert test.frame["PatientId"].iloc[1] == other.frame["PatientId"].iloc[0]  # 'dave' is 'dave' everywhere
    assert all("not numbers" in str(w) for w in train.warnings) and train.warnings


def test_patient_ids_with_a_numeric_suffix_keep_the_number():
    frame = onehot_frame([1, 2], per_patient=1)
    frame["Image"] = ["a.png", "b.png"]
    frame["PatientId"] = ["patient00012", "patient00013"]
    split = load_split(to_csv_bytes(frame), name="x.csv")
    assert split.frame["PatientId"].tolist() == [12, 13] and split.warnings == []


def test_huge_numeric_patient_ids_do_not_overflow():
    frame = onehot_frame([1, 2], per_patient=1)
    frame["Image"] = ["a.png", "b.png"]
    frame["PatientId"] = ["99999999999999999999", "7"]
    split = load_split(to_csv_bytes(frame), name="x.csv")
    ids = split.frame["PatientId"].tolist()
    assert ids[0] > 0 and ids[0] != ids[1]


def test_empty_patient_id_cells_are_an_error():
    frame = onehot_frame([1, 2, 3], per_patient=1).astype({"PatientId": object})
    frame.loc[1, "PatientId"] = ""
    err = _error(to_csv_bytes(frame), name="x.csv")
    assert err.rows == [3] and err.column == "PatientId" and "empty" in err.problem


# ---------------------------------------------------------------------------------------------
# Formula strings


def test_formula_with_a_path_separator_is_refused():
    frame = onehot_frame([1, 2])
    frame.loc[1, "Image"] = "=cmd|' /C calc'!A0"
    err = _error(to_csv_bytes(frame), name="x.csv")
    assert err.rows == [3] and "plain file name" in err.problem


def test_formula_without_separator_is_kept_and_neutralized_on_export(tmp_path):
    frame = onehot_frame([1, 2, 3], extra={"Notes": "fine"})
    formula = "=HYPERLINK(\"x\")+cmd|' -C calc'!A0"
    frame.loc[1, "Image"] = formula
    frame.loc[2, "Notes"] = "@SUM(1+1)"
    frame.loc[3, "Notes"] = "-1"
    path = write_csv(frame, tmp_path / "f.csv")
    split = load_split(path)
    assert split.frame.loc[1, "Image"] == formula  # kept verbatim in memory
    safe = neutralize_formulas(split.frame)
    assert safe.loc[1, "Image"] == "'" + formula and safe.loc[2, "Notes"] == "'@SUM(1+1)"
    assert safe.loc[3, "Notes"] == "-1" and safe.loc[0, "Image"] == frame.loc[0, "Image"]
    assert split.frame.loc[1, "Image"] == formula  # the input frame is not modified
    out = tmp_path / "export.csv"
    write_split(split, split.frame.iloc[[0, 1, 2]], out)
    back = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert back.loc[1, "Image"] == "'" + formula and back.loc[2, "Notes"] == "'@SUM(1+1)"
    assert back.loc[0, "Image"] == frame.loc[0, "Image"]
    assert not any(back[c].str.match(r"^[=+@]").any() for c in back.columns)


# ---------------------------------------------------------------------------------------------
# Scale


def test_a_million_row_csv_loads():
    data, y, patients = million_row_csv(1_000_000)
    split = load_split(data, name="million.csv")  # its speed: bench/bench_audit.py, not a timed test
    _assert_normalized(split, 1_000_000)
    np.testing.assert_array_equal(split.labels, y)
    np.testing.assert_array_equal(split.patients, patients)
    assert split.frame["Image"].iloc[-1] == "00250000_003.png"


def test_two_columns_meaning_the_same_label_are_refused(tmp_path):
    from cxrcore.data.dataset import load_split
    from cxrcore.data.labels import LABELS
    from cxrcore.errors import DatasetError

    header = ["Image", *LABELS, "Infiltrate", "PatientId"]
    row = ["00000001_000.png", *["0"] * 14, "1", "1"]
    path = tmp_path / "dup_label.csv"
    path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    with pytest.raises(DatasetError, match="both mean Infiltration"):
        load_split(path)
