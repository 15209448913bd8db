# Copyright (c) svreg-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Style gates of the model zoo for every bundle in ``bundles/``: formatted JSON configs, linted Python, no large
files besides the weights, no absolute personal paths. Only the files that would be packed are checked (run
outputs such as ``data/`` or ``logs/`` are not, see :func:`svreg_monai.apps.bundle_tools.bundle_files`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svreg_monai.apps.bundle_tools import bundle_files

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
MAX_BYTES = 1 << 20
PERSONAL_PATH = re.compile(r"(?<![\w.])(/home/|/Users/|/root/|/scratch/|[A-Za-z]:\\Users\\)")
TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".md", ".txt", ".conf", ".py", ".cfg", ".ini", ""}


def shipped(bundle: Path) -> list[Path]:
    return [bundle / p for p in bundle_files(bundle)]


def test_there_are_bundles():
    assert [b.name for b in BUNDLES] and "brain_mri_svreg" in [b.name for b in BUNDLES]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_json_configs_are_formatted(bundle):
    files = [p for p in shipped(bundle) if p.suffix == ".json"]
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            content = json.loads(text)
        except json.JSONDecodeError as e:
            pytest.fail(f"{path.relative_to(REPO)} is not valid JSON: {e}")
        expected = json.dumps(content, indent=4)
        if text.rstrip("\n") != expected:
            expected_lines, lines = expected.splitlines(), text.rstrip("\n").splitlines()
            first = next((i for i, (a, b) in enumerate(zip(lines, expected_lines)) if a != b), len(expected_lines))
            pytest.fail(
                f"{path.relative_to(REPO)} is not formatted as json.dumps(config, indent=4) (key order kept); first "
                f"difference at line {first + 1}: {lines[first] if first < len(lines) else '<end>'!r}"
            )


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_no_large_files_but_the_weights(bundle):
    large = [
        f"{p.relative_to(REPO)} ({p.stat().st_size} bytes)"
        for p in shipped(bundle)
        if p.stat().st_size > MAX_BYTES and not (p.parent.name == "models" and p.suffix == ".pt")
    ]
    assert not large, f"files over 1 MB in a bundle (only models/*.pt may be): {large}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_no_absolute_personal_paths(bundle):
    found = []
    for path in shipped(bundle):
        if path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if PERSONAL_PATH.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not found, "absolute personal paths in bundle files:\n" + "\n".join(found)


def test_python_files_in_bundles_pass_ruff():
    files = [str(p) for b in BUNDLES for p in shipped(b) if p.suffix == ".py"]
    if not files:
        pytest.skip("no Python files in the bundles (the configs reference package components only)")
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run([*cmd, *args, *files], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0 and "No module named ruff" in proc.stderr:
            pytest.skip("ruff is not installed (pip install svreg-monai[test])")
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
