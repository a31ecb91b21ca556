"""Display colours of segments (RGB 0-255), used for DICOM SEG ``RecommendedDisplayCIELabValue``,
label-map sidecars and QC images, so an organ looks the same in every viewer.

Common organs get a fixed anatomy-like colour (liver brown-red, bone ivory, vessels red / blue,
...); matching is on the words of the name (``kidney_left`` -> kidney, ``parotid_gland_right`` ->
parotid). Any other name gets a stable colour from a hash of it (same name, same colour, in every
run), drawn from a bright palette that stays distinguishable on CT grey.
"""

from __future__ import annotations

import colorsys
import hashlib
import re

#: Word -> RGB for frequent structures (first matching word of the name wins).
ANATOMY_RGB: dict[str, tuple[int, int, int]] = {
    "liver": (221, 130, 101), "spleen": (157, 108, 162), "kidney": (185, 102, 83), "pancreas": (249, 180, 111),
    "stomach": (216, 132, 105), "gallbladder": (139, 150, 98), "bladder": (222, 154, 132), "lung": (197, 165, 145),
    "heart": (206, 110, 84), "aorta": (224, 97, 76), "vena": (0, 151, 206), "esophagus": (211, 171, 143),
    "duodenum": (255, 253, 229), "colon": (204, 168, 143), "bowel": (255, 253, 229), "adrenal": (244, 214, 49),
    "prostate": (230, 158, 140), "brain": (250, 250, 225), "brainstem": (241, 214, 145), "spinal": (244, 214, 49),
    "cord": (244, 214, 49), "mandible": (241, 239, 200), "bone": (241, 214, 145), "vertebrae": (241, 214, 145),
    "rib": (241, 214, 145), "femur": (241, 214, 145), "parotid": (183, 156, 220), "submandibular": (144, 238, 144),
    "larynx": (111, 184, 210), "trachea": (182, 228, 255), "thyroid": (220, 245, 20), "eye": (255, 215, 0),
    "optic": (255, 165, 0), "muscle": (192, 104, 88), "gtv": (255, 0, 0), "tumor": (255, 0, 0), "tumour": (255, 0, 0),
    "lesion": (255, 0, 0), "ptv": (255, 128, 0), "ctv": (255, 200, 0),
}


def segment_rgb(name: str) -> tuple[int, int, int]:
    """The display colour of a structure name (module docstring)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    for w in words:
        if w in ANATOMY_RGB:
            return ANATOMY_RGB[w]
    h = int(hashlib.sha256(name.lower().encode("utf-8")).hexdigest()[:8], 16)
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360.0, 0.65, 0.95)
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))
