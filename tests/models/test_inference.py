"""embed_array: dtype, shapes and that the core imports no service packages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from uae_ray.models import build_model, embed_array


def test_embed_array_shapes() -> None:
    model = build_model().eval()
    out = embed_array(model, np.full((16, 32, 48), -1.0, dtype=np.float32))
    assert out["local"].shape == (32, 8, 16, 24) and out["local"].dtype == np.float32
    assert out["global"].shape == (32, 2, 4, 6)


def test_core_does_not_import_services() -> None:
    code = (
        "import sys, uae_ray.models, uae_ray.matching.nn, uae_ray.matching.embed;"
        "bad=[m for m in ('ray','tritonclient','minio') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
