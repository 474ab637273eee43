"""Reading the IJB protocol files, and a clear one-line error for each kind of bad input."""
import numpy as np
import pytest

from tools.ijbc_eval.protocol import (ProtocolError, load_identification_protocol,
                                      load_verification_protocol, subset_paths)
from tools.ijbc_eval.toy_protocol import write_toy_protocol


@pytest.fixture()
def toy(tmp_path):
    truth = write_toy_protocol(tmp_path, "IJBC", num_subjects=4, templates_per_subject=2,
                               images_per_template=3, image_size=32)
    return tmp_path, subset_paths(tmp_path, "IJBC"), truth


def test_protocol_is_read_as_written(toy):
    root, _, truth = toy
    protocol = load_verification_protocol(root, "IJBC")
    assert protocol.image_names.tolist() == truth["names"].tolist()
    assert protocol.image_templates.tolist() == truth["image_templates"].tolist()
    assert protocol.image_medias.tolist() == truth["image_medias"].tolist()
    np.testing.assert_allclose(protocol.faceness, truth["faceness"], atol=1e-3)
    assert protocol.pair_templates[:, 0].tolist() == truth["pair_first"].tolist()
    assert protocol.pair_templates[:, 1].tolist() == truth["pair_second"].tolist()
    assert protocol.pair_labels.tolist() == truth["pair_labels"].tolist()
    assert protocol.landmarks.shape == (len(truth["names"]), 5, 2)
    identification = load_identification_protocol(root, "IJBC", truth["template_ids"])
    assert identification.galleries["G1"].template_ids.tolist() == sorted(truth["galleries"]["G1"])
    assert identification.probes.template_ids.tolist() == sorted(truth["probes"])
    subject_of = dict(zip(truth["template_ids"], truth["template_subjects"]))
    probes = identification.probes
    assert probes.subject_ids.tolist() == [subject_of[t] for t in probes.template_ids]


def test_ijbb_layout_uses_its_own_names(tmp_path):
    truth = write_toy_protocol(tmp_path, "IJBB", num_subjects=4, templates_per_subject=2,
                               images_per_template=1, image_size=32)
    assert subset_paths(tmp_path, "IJBB")["S1"].name == "ijbb_1N_gallery_S1.csv"
    identification = load_identification_protocol(tmp_path, "IJBB", truth["template_ids"])
    assert sorted(identification.galleries) == ["S1", "S2"]


def test_missing_images_are_counted_and_named(toy):
    root, paths, _ = toy
    (paths["images"] / "2.jpg").unlink()
    (paths["images"] / "5.jpg").unlink()
    with pytest.raises(ProtocolError, match=r"2 of 24 images missing under .*: 2\.jpg, 5\.jpg"):
        load_verification_protocol(root, "IJBC")


def test_landmark_rows_must_match_image_list(toy):
    root, paths, _ = toy
    lines = paths["landmarks"].read_text().splitlines()
    paths["landmarks"].write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ProtocolError, match="lists 23 images but .* lists 24"):
        load_verification_protocol(root, "IJBC")
    lines[0], lines[1] = lines[1], lines[0]
    paths["landmarks"].write_text("\n".join(lines) + "\n")
    with pytest.raises(ProtocolError, match="disagree on row 1: 2.jpg vs 1.jpg"):
        load_verification_protocol(root, "IJBC")
    paths["landmarks"].write_text("\n".join(lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:]) + "\n")
    with pytest.raises(ProtocolError, match="record 4 has 11 fields, expected 12"):
        load_verification_protocol(root, "IJBC")


def test_pairs_naming_unknown_templates(toy):
    root, paths, _ = toy
    with open(paths["pairs"], "a") as handle:
        handle.write("1000 424242 0\n")
    with pytest.raises(ProtocolError, match="1 pair templates not in the image/template table: 424242"):
        load_verification_protocol(root, "IJBC")


def test_malformed_pair_line_and_label(toy):
    root, paths, _ = toy
    text = paths["pairs"].read_text()
    paths["pairs"].write_text(text + "1000 1007\n")
    with pytest.raises(ProtocolError, match=r"line \d+ is not 3 fields"):
        load_verification_protocol(root, "IJBC")
    paths["pairs"].write_text(text + "1000 1007 2\n")
    with pytest.raises(ProtocolError, match="has label 2, expected 0 or 1"):
        load_verification_protocol(root, "IJBC")


def test_one_to_n_csv_without_expected_columns(toy):
    root, paths, truth = toy
    paths["G1"].write_text("TID,SID\n1000,50\n")
    with pytest.raises(ProtocolError, match="expected a header starting TEMPLATE_ID,SUBJECT_ID"):
        load_identification_protocol(root, "IJBC", truth["template_ids"])
    paths["G1"].write_text("TEMPLATE_ID,SUBJECT_ID\n1000,50\n1007,x\n")
    with pytest.raises(ProtocolError, match="line 3 has no integer TEMPLATE_ID,SUBJECT_ID"):
        load_identification_protocol(root, "IJBC", truth["template_ids"])
    paths["G1"].write_text("TEMPLATE_ID,SUBJECT_ID\n77,50\n")
    with pytest.raises(ProtocolError, match="1 templates not in the image/template table: 77"):
        load_identification_protocol(root, "IJBC", truth["template_ids"])


def test_missing_file_and_unknown_subset(tmp_path):
    with pytest.raises(ProtocolError, match="landmarks file not found"):
        load_verification_protocol(tmp_path, "IJBC")
    with pytest.raises(ProtocolError, match="unknown subset 'IJBA'"):
        load_verification_protocol(tmp_path, "IJBA")
