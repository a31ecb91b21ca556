"""Model registry: names, defaults and the unknown-name error."""

from __future__ import annotations

import pytest

from uae_ray.models import MODEL_REGISTRY, EmbeddingNet, build_model


def test_registry_names() -> None:
    assert {"tiny", "default"} <= set(MODEL_REGISTRY)
    model = build_model()
    assert isinstance(model, EmbeddingNet)
    assert model.config.name == "tiny"
    assert model.config.input_spacing_mm == 2.0
    assert (model.config.local_stride, model.config.global_stride, model.config.pad_multiple) == (2, 8, 16)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        build_model("tinny")


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet152'"):
        build_model("resnet152")
