"""The console script as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def kus(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("kus")
    env = dict(os.environ, KUS_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=300)


def test_editors_lists_registered_names_one_per_line(tmp_path: Path) -> None:
    from editing.registry import editor_names

    result = kus("editors", home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines == editor_names() and "ft" in lines


def test_errors_are_one_clear_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    result = kus("--quiet", "show", "42", home=tmp_path)
    assert result.returncode == 1
    assert "not_found" in result.stdout and "42" in result.stdout
    result = kus("--quiet", "rollback", "--reason", "nothing to undo", home=tmp_path)
    assert result.returncode == 1 and "no promoted delta" in result.stdout
