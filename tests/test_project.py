"""The project's promises about itself: README commands, CI script, assets."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert match, f"README has no code block after <!-- {marker} -->"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _command_after("test-command")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_command_installs_the_project():
    main_command = _command_after("main-command")
    assert "pip install" in main_command and "stylize" in main_command


def test_assets_are_small_and_licensed():
    files = [p for p in (ROOT / "assets").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3 * 2**20
    licences = (ROOT / "assets" / "LICENSES.md").read_text()
    for p in files:
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and p.parent.name in {"photos", "styles"}:
            assert p.name in licences, f"{p.name} has no licence line in assets/LICENSES.md"
