"""Every ```bash and ```python block of README.md, docs/*.md and docker/README.md, run as written.

Each block runs in a fresh process (``bash -euo pipefail`` or ``python -``) with ``.venv/bin``
first on ``PATH``, from a scratch folder that links the repository's ``configs/``, ``tools/``,
``benchmarks/`` and ``docs/``, so what a block writes (``output/...``) stays out of the checkout.
The line right above a block may say how to run it:

- ``<!-- docs-test: skip: REASON -->``: not run here; REASON says why (e.g. no Docker engine,
  no COCO, no Slurm). Every skip is listed by the test ids below.
- ``<!-- docs-test: print-config -->``: every ``tools/train_net.py`` command of the block runs with
  ``--print-config`` (configs, flags and overrides are checked, nothing trains): for commands
  that need COCO or GPUs.

In a python block, a line ``print(...)  # EXPECTED`` states what it prints: the block's output
lines must equal those comments, in order.

``yaml``, ``text`` and ``console`` blocks are never run.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

DOC_FILES = ["README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO)), "docker/README.md"]
LINKED = ["configs", "tools", "benchmarks", "docs"]
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|print-config)\s*(?::\s*(.*?))?\s*-->")
STATED_OUTPUT = re.compile(r"^print\(.*\)\s+#\s*(.+?)\s*$", re.M)


def doc_blocks():
    """(file, line, language, marker, reason, code) of every bash/python block."""
    blocks = []
    for name in DOC_FILES:
        text = open(os.path.join(REPO, name)).read()
        for match in BLOCK.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            line = text[: match.start()].count("\n") + 1
            blocks.append(
                pytest.param(
                    match.group(1),
                    marker.group(1) if marker else "",
                    (marker.group(2) or "") if marker else "",
                    match.group(2),
                    id=f"{name}:{line}" + (f"[{marker.group(1)}]" if marker else ""),
                )
            )
    return blocks


@pytest.fixture
def workdir(tmp_path):
    for name in LINKED:
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    return tmp_path


def run_block(language, code, cwd):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-"]
    return subprocess.run(
        command,
        input=code if language == "python" else None,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.parametrize("language, marker, reason, code", doc_blocks())
def test_documented_block_runs_as_written(language, marker, reason, code, workdir):
    if marker == "skip":
        assert reason, "a docs-test skip marker needs a reason: <!-- docs-test: skip: REASON -->"
        pytest.skip(reason)
    if marker == "print-config":
        assert "tools/train_net.py" in code, "print-config marks a block of train_net commands"
        code = code.replace("tools/train_net.py", "tools/train_net.py --print-config")
    proc = run_block(language, code, workdir)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    if language == "python":
        assert proc.stdout.splitlines() == STATED_OUTPUT.findall(code), proc.stderr[-3000:]
    if marker == "print-config":
        assert "Traceback" not in proc.stderr


def test_the_doc_files_exist_and_every_marker_is_known():
    for name in DOC_FILES:
        text = open(os.path.join(REPO, name)).read()
        for comment in re.findall(r"<!--\s*docs-test.*?-->", text):
            assert MARKER.fullmatch(comment), f"{name}: unknown marker {comment}"
    assert len(doc_blocks()) >= 10
