"""The public Python API (``uae_ray.UAE``, the verbs) on a real case, and the README's snippet."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import uae_ray
from uae_ray.tasks.points_io import read_points_csv

README = Path(__file__).resolve().parents[2] / "README.md"
CASE = "matrad_hn_frm2"  # a small head-neck CT (105 x 106 x 46 voxels) with landmarks


@pytest.fixture(scope="module")
def case(shared_data: Path) -> Path:
    return shared_data / "cases" / CASE


@pytest.fixture(scope="module")
def uae() -> uae_ray.UAE:
    return uae_ray.UAE()


def test_embed_once_find_many_points_in_a_shifted_copy(case: Path, uae: uae_ray.UAE) -> None:
    image = sitk.ReadImage(str(case / "image.nii.gz"))
    shifted = sitk.Image(image)
    shifted.SetOrigin(tuple(np.array(image.GetOrigin()) + (12.0, -7.0, 5.0)))
    template, target = uae.embed(image), uae.embed(shifted)
    assert template.modality == "CT" and template.model_version == uae.version
    points = read_points_csv(case / "landmarks.csv")
    res = template.find(points.xyz, target)
    err = np.linalg.norm(res.points - (points.xyz + (12.0, -7.0, 5.0)), axis=1)
    assert res.points.shape == (len(points), 3) and res.found.dtype == bool
    assert np.median(err) < 2.0, err
    feats = template.features(points.xyz[:2])
    assert feats["local"].shape[0] == 2 and np.allclose(np.linalg.norm(feats["local"], axis=1), 1.0, atol=1e-2)


def test_a_point_outside_the_template_is_an_error(case: Path, uae: uae_ray.UAE) -> None:
    scan = uae.embed(str(case / "image.nii.gz"))
    with pytest.raises(ValueError, match=r"1 point\(s\) outside the template image .*point 0"):
        scan.find([[0.0, 0.0, 9392.0]], scan)


def test_landmarks_and_register_verbs_on_paths(case: Path, uae: uae_ray.UAE) -> None:
    image = str(case / "image.nii.gz")
    points = read_points_csv(case / "landmarks.csv")
    found = uae_ray.landmarks(image, dict(zip(points.names, points.xyz.tolist())), [image], embedder=uae.embedder)
    assert [d.name for d in found] == list(points.names) and all(d.target == image for d in found)
    err = np.linalg.norm(np.array([[d.x, d.y, d.z] for d in found]) - points.xyz, axis=1)
    assert np.median(err) < 2.0, err
    result = uae_ray.register(image, image, "rigid", embedder=uae.embedder)
    moved = np.array(result.transform.TransformPoint(points.xyz[0].tolist()))
    assert np.linalg.norm(moved - points.xyz[0]) < 2.0
    assert result.n_inliers > 10


def test_readme_python_snippet_runs(shared_data: Path) -> None:
    """The README's ``python`` block (data path pointed at ``../shared/data``) runs and finds the point."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python snippet"
    code = blocks[0].replace('"../shared/data"', repr(str(shared_data)))
    namespace: dict = {}
    exec(compile(code, "README.md snippet", "exec"), namespace)
    result = namespace["result"]
    assert result.found.all() and np.linalg.norm(result.points - namespace["points"], axis=1).max() < 3.0
