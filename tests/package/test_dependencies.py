"""The dependency rule (docs/architecture.md) as tests that fail: the core imports no service,
storage, job or CLI code, and the package has no import circles."""

from __future__ import annotations

from pathlib import Path

from tests.package.imports import cycles, graph, module_files, violations

CORE = ("uae_ray.volume", "uae_ray.models", "uae_ray.matching", "uae_ray.tasks")
FORBIDDEN_IN_CORE = ("uae_ray.storage", "uae_ray.serving", "uae_ray.stack", "uae_ray.cohort", "uae_ray.api",
                     "uae_ray.commands", "uae_ray.cli", "ray", "minio", "tritonclient", "pyarrow.fs")
#: Only the CLI layer may import the CLI layer.
LIBRARY = ("uae_ray.api", "uae_ray.bench", "uae_ray.cohort", "uae_ray.train", "uae_ray.storage",
           "uae_ray.serving", "uae_ray.report") + CORE


def test_core_imports_nothing_above_it() -> None:
    assert violations(module_files(), CORE, FORBIDDEN_IN_CORE) == []


def test_library_does_not_import_the_cli() -> None:
    assert violations(module_files(), LIBRARY, ("uae_ray.commands", "uae_ray.cli")) == []


def test_training_and_benchmarking_share_data_not_each_other() -> None:
    files = module_files()
    assert violations(files, ("uae_ray.train", "uae_ray.data"), ("uae_ray.bench",)) == []
    assert violations(files, ("uae_ray.bench", "uae_ray.data"), ("uae_ray.train",)) == []


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_checks_fail_on_a_forbidden_import_and_a_circle(tmp_path: Path) -> None:
    """The same checks on a small package with a function-level S3 import and a circle."""
    pkg = tmp_path / "uae_ray"
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "storage").mkdir()
    for init in (pkg, pkg / "tasks", pkg / "storage"):
        (init / "__init__.py").write_text("")
    (pkg / "tasks" / "a.py").write_text("def f():\n    from uae_ray.storage import objects\n")
    (pkg / "storage" / "objects.py").write_text("import ray\nfrom uae_ray.storage.manifest import M\n")
    (pkg / "storage" / "manifest.py").write_text("from . import objects\nM = 1\n")
    files = module_files(pkg)
    assert violations(files, CORE, FORBIDDEN_IN_CORE) == ["uae_ray.tasks.a:2 imports uae_ray.storage",
                                                          "uae_ray.tasks.a:2 imports uae_ray.storage.objects"]
    assert cycles(graph(files)) == [["uae_ray.storage.manifest", "uae_ray.storage.objects"]]
