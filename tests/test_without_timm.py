"""timm is an optional extra: without it the core imports and runs, `scan presets` still lists
every preset, and a timm backbone is a one-line error saying how to install it."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["timm"] = None  # makes `import timm` fail as when it is not installed
import scan, scan.cli, scan.pipeline
from scan.config import build_config
from scan.errors import ScanError
assert build_config("digits").pretext.backbone == "small_cnn"
assert scan.cli.main(["presets"]) == 0
try:
    build_config("photos", data=".")
except ScanError as err:
    print("ERROR", err)
"""


def test_core_works_without_timm():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("digits: source ") for line in lines)
    assert any(line.startswith("photos: unavailable here: pretext.backbone timm:") for line in lines)
    assert lines[-1].startswith("ERROR pretext.backbone timm:vit_small_patch16_224.dino: timm is not installed: pip install timm")
