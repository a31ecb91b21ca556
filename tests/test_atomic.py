"""Atomic writes: the file appears whole with open()'s mode, a failed write leaves the old one."""

import os
import stat

import pytest

from uae_ray.atomic import atomic_path, default_file_mode, write_text_atomic
from uae_ray.report.html import write_html


def test_written_file_has_the_mode_open_would_give(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert stat.S_IMODE(os.stat(path).st_mode) == default_file_mode()
    report = write_html(tmp_path / "qc" / "r.html", "QC", "<p>x</p>")
    assert stat.S_IMODE(os.stat(report).st_mode) == default_file_mode() != 0o600


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.nii.gz"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            assert tmp.endswith(".nii.gz") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.nii.gz"]
