"""The tree as the house style asks: ruff's lint and format, and the import layering (`docs/architecture.md`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = REPO.parent / "shared" / "tools" / "layers.py"  # the project's layering check, beside the checkout
RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args):
    result = subprocess.run([str(RUFF), *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    not LAYERS.is_file(), reason=f"no layering tool at {LAYERS} (the shared folder beside the checkout)"
)
def test_no_import_circle_no_cross_plugin_import_and_short_modules():
    result = subprocess.run([sys.executable, str(LAYERS), str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
