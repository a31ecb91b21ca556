"""The fixed leave-patient-out split of ``../shared/data`` that every accuracy figure uses.

A split names *patients* (the manifest's opaque ``patient`` ids), never scans: every scan of a
test patient (a CT and its co-registered MR, say) is a test scan. The shipped split
``patients-v1`` (``patients-v1.json`` beside this file) was drawn once by :func:`draw_split`
and is fixed from then on; its rule:

* ``openkbp_pt<N>`` (170 head-neck CTs, one patient each): the 30 patients of smallest
  ``sha256("patients-v1:" + patient)`` are test, the other 140 train;
* CT-MR pairs ``sts_004 .. sts_013``: the 4 patients of smallest hash are test (``sts_001`` and
  ``sts_002`` stay in train: every earlier model saw them);
* of the 13 earlier patients, ``ts_upper_abdomen`` and ``ts_aorta_cta`` are test, so that the
  cross-patient organ-centroid part of ``bench accuracy`` has unseen targets; the rest train.

Models record the case ids they were trained on (checkpoint metadata ``trained_on``);
:func:`check_unseen` refuses an evaluation on a test patient that a model has seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

#: The split every benchmark and training run defaults to.
DEFAULT_SPLIT = "patients-v1"

_HERE = Path(__file__).resolve().parent


class SplitError(ValueError):
    """A split that cannot be read, or a model evaluated on patients it was trained on."""


@dataclass(frozen=True)
class PatientSplit:
    """Train / test assignment of patients.

    Attributes:
        name: Split name (recorded with every figure).
        test_patients: Patient ids of the test side; every other patient is train.
        rule: How the split was drawn (documentation).
    """

    name: str
    test_patients: frozenset[str]
    rule: str = ""

    def is_test(self, patient: str) -> bool:
        """Whether a patient id is on the test side."""
        return patient in self.test_patients

    def cases(self, case_patients: Mapping[str, str], side: str) -> list[str]:
        """Case ids of one side (``"train"``, ``"test"`` or ``"all"``), sorted.

        Args:
            case_patients: Case id -> patient id (e.g. :func:`read_case_patients`).
            side: Which side.
        """
        if side not in ("train", "test", "all"):
            raise SplitError(f"split side must be train, test or all; got {side!r}")
        return sorted(c for c, p in case_patients.items()
                      if side == "all" or (side == "test") == self.is_test(p))


def read_case_patients(data_dir: str | Path) -> dict[str, str]:
    """Case id -> patient id from ``<data_dir>/manifest.csv`` (a case without one is its own patient)."""
    from uae_ray.data.manifest import manifest_rows

    try:
        return {r["case_id"]: r["patient"] for r in manifest_rows(data_dir)}
    except FileNotFoundError as exc:
        raise SplitError(str(exc)) from None


def load_split(name_or_path: str | Path = DEFAULT_SPLIT) -> PatientSplit:
    """A shipped split by name (``patients-v1``) or a split JSON file (``{"name", "test_patients"}``)."""
    text = str(name_or_path)
    path = _HERE / f"{text}.json" if not text.endswith(".json") else Path(text)
    if not path.is_file():
        shipped = sorted(p.stem for p in _HERE.glob("*.json"))
        raise SplitError(f"{text}: no such split (shipped: {', '.join(shipped)}; or give a .json file)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        patients = doc["test_patients"]
    except (ValueError, KeyError) as exc:
        raise SplitError(f"{path}: not a split file ({exc.__class__.__name__}: {exc})") from None
    ids = patients.keys() if isinstance(patients, dict) else patients
    return PatientSplit(str(doc.get("name", path.stem)), frozenset(str(p) for p in ids), str(doc.get("rule", "")))


def check_unseen(trained_on: Iterable[str], eval_cases: Iterable[str], case_patients: Mapping[str, str],
                 model: str = "model") -> None:
    """Refuse to evaluate a model on a patient it was trained on.

    Args:
        trained_on: Case ids of the model's training data (checkpoint metadata).
        eval_cases: Case ids the evaluation reports figures on.
        case_patients: Case id -> patient id.
        model: Model name for the message.

    Raises:
        SplitError: naming the model and up to five of the seen evaluation cases.
    """
    seen = {case_patients.get(c, c) for c in trained_on}
    clash = sorted(c for c in eval_cases if case_patients.get(c, c) in seen)
    if clash:
        more = f" and {len(clash) - 5} more" if len(clash) > 5 else ""
        raise SplitError(
            f"{model} was trained on patients of the evaluation cases {', '.join(clash[:5])}{more}: "
            "its figures there would not be leave-patient-out (evaluate another split or part, or retrain "
            "on the split's train side)"
        )


def _rank(patients: Iterable[str], name: str) -> list[str]:
    return sorted(set(patients), key=lambda p: hashlib.sha256(f"{name}:{p}".encode()).hexdigest())


def draw_split(case_patients: Mapping[str, str], name: str = DEFAULT_SPLIT, n_openkbp: int = 30,
               n_sts: int = 4, fixed_test: tuple[str, ...] = ("ts_upper_abdomen", "ts_aorta_cta")) -> dict:
    """Draw a split by the rule of the module docstring; returns the JSON document.

    Used once to write ``patients-v1.json``; the shipped file, not this function, is the split.
    """
    kbp = _rank((p for c, p in case_patients.items() if c.startswith("openkbp_")), name)[:n_openkbp]
    sts_new = [p for c, p in case_patients.items() if c.startswith("sts_") and c[4:7].isdigit() and int(c[4:7]) >= 4]
    sts = _rank(sts_new, name)[:n_sts]
    fixed = [case_patients[c] for c in fixed_test]
    test = set(kbp) | set(sts) | set(fixed)
    cases = {p: sorted(c for c, q in case_patients.items() if q == p) for p in sorted(test)}
    return {"name": name, "rule": (__doc__ or "").split("its rule:")[1].split("Models record")[0].strip(),
            "test_patients": cases}


__all__ = ["DEFAULT_SPLIT", "PatientSplit", "SplitError", "check_unseen", "draw_split", "load_split", "read_case_patients"]
