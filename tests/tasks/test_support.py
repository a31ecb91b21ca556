"""Support scans: IMAGE:LABELS parsing, organ names, extreme points (synthetic and real data)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.tasks.support import (
    SupportError,
    SupportSpec,
    box_of_points,
    extreme_points,
    organ_volume_ml,
    parse_support,
    partial_supports,
    read_label_names,
    sidecar_paths,
)
from uae_ray.api.inputs import load_support
from uae_ray.volume import VolumeError


def test_parse_support_local_and_s3():
    assert parse_support("a/img.nii.gz:a/lab.nii.gz") == SupportSpec("a/img.nii.gz", "a/lab.nii.gz")
    assert parse_support("s3://b/k/img.nii.gz:s3://b/k/lab.nii.gz") == SupportSpec(
        "s3://b/k/img.nii.gz", "s3://b/k/lab.nii.gz")
    assert parse_support("s3://b/img.nii.gz:lab.nii.gz") == SupportSpec("s3://b/img.nii.gz", "lab.nii.gz")
    assert parse_support("img.nii.gz:s3://b/lab.nii.gz") == SupportSpec("img.nii.gz", "s3://b/lab.nii.gz")


def test_parse_support_path_with_colon_takes_the_existing_split(tmp_path):
    img = tmp_path / "scan:1.nii.gz"
    lab = tmp_path / "labels.nii.gz"
    img.write_bytes(b"x")
    lab.write_bytes(b"x")
    assert parse_support(f"{img}:{lab}") == SupportSpec(str(img), str(lab))


@pytest.mark.parametrize("text", ["img.nii.gz", ":lab.nii.gz", "img.nii.gz:", "s3://b/img.nii.gz", "a:b:c"])
def test_parse_support_errors_are_one_line(text):
    with pytest.raises(SupportError) as e:
        parse_support(text)
    assert text in str(e.value) and "\n" not in str(e.value)


def test_label_names_three_sources_in_order(tmp_path):
    labels = tmp_path / "case" / "seg.nii.gz"
    labels.parent.mkdir()
    (labels.parent / "meta.json").write_text(json.dumps({"labels": {"1": "liver", "2": "spleen"}, "other": 1}))
    names, source = read_label_names(str(labels))
    assert names == {1: "liver", 2: "spleen"} and source.endswith("meta.json")
    sidecar, _ = sidecar_paths(str(labels))
    assert sidecar.endswith("case/seg.json")
    (labels.parent / "seg.json").write_text(json.dumps({"1": "kidney_left"}))
    assert read_label_names(str(labels))[0] == {1: "kidney_left"}
    explicit = tmp_path / "names.json"
    explicit.write_text(json.dumps({"3": "aorta"}))
    assert read_label_names(str(labels), str(explicit)) == ({3: "aorta"}, str(explicit))


def test_label_names_errors(tmp_path):
    labels = tmp_path / "lab.nii.gz"
    with pytest.raises(SupportError, match="no organ names.*--label-names"):
        read_label_names(str(labels))
    (tmp_path / "lab.json").write_text("{not json")
    with pytest.raises(SupportError, match="lab.json: not valid JSON"):
        read_label_names(str(labels))
    (tmp_path / "lab.json").write_text(json.dumps({"x": "liver"}))
    with pytest.raises(SupportError, match="not a positive integer"):
        read_label_names(str(labels))
    with pytest.raises(SupportError, match="label-names file not found"):
        read_label_names(str(labels), str(tmp_path / "missing.json"))


def _synthetic_labels(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    arr = np.zeros((20, 30, 40), dtype=np.uint8)  # z, y, x
    arr[5:12, 10:20, 8:30] = 1  # a block
    arr[12, 14, 18] = 1  # one voxel sticking out at the top (z = 12)
    arr[0:3, 0:4, 0:4] = 2  # touches the first slice and the low x / y faces
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.0, 2.0))
    img.SetOrigin((-10.0, 20.0, 100.0))
    img.SetDirection(direction)
    return img


def _world(img, ijk):
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_extreme_points_of_a_synthetic_label(tmp_path, direction):
    img = _synthetic_labels(direction)
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(img, str(path))
    (tmp_path / "labels.json").write_text(json.dumps({"1": "block", "2": "corner"}))
    image_path = tmp_path / "image.nii.gz"
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16) * 100 - 1000, str(image_path))
    support = load_support(f"{image_path}:{path}", modality="CT")
    geo = support.organ("block")
    corners = np.array([_world(img, c) for c in [(8, 10, 5), (29, 19, 11), (18, 14, 12)]])
    np.testing.assert_allclose(geo.box, box_of_points(corners), atol=1e-6)
    # each extreme point: the extreme coordinate, elsewhere the centroid of the slab of voxels
    # within one voxel step (2 mm along z here) of it: the top one is pulled towards the voxel
    # sticking out, the bottom one is the centre of the block's bottom face
    zyx = np.argwhere(sitk.GetArrayFromImage(img) == 1)
    world = np.array([_world(img, v[::-1]) for v in zyx])
    top = world[world[:, 2] >= world[:, 2].max() - 2.02].mean(axis=0)
    np.testing.assert_allclose(geo.extremes[5][:2], top[:2], atol=1e-6)
    assert geo.extremes[5][2] == pytest.approx(world[:, 2].max())
    mid = _world(img, (18.5, 14.5, 8.0))
    zmin = geo.extremes[4]
    assert zmin[2] == pytest.approx(geo.box[2]) and np.allclose(zmin[:2], mid[:2], atol=1e-6)
    assert geo.volume_ml == pytest.approx((7 * 10 * 22 + 1) * 3.0 / 1000.0)
    assert organ_volume_ml(img, 1) == pytest.approx(geo.volume_ml)
    assert not geo.cut.any()
    corner = support.organ("corner")
    # touches index 0 on x, y and z: in world terms the low side, or the high side where flipped
    flip = np.sign(np.diag(np.reshape(direction, (3, 3))))
    expect = [flip[0] > 0, flip[0] < 0, flip[1] > 0, flip[1] < 0, True, False]
    assert list(corner.cut) == expect
    assert support.organ("liver") is None and "no label named 'liver'" in support.missing_reason("liver")


def test_partial_supports_one_line_per_support(tmp_path):
    img = _synthetic_labels()
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16) * 100 - 1000, str(tmp_path / "image.nii.gz"))
    supports = []
    for name, names in (("a", {"1": "block", "2": "corner"}), ("b", {"1": "block", "3": "corner"}), ("c", {"1": "block"})):
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
        (tmp_path / f"{name}.json").write_text(json.dumps(names))
        supports.append(load_support(f"{tmp_path / 'image.nii.gz'}:{tmp_path / name}.nii.gz", modality="CT"))
    # b's "corner" (label 3) has no voxels, c has no such name; "liver" no support has (left to
    # the caller); a has all
    lines = partial_supports(supports, ["block", "corner", "liver"])
    assert [s for s, _ in lines] == supports[1:]
    line = lines[0][1]
    assert line.startswith(f"{tmp_path / 'b'}.nii.gz: ") and "no voxels labelled corner" in line
    assert line.endswith("is not used for corner") and "liver" not in line
    assert "no label named 'corner' (names from " in lines[1][1]
    assert partial_supports(supports, ["block"]) == []


def test_extreme_points_slab_and_errors():
    pts = np.array([[0.0, 0, 0], [0.0, 10, 0], [1.0, 5, 5], [9.0, 0, 0]])
    ext = extreme_points(pts, slab_mm=1.5)
    np.testing.assert_allclose(ext[0], [0.0, 5.0, 5.0 / 3.0])  # xmin slab holds the first three
    np.testing.assert_allclose(ext[1], [9.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        extreme_points(np.zeros((0, 3)))


def test_load_support_errors_name_the_file(tmp_path):
    with pytest.raises(VolumeError) as e:
        load_support(f"{tmp_path}/none.nii.gz:{tmp_path}/lab.nii.gz")
    assert str(e.value).startswith(f"{tmp_path}/none.nii.gz:") and "\n" not in str(e.value)


def test_real_case_boxes_match_boxes_csv(shared_data):
    import csv

    case = shared_data / "cases" / "ts_example_ct"  # stored RAS (direction diag(-1, -1, 1))
    support = load_support(f"{case}/image.nii.gz:{case}/labels.nii.gz")
    assert support.names_source.endswith("meta.json") and support.modality == "CT"
    rows = {r["name"]: r for r in csv.DictReader(open(case / "boxes.csv"))}
    for organ in ("liver", "spleen", "kidney_left", "aorta"):
        truth = [float(rows[organ][c]) for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")]
        np.testing.assert_allclose(support.organ(organ).box, truth, atol=2e-3)
    assert support.organ("liver").cut[5]  # the liver leaves the scan at its top
