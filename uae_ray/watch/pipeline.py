"""The pipeline of ``uae-ray watch``: which steps run on each new series, with what.

A YAML file (``jobs/watch_pipeline.yaml`` is the documented example), checked on load: an
unknown key, a wrong type or a missing required value is one :class:`PipelineError` naming the
file and the key path (``steps.landmarks[0].points``). Schema (every key optional unless marked)::

    version: 1                              # required
    series:                                 # which series of a new study are taken
      modalities: [CT, MR]                  # DICOM Modality values (default CT and MR)
      min_slices: 16                        # fewer instances: skipped as not a volume
    model:
      checkpoint: tiny-uae-v3               # shipped name or path (default: shipped default)
      storage_tier: compact-hq              # see `cohort embed --storage-tier`
    steps:
      embed: true                           # always on (the other steps need it)
      landmarks:                            # a list; each runs `cohort landmarks`
        - name: headneck                    # required; [a-z0-9_-]+ (output folder name)
          template: s3://bucket/t.nii.gz    # required
          points: s3://bucket/points.csv    # required
      prelabel:                             # runs `cohort prelabel`
        supports: [IMAGE:LABELS, ...]       # required
        organs: liver,spleen                # required
        boxes: spl                          # spl | wpl (see `segment --boxes`)
      track:                                # pairs each new study with the patient's prior
        lesions: s3://bucket/lesions/       # <StudyInstanceUID>.csv: a prior's lesions when
                                            # it has no tracks of its own
      register:
        kind: rigid                         # rigid | affine (see `cohort register`)
    send_back:                              # results stored to the PACS with STOW-RS
      seg: true                             # DICOM SEG of the pre-labels
      sr: true                              # DICOM SR (TID 1500) of landmarks and tracks
    schedule:
      every: 10m                            # `watch --every` default (s, m, h)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1
_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


class PipelineError(ValueError):
    """A pipeline file that cannot be used; one line naming the file and the key."""


@dataclass(frozen=True)
class LandmarkStep:
    """One ``cohort landmarks`` run: the template's points found in every new series."""

    name: str
    template: str
    points: str


@dataclass(frozen=True)
class PrelabelStep:
    """``cohort prelabel`` with these supports (``IMAGE:LABELS``) and organs (comma list)."""

    supports: tuple[str, ...]
    organs: str
    boxes: str = "spl"


@dataclass(frozen=True)
class TrackStep:
    """Longitudinal tracking of the prior's lesions into each new study."""

    lesions: str | None = None


@dataclass(frozen=True)
class RegisterStep:
    """Each new study registered to the patient's prior."""

    kind: str = "rigid"


@dataclass(frozen=True)
class Pipeline:
    """A checked pipeline (see the module docstring for the YAML)."""

    source: str = "<defaults>"
    modalities: tuple[str, ...] = ("CT", "MR")
    min_slices: int = 16
    checkpoint: str | None = None
    storage_tier: str | None = None
    landmarks: tuple[LandmarkStep, ...] = ()
    prelabel: PrelabelStep | None = None
    track: TrackStep | None = None
    register: RegisterStep | None = None
    send_seg: bool = True
    send_sr: bool = True
    every_s: float | None = None
    steps: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        steps = ["embed"] + [f"landmarks:{s.name}" for s in self.landmarks]
        steps += [name for name, on in (("prelabel", self.prelabel), ("track", self.track),
                                        ("register", self.register)) if on is not None]
        object.__setattr__(self, "steps", tuple(steps))

    @property
    def pairs(self) -> bool:
        """Whether new studies are paired with the patient's prior (track or register)."""
        return self.track is not None or self.register is not None


def parse_duration(value: Any, where: str = "duration") -> float:
    """``"10m"`` / ``"30s"`` / ``"2h"`` / a number of seconds -> seconds (> 0)."""
    match = _DURATION_RE.match(str(value))
    if not match or float(match.group(1)) <= 0:
        raise PipelineError(f"{where}: expected a positive duration such as 30s, 10m or 2h, got {value!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class _Reader:
    """Typed access to one mapping of the YAML, with key paths in the errors."""

    def __init__(self, source: str, data: Any, path: str, known: tuple[str, ...]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PipelineError(f"{source}: {path or 'the file'} must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(known))
        if unknown:
            raise PipelineError(f"{source}: unknown key {self._at(path, unknown[0])}; known here: {', '.join(known)}")
        self.source, self.data, self.path = source, data, path

    @staticmethod
    def _at(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def where(self, key: str) -> str:
        return f"{self.source}: {self._at(self.path, key)}"

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise PipelineError(f"{self.where(key)} is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise PipelineError(f"{self.where(key)}: expected {names}, got {type(value).__name__} {value!r}")
        return value

    def text(self, key: str, required: bool = False) -> str | None:
        value = self.get(key, str, required=required)
        if required and not str(value).strip():
            raise PipelineError(f"{self.where(key)} must not be empty")
        return value

    def child(self, key: str, known: tuple[str, ...]) -> _Reader | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if value is True:
            value = {}
        return _Reader(self.source, value, self._at(self.path, key), known)


def _landmarks(top: _Reader) -> tuple[LandmarkStep, ...]:
    items = top.get("landmarks", list, default=[])
    steps, names = [], set()
    for i, item in enumerate(items):
        r = _Reader(top.source, item, f"{top.path}.landmarks[{i}]", ("name", "template", "points"))
        name = r.text("name", required=True)
        if not _NAME_RE.match(name):
            raise PipelineError(f"{r.where('name')}: {name!r} must match [a-z0-9_-]+ (it names an output folder)")
        if name in names:
            raise PipelineError(f"{r.where('name')}: {name!r} is used twice")
        names.add(name)
        steps.append(LandmarkStep(name, r.text("template", required=True), r.text("points", required=True)))
    return tuple(steps)


def _prelabel(steps: _Reader) -> PrelabelStep | None:
    r = steps.child("prelabel", ("supports", "organs", "boxes"))
    if r is None:
        return None
    supports = r.get("supports", list, required=True)
    if not supports or not all(isinstance(s, str) and ":" in s for s in supports):
        raise PipelineError(f"{r.where('supports')}: expected a non-empty list of IMAGE:LABELS strings")
    organs = r.get("organs", (str, list), required=True)
    organs = ",".join(map(str, organs)) if isinstance(organs, list) else organs
    if not organs.strip():
        raise PipelineError(f"{r.where('organs')} must not be empty")
    boxes = r.text("boxes") or "spl"
    if boxes not in ("spl", "wpl"):
        raise PipelineError(f"{r.where('boxes')}: expected spl or wpl, got {boxes!r}")
    return PrelabelStep(tuple(supports), organs, boxes)


def pipeline_from_dict(data: Any, source: str = "<pipeline>") -> Pipeline:
    """A :class:`Pipeline` from parsed YAML.

    Raises:
        PipelineError: Unknown keys, wrong types, missing required values, a bad version.
    """
    top = _Reader(source, data, "", ("version", "series", "model", "steps", "send_back", "schedule"))
    version = top.get("version", int, required=True)
    if version != VERSION:
        raise PipelineError(f"{top.where('version')}: this uae-ray reads version {VERSION}, got {version}")
    series = top.child("series", ("modalities", "min_slices")) or _Reader(source, {}, "series", ())
    modalities = series.get("modalities", list, default=["CT", "MR"])
    if not modalities or not all(isinstance(m, str) and m.strip() for m in modalities):
        raise PipelineError(f"{series.where('modalities')}: expected a non-empty list such as [CT, MR]")
    min_slices = series.get("min_slices", int, default=16)
    if min_slices < 1:
        raise PipelineError(f"{series.where('min_slices')}: must be >= 1")
    model = top.child("model", ("checkpoint", "storage_tier")) or _Reader(source, {}, "model", ())
    tier = model.text("storage_tier")
    if tier is not None:
        from uae_ray.cohort.maps_io import TIERS

        if tier not in TIERS:
            raise PipelineError(f"{model.where('storage_tier')}: unknown tier {tier!r}; known: {', '.join(TIERS)}")
    steps = (top.child("steps", ("embed", "landmarks", "prelabel", "track", "register"))
             or _Reader(source, {}, "steps", ()))
    if steps.data.get("embed") is False:
        raise PipelineError(f"{steps.where('embed')}: cannot be turned off (every other step reads the embeddings)")
    track = steps.child("track", ("lesions",))
    register = steps.child("register", ("kind",))
    kind = register.text("kind") if register else None
    from uae_ray.tasks.transforms import KINDS

    if kind is not None and kind not in KINDS:
        raise PipelineError(f"{register.where('kind')}: expected one of {', '.join(KINDS)}, got {kind!r}")
    send = top.child("send_back", ("seg", "sr")) or _Reader(source, {}, "send_back", ())
    schedule = top.child("schedule", ("every",)) or _Reader(source, {}, "schedule", ())
    every = schedule.get("every", (str, int, float))
    return Pipeline(
        source=source,
        modalities=tuple(m.strip().upper() for m in modalities),
        min_slices=min_slices,
        checkpoint=model.text("checkpoint"),
        storage_tier=tier,
        landmarks=_landmarks(steps),
        prelabel=_prelabel(steps),
        track=TrackStep(track.text("lesions")) if track else None,
        register=RegisterStep(kind or "rigid") if register else None,
        send_seg=send.get("seg", bool, default=True),
        send_sr=send.get("sr", bool, default=True),
        every_s=parse_duration(every, schedule.where("every")) if every is not None else None,
    )


def load_pipeline(path: str | Path) -> Pipeline:
    """Reads and checks a pipeline YAML file (local path).

    Raises:
        PipelineError: Missing or unparsable file, or any schema error (one line).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PipelineError(f"{path}: cannot read the pipeline file ({e.strerror or type(e).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{path}: not valid YAML{at}") from None
    return pipeline_from_dict(data, str(path))
