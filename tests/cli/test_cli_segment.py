"""`uae-ray segment` end to end (in-process) on real data: the label-map contract and sidecar."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.cli import SAM_KINDS, SEGMENT_BENCH_MODES, SEGMENT_BOX_MODES, SEGMENT_DEFAULT_BOX_MODE, main


def test_cli_constants_match_the_library():
    from uae_ray.bench import segmentation
    from uae_ray.models import sam2d
    from uae_ray.tasks import segment

    assert tuple(SEGMENT_BOX_MODES) == segment.BOX_MODES and SEGMENT_DEFAULT_BOX_MODE == segment.DEFAULT_BOX_MODE
    assert tuple(SAM_KINDS) == sam2d.OFFICIAL_KINDS and tuple(SEGMENT_BENCH_MODES) == segmentation.MODES


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "uae_ray.cli", "segment", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "IMAGE:LABELS" in out.stdout and "--sam-checkpoint" in out.stdout


@pytest.mark.data
@pytest.mark.slow
def test_segment_end_to_end(shared_data, tmp_path, caplog):
    support = shared_data / "cases" / "ts_example_ct"
    target = shared_data / "cases" / "ts_upper_abdomen"
    out = tmp_path / "out" / "seg.nii.gz"
    code = main([
        "segment", "--support", f"{support}/image.nii.gz:{support}/labels.nii.gz",
        "--target", f"{target}/image.nii.gz", "--organs", "liver,brain,spleen", "--out", str(out), "--boxes", "wpl",
        "--checkpoint", "tiny-v0",  # the localizer model of the bounds below (see there)
        "--report", str(tmp_path / "out" / "qc.html"),
    ])
    assert code == 0
    html = (tmp_path / "out" / "qc.html").read_text()  # one strip per segmented organ, every organ's row
    assert html.count("data:image/png") == 2 and all(o in html for o in ("liver", "brain", "spleen"))
    assert json.loads((tmp_path / "out" / "seg.json").read_text()) == {"1": "liver", "2": "brain", "3": "spleen"}
    image = sitk.ReadImage(str(target / "image.nii.gz"))
    seg = sitk.ReadImage(str(out))
    assert seg.GetSize() == image.GetSize()
    assert np.allclose(seg.GetOrigin(), image.GetOrigin()) and np.allclose(seg.GetSpacing(), image.GetSpacing())
    assert np.allclose(seg.GetDirection(), image.GetDirection())
    arr = sitk.GetArrayFromImage(seg)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labels.nii.gz")))
    assert 2 not in np.unique(arr)  # brain: no support has it, so it stays empty (and is named in a warning)
    assert any("brain" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for k, label, bound in ((1, 5, LIVER_BOUND), (3, 1, SPLEEN_BOUND)):
        pred, true = arr == k, truth == label
        dsc = 2 * np.logical_and(pred, true).sum() / (pred.sum() + true.sum())
        assert dsc > bound, (k, dsc)


# Measured with sam-vit-tiny-v1+5e122231 (WPL boxes localized from one support, another patient,
# embeddings tiny-v0): liver 0.758, spleen 0.641 (sam-vit-tiny-v0: 0.627, 0.654). With the default tiny-uae-v3 the spleen of this
# 40 mm slab is not localized from this support (Dice 0). The target is one of the model's training cases (see the model card);
# the bounds leave a margin.
LIVER_BOUND = 0.45
SPLEEN_BOUND = 0.45


@pytest.mark.data
@pytest.mark.slow
def test_segment_a_dicom_series_writes_a_matching_dicom_seg(shared_data, tmp_path):
    import highdicom as hd

    support = shared_data / "cases" / "ts_example_ct"
    out = tmp_path / "labels.nii.gz"
    code = main([
        "segment", "--support", f"{support}/image.nii.gz:{support}/labels.nii.gz",
        "--target", str(shared_data / "dicom" / "ts_upper_abdomen"), "--organs", "liver,brain", "--out", str(out),
        "--boxes", "wpl", "--dicom-seg", str(tmp_path / "seg.dcm"),
    ])
    assert code == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]  # brain: no support has it, left out
    vol = seg.get_volume(combine_segments=True, relabel=False).array
    if seg.get_volume().affine[2, 0] < 0:  # the SEG's volume runs head to foot
        vol = vol[::-1]
    np.testing.assert_array_equal(vol == 1, labels == 1)
