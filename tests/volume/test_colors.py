"""Segment display colours: anatomy colours by name words, stable hashed colours otherwise."""

from uae_ray.volume.colors import ANATOMY_RGB, segment_rgb


def test_names_by_their_words_and_stable_fallbacks() -> None:
    assert segment_rgb("kidney_left") == segment_rgb("Kidney right") == ANATOMY_RGB["kidney"]
    assert segment_rgb("parotid_gland_left") == ANATOMY_RGB["parotid"]
    a, b = segment_rgb("structure_17"), segment_rgb("structure_18")
    assert a == segment_rgb("structure_17") and a != b and all(0 <= v <= 255 for v in a + b)
