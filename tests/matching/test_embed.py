"""embed_image: map grids follow the stride convention; the Embedder protocol."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.matching.embed import Embedder, EmbeddingMaps, embed_image
from uae_ray.models import EmbeddingConfig
from uae_ray.volume import Grid


class _ConstEmbedder:
    version = "const-v0"
    config = EmbeddingConfig()

    def embed(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        z, y, x = volume.shape
        loc = np.zeros((4, -(-z // 2), -(-y // 2), -(-x // 2)), np.float32)
        loc[0] = 1
        glo = np.zeros((3, -(-z // 8), -(-y // 8), -(-x // 8)), np.float32)
        glo[0] = 1
        return {"local": loc, "global": glo}


def _image() -> sitk.Image:
    img = sitk.GetImageFromArray(np.full((20, 30, 40), -1000, np.int16))
    img.SetSpacing((1.5, 1.0, 3.0))
    img.SetOrigin((-10.0, 5.0, 100.0))
    img[20, 15, 10] = 500
    return img


def test_the_real_embedders_meet_the_protocol() -> None:
    """The in-process embedder (and so every caller typed on :class:`Embedder`) keeps the protocol."""
    from uae_ray.serving.local import LocalEmbedder

    assert isinstance(LocalEmbedder(), Embedder) and not isinstance(object(), Embedder)


def test_embed_image_grids() -> None:
    maps = embed_image(_image(), _ConstEmbedder(), "CT")
    assert isinstance(maps, EmbeddingMaps)
    model_origin = np.array([-10.0, 5.0, 100.0])
    np.testing.assert_allclose(maps.local_grid.origin, model_origin)
    np.testing.assert_allclose(maps.global_grid.origin, model_origin)
    assert maps.local_grid.spacing == (4.0, 4.0, 4.0)
    assert maps.global_grid.spacing == (16.0, 16.0, 16.0)
    assert maps.local.shape[1:] == maps.local_grid.shape_zyx == maps.valid.shape
    # the image is 58.5 x 29 x 57 mm: valid voxels cover about that extent at 4 mm
    assert maps.valid.any() and not maps.valid.all()
    assert maps.model_version == "const-v0"


def test_shape_mismatch_rejected() -> None:
    g = Grid((0, 0, 0), (4, 4, 4), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))
    with pytest.raises(ValueError, match="local map shape"):
        EmbeddingMaps(np.zeros((2, 3, 4, 4)), np.zeros((2, 4, 4, 4)), g, g, np.ones((3, 4, 4), bool), "x")
