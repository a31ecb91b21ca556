"""The documentation names only modules, files and objects that exist (it cannot go stale silently)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"`((?:uae_ray|tests|docs|cluster|jobs|model_repo)/[\w./-]*)`")
SHORT_PATH = re.compile(r"`((?:[a-z_]+/)+[a-z_]+\.py)`")  # e.g. `cohort/track.py`, relative to uae_ray/
DOTTED = re.compile(r"`(uae_ray(?:\.\w+)+)`")


def _resolves(dotted: str) -> bool:
    """``uae_ray.a.b.C.attr``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                annotations = getattr(obj, "__annotations__", {}) or getattr(obj, "__dataclass_fields__", {})
                if name in annotations:
                    return True
                return False
            obj = getattr(obj, name)
        return True
    return False


def _names(doc: Path) -> tuple[set[str], set[str], set[str]]:
    text = doc.read_text(encoding="utf-8")
    return set(PATH.findall(text)), set(SHORT_PATH.findall(text)), set(DOTTED.findall(text))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_paths_and_objects_exist(doc: Path) -> None:
    paths, short, dotted = _names(doc)
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists() and "*" not in p]
    missing += [p for p in short if not (ROOT / "uae_ray" / p).exists() and not (ROOT / p).exists()]
    missing += [d for d in dotted if not _resolves(d)]
    assert not missing, f"{doc.name} names what does not exist: {sorted(missing)}"


def test_the_check_can_fail(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("see `uae_ray/tasks/nothing_here.py`, `cohort/gone.py` and `uae_ray.tasks.register.NoSuch`\n")
    paths, short, dotted = _names(doc)
    assert not (ROOT / next(iter(paths))).exists() and not (ROOT / "uae_ray" / next(iter(short))).exists()
    assert not _resolves(next(iter(dotted))) and _resolves("uae_ray.tasks.register.Registrar")
