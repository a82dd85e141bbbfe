"""What the documentation says a flag defaults to is what the server does: every "`--flag`
(default N" in docs/ and the README is checked against the settings' own default."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from orchestrator.settings import Settings, build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# "`--barge-in-min` (default 0.09", "`--max-session` (default 8)": a number right after it.
DOCUMENTED_DEFAULT = re.compile(r"`(--[A-Za-z0-9_-]+)`\s*\(default:?\s*(-?\d+(?:\.\d+)?)")


def flag_defaults() -> dict[str, object]:
    """Each of the server's flags (aliases too) with its field's default."""
    by_name = {f.name: f.default for f in fields(Settings)}
    actions = build_parser()._actions
    return {flag: by_name[action.dest] for action in actions for flag in action.option_strings
            if action.dest in by_name}


def documented_defaults() -> list[tuple[str, str, str]]:
    """(page, flag, the default it states) for every server flag with a stated number."""
    known = flag_defaults()
    return [(page.name, m[1], m[2]) for page in PAGES
            for m in DOCUMENTED_DEFAULT.finditer(page.read_text()) if m[1] in known]


def test_documented_flag_defaults_are_the_settings_defaults():
    known = flag_defaults()
    found = documented_defaults()
    assert any(flag == "--barge-in-min" for _, flag, _ in found), found  # the pattern still finds it
    wrong = [f"{page}: {flag} documented {stated}, is {known[flag]}"
             for page, flag, stated in found if float(stated) != float(known[flag])]
    assert not wrong, wrong
