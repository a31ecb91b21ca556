"""Import segment-anything's model code without its package ``__init__``.

``segment_anything/__init__.py`` (1.0) imports the predictor and the automatic mask generator,
which import torchvision, and torchvision does not import beside the local CPU torch. The model
code (``segment_anything.modeling``, ``segment_anything.build_sam``) needs no torchvision, so a
bare package module with the right ``__path__`` is registered in ``sys.modules`` first and the
submodules are imported below it. A fully imported ``segment_anything`` (torchvision present) is
used as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

PACKAGE = "segment_anything"


def _bare_package() -> types.ModuleType:
    """``segment_anything`` as an empty package (no ``__init__`` run), registered in sys.modules."""
    existing = sys.modules.get(PACKAGE)
    if existing is not None:
        return existing
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("segment-anything is not installed (pip install segment-anything==1.0)")
    module = types.ModuleType(PACKAGE)
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__package__ = PACKAGE
    module.__spec__ = spec
    sys.modules[PACKAGE] = module
    return module


def sam_modeling() -> types.ModuleType:
    """``segment_anything.modeling`` (``Sam``, ``ImageEncoderViT``, ``PromptEncoder``,
    ``MaskDecoder``, ``TwoWayTransformer``)."""
    _bare_package()
    return importlib.import_module(f"{PACKAGE}.modeling")


def sam_build() -> types.ModuleType:
    """``segment_anything.build_sam`` (``sam_model_registry`` of the official ViT-H/L/B builders)."""
    _bare_package()
    return importlib.import_module(f"{PACKAGE}.build_sam")


__all__ = ["sam_build", "sam_modeling"]
