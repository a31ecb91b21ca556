"""Reference maps (templates, supports) are embedded once per model and image content, then read
back; a changed image or another model is embedded anew."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from uae_ray.cohort.references import reference_key, reference_maps
from tests.volume.helpers import random_ct


class CountingEmbedder:
    """The in-process model, counting its calls."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.version, self.config = inner.version, inner.config

    def embed(self, *args, **kwargs):
        self.calls += 1
        return self.inner.embed(*args, **kwargs)


def test_a_reference_is_embedded_once_and_read_back_exactly(tmp_path: Path) -> None:
    from uae_ray.serving import get_embedder

    image = random_ct((40, 48, 44), seed=3, spacing=(2.0, 2.0, 2.0))
    path = tmp_path / "t.nii.gz"
    sitk.WriteImage(image, str(path))
    embedder = CountingEmbedder(get_embedder(None))
    first, uri = reference_maps(str(path), image, embedder, "CT", str(tmp_path / "out"))
    again, uri2 = reference_maps(str(path), image, embedder, "CT", str(tmp_path / "out"))
    assert embedder.calls == 1 and uri == uri2 and Path(uri).is_file()
    np.testing.assert_allclose(again.local, first.local.astype(np.float16).astype(np.float32), atol=1e-3)
    other = random_ct((40, 48, 44), seed=4, spacing=(2.0, 2.0, 2.0))
    sitk.WriteImage(other, str(path))  # new content at the same path
    assert reference_key(str(path), embedder.version, "CT") != Path(uri).stem
    reference_maps(str(path), other, embedder, "CT", str(tmp_path / "out"))
    assert embedder.calls == 2
    assert reference_key(str(path), embedder.version, "CT") != reference_key(str(path), "other-model", "CT")
