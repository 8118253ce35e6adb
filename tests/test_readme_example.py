"""The README's Python block, exactly as a reader would run it: no main guard, nothing added.

The block is read from README.md at test time, so the test follows the README. It runs four
ways a reader runs code: as a script file, fed on standard input (``python - < file``), as
``python -c``, and typed into the interactive interpreter (``python -i``). Each run gets its own cache holding only the float export (hard links to
the session's), so each one compresses in a worker process: the step that used to re-run the
script in the child and hang.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import linked_cache_copy
from markers import needs_smollm2

README = Path(__file__).resolve().parent.parent / "README.md"
RUN_TIMEOUT_S = 300


def readme_python_block() -> str:
    text = README.read_text()
    section = text[text.index("\n## Python\n") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md has no ```python block under '## Python'"
    return match.group(1)


def test_the_block_has_no_main_guard_and_uses_the_public_api() -> None:
    code = readme_python_block()
    assert "__main__" not in code
    assert "nbkit.compress(" in code and "nbkit.ChatSession(" in code


@needs_smollm2
@pytest.mark.integration
@pytest.mark.parametrize("how", ["script", "stdin", "dash-c", "repl"])
def test_the_readme_python_block_runs_unchanged(real_float_cache: Any, tmp_path: Path, how: str) -> None:
    code = readme_python_block()
    cache_dir = linked_cache_copy(real_float_cache.root, tmp_path / "cache")
    compressed_dir = cache_dir / "openvino-compressed"
    # The shared cache may hold other models' compressions (test_finetune builds its tuned model's there).
    linked = set(compressed_dir.iterdir()) if compressed_dir.is_dir() else set()
    env = {**os.environ, "NBKIT_CACHE_DIR": str(cache_dir)}
    script = tmp_path / "example.py"
    script.write_text(code)
    argv = {
        "script": [sys.executable, str(script)],
        "stdin": [sys.executable, "-"],
        "dash-c": [sys.executable, "-c", code],
        "repl": [sys.executable, "-i", "-q"],  # the interactive interpreter, one statement at a time
    }[how]
    run = subprocess.run(
        argv,
        input=code if how in ("stdin", "repl") else None,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=RUN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    # print(int4.weights_bytes, int4.weight_precisions): bytes, then the share of each precision
    assert re.match(r"^\d+ \{'int4': [0-9.]+, 'int8': [0-9.]+\}$", lines[0]), run.stdout
    assert re.search(r"\d+(\.\d+)? \d+(\.\d+)?$", lines[-1]), run.stdout  # ttft_ms tokens_per_s
    compressed = [p for p in compressed_dir.iterdir() if p not in linked]
    assert len(compressed) == 1  # this run compressed, in its worker
