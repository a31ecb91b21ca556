"""Names of a label map's labels: where they are found beside the file, and how they are read.

Accepted forms (JSON): ``{"1": "liver", "2": "spleen"}`` (ours and 3D Slicer's colour-table
style), a ``meta.json`` with such a ``labels`` map, and nnU-Net's ``dataset.json`` form
``{"labels": {"background": 0, "liver": 1}}`` (name -> id; background and region lists skipped).
"""

from __future__ import annotations

import json

#: Suffixes stripped from a label file's name to find its ``<stem>.json`` sidecar.
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class LabelNamesError(ValueError):
    """A label-names file that cannot be used; one line naming the file and the cause."""


def sidecar_paths(labels: str) -> tuple[str, str]:
    """The two places names may sit beside a label file (path or URI): ``<stem>.json``, then
    ``meta.json`` in the same folder."""
    text = labels.rstrip("/")
    head, sep, name = text.rpartition("/")
    low = name.lower()
    stem = next((name[: -len(s)] for s in LABEL_SUFFIXES if low.endswith(s)), name)
    return head + sep + stem + ".json", head + sep + "meta.json"


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, str) and value.strip().isdigit())


def parse_label_names(text: str, source: str) -> dict[int, str]:
    """``{label id: name}`` (ids > 0) from the text of a label-names JSON (module docstring).

    Raises:
        LabelNamesError: not JSON, not a mapping, ids that are not positive integers, empty
            names or an id named twice.
    """
    try:
        data = json.loads(text)
    except ValueError as e:
        raise LabelNamesError(f"{source}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise LabelNamesError(f"{source}: expected a JSON object {{\"1\": \"liver\", ...}}, nnU-Net's "
                              "{\"liver\": 1, ...}, or one with a 'labels' map")
    if all(_is_id(v) or isinstance(v, list) for v in data.values()) and not all(_is_id(k) for k in data):
        pairs = [(v, k) for k, v in data.items() if _is_id(v) and int(v) > 0]  # nnU-Net: name -> id
    else:
        pairs = list(data.items())
    out: dict[int, str] = {}
    for key, name in pairs:
        if not _is_id(key) or int(key) <= 0:
            raise LabelNamesError(f"{source}: label id {key!r} is not a positive integer")
        if not isinstance(name, str) or not name.strip():
            raise LabelNamesError(f"{source}: label {key} has no name ({name!r})")
        if int(key) in out:
            raise LabelNamesError(f"{source}: label {key} is named twice")
        out[int(key)] = name.strip()
    return out
