"""Label names in the forms users have: ours / Slicer ({"1": "liver"}), meta.json, nnU-Net."""

import pytest

from uae_ray.tasks.label_names import LabelNamesError, parse_label_names, sidecar_paths


@pytest.mark.parametrize("text", [
    '{"1": "liver", "2": "spleen"}',
    '{"labels": {"1": "liver", "2": "spleen"}, "patient": "p"}',                      # meta.json
    '{"liver": 1, "spleen": 2}',                                                       # nnU-Net, bare
    '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2}, "numTraining": 3}',
    '{"labels": {"background": 0, "liver": 1, "spleen": 2, "both": [1, 2]}}',          # nnU-Net regions skipped
])
def test_every_form_gives_the_same_names(text: str) -> None:
    assert parse_label_names(text, "names.json") == {1: "liver", 2: "spleen"}


@pytest.mark.parametrize("text, cause", [
    ("{", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"0": "background"}', "not a positive integer"),
    ('{"1": ""}', "has no name"),
    ('{"a": "liver"}', "not a positive integer"),
])
def test_bad_files_are_one_line_naming_the_file(text: str, cause: str) -> None:
    with pytest.raises(LabelNamesError) as e:
        parse_label_names(text, "names.json")
    assert str(e.value).startswith("names.json: ") and cause in str(e.value)


def test_sidecar_paths() -> None:
    assert sidecar_paths("s3://b/case/labels.nii.gz") == ("s3://b/case/labels.json", "s3://b/case/meta.json")
    assert sidecar_paths("gtv.nrrd") == ("gtv.json", "meta.json")
