"""Help that explains: every verb has a description and examples, every option a help text,
shipped models are listed, ``--version`` and ``-v/-q`` work before or after the verb."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from uae_ray.cli import DEFAULT_MODEL, SHIPPED_MODELS, build_parser


def _verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub-)command parser below ``parser`` with its command path."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(((*path, name), sub))
                out.extend(_verbs(sub, (*path, name)))
    return out


VERBS = _verbs(build_parser())


def test_every_verb_is_covered() -> None:
    names = {" ".join(p) for p, _ in VERBS}
    assert {"landmarks", "track", "register", "localize", "segment", "cohort prelabel", "bench accuracy"} <= names
    assert len(VERBS) >= 20


@pytest.mark.parametrize("path,parser", VERBS, ids=[" ".join(p) for p, _ in VERBS])
def test_verb_has_description_example_and_option_help(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    assert parser.description and len(parser.description) > 60, f"{' '.join(path)}: no description"
    assert parser.epilog and f"uae-ray {' '.join(path)}" in parser.epilog, f"{' '.join(path)}: no example"
    bare = [a.option_strings or [a.dest] for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not (a.help or "").strip()]
    assert not bare, f"{' '.join(path)}: options without help: {bare}"
    parser.format_help()  # every %(default)s expands


def test_defaults_are_shown() -> None:
    text = dict(VERBS)[("register",)].format_help()
    assert "(default: rigid)" in " ".join(text.split())
    text = "".join(dict(VERBS)[("bench", "accuracy")].format_help().split())  # wrapping may split a path
    assert "(default:bench-results/accuracy.json)" in text and "(default:0)" in text


def test_checkpoint_help_lists_the_shipped_models() -> None:
    from uae_ray.models.checkpoint import DEFAULT_CHECKPOINT_NAME, SHIPPED_WEIGHTS

    assert set(SHIPPED_MODELS) == set(SHIPPED_WEIGHTS) and SHIPPED_WEIGHTS[DEFAULT_MODEL] == DEFAULT_CHECKPOINT_NAME
    text = "".join(dict(VERBS)[("landmarks",)].format_help().split())  # wrapping may break a name at a hyphen
    assert all(name in text for name in SHIPPED_MODELS) and f"default{DEFAULT_MODEL}" in text


@pytest.mark.parametrize("argv", [["-v", "stack", "status"], ["stack", "status", "-v"], ["stack", "-v", "status"]])
def test_verbose_anywhere(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.verbose is True and args.quiet is False


def test_quiet_after_the_verb() -> None:
    args = build_parser().parse_args(["stack", "status", "-q"])
    assert args.quiet is True and args.verbose is False


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "uae_ray.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("uae-ray 0.")
