"""Accuracy of the SHIPPED checkpoint on a synthetic warp of a real CT (needs ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uae_ray.models import default_checkpoint
from uae_ray.serving.local import LocalEmbedder
from uae_ray.train.evaluate import evaluate_case, read_landmarks
from uae_ray.volume import read_image

CASE = "ts_example_ct"


@pytest.mark.data
@pytest.mark.slow
def test_shipped_checkpoint_matches_synthetic_warp(shared_data: Path) -> None:
    case = shared_data / "cases" / CASE
    if not (case / "image.nii.gz").is_file():
        pytest.skip(f"{case} not found")
    if not default_checkpoint().is_file():
        pytest.fail(f"shipped checkpoint missing: {default_checkpoint()}")
    torch.set_num_threads(2)
    embedder = LocalEmbedder()
    res = evaluate_case(CASE, read_image(case / "image.nii.gz"), embedder, read_landmarks(case / "landmarks.csv"), n_points=20)
    assert res.n_points >= 40
    # The warp moves points by ~20 mm on average (identity error); the model must do far better.
    assert res.identity_mre_mm > 10.0
    assert res.mre_mm < 10.0, res
    assert res.median_mm < 6.0, res
