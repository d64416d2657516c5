"""The migration guides, followed verbatim: docs/migrating.md ("Migrating from horovod.mxnet")
and docs/migrating-torch.md ("Migrating from horovod.torch").

Each guide shows a plain Horovod script, the diff that makes it an hvd_ps script, and the
commands that run both. Checked: the script shown is the plain example byte for byte
(examples/train_digits_horovod.py, train_digits_torch_horovod.py); the diff shown is the
unified diff of that file against the ported one (train_digits_hvd_ps.py,
train_digits_torch_hvd_ps.py), so applying it gives the hvd_ps script, and it changes at most
five statements of the PyTorch one; and each command shown, run as written under horovodrun
(4 ranks; hvd_ps: 2 groups), trains to a sane test accuracy and leaves nothing behind.
"""

from __future__ import annotations

import ast
import difflib
import re
import shlex
import shutil
import sys
from pathlib import Path

import job_run  # tests/job_run.py
import pytest

ROOT = Path(__file__).resolve().parents[2]
#: guide -> (plain script, ported script, the guide's file, its heading)
GUIDES = {
    "mxnet": (
        "examples/train_digits_horovod.py",
        "examples/train_digits_hvd_ps.py",
        "docs/migrating.md",
        "# Migrating from horovod.mxnet",
    ),
    "torch": (
        "examples/train_digits_torch_horovod.py",
        "examples/train_digits_torch_hvd_ps.py",
        "docs/migrating-torch.md",
        "# Migrating from horovod.torch",
    ),
}
TIMEOUT = 240


def section(guide: str) -> str:
    _, _, path, heading = GUIDES[guide]
    text = (ROOT / path).read_text()
    assert text.startswith(heading + "\n"), f"{path} does not start with {heading!r}"
    body = text.split(heading, 1)[1]
    return body.split("\n## ", 1)[0]  # up to the next section


def blocks(guide: str, lang: str) -> list:
    return re.findall(rf"^```{lang}\n(.*?)^```$", section(guide), flags=re.S | re.M)


@pytest.mark.parametrize("guide", list(GUIDES))
def test_guide_shows_the_plain_script(guide: str) -> None:
    shown = blocks(guide, "python")
    assert len(shown) == 1, "one python block: the plain Horovod script"
    assert shown[0] == (ROOT / GUIDES[guide][0]).read_text()


@pytest.mark.parametrize("guide", list(GUIDES))
def test_guide_diff_is_the_diff(guide: str) -> None:
    plain_name, ported_name = GUIDES[guide][:2]
    shown = blocks(guide, "diff")
    assert len(shown) == 1, "one diff block"
    plain = (ROOT / plain_name).read_text().splitlines(keepends=True)
    ported = (ROOT / ported_name).read_text().splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(plain, ported, plain_name, ported_name))
    assert shown[0] == diff


def test_the_pytorch_port_changes_at_most_five_statements() -> None:
    plain_name, ported_name = GUIDES["torch"][:2]
    plain = ast.parse((ROOT / plain_name).read_text()).body
    ported = ast.parse((ROOT / ported_name).read_text()).body
    matcher = difflib.SequenceMatcher(
        None, [ast.dump(n) for n in plain], [ast.dump(n) for n in ported]
    )
    changed = sum(
        max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"
    )
    assert changed <= 5, f"{changed} statements changed"


@pytest.mark.parametrize("guide", list(GUIDES))
def test_guide_diff_applies_to_the_plain_script(guide: str) -> None:
    """Applying the shown hunks to the plain script gives the hvd_ps script (a second check,
    independent of difflib producing the same text)."""
    plain_name, ported_name = GUIDES[guide][:2]
    result = (ROOT / plain_name).read_text().splitlines()
    lines = blocks(guide, "diff")[0].splitlines()[2:]  # after the --- / +++ header
    offset = 0
    for n, line in enumerate(lines):
        m = re.match(r"@@ -(\d+),(\d+) \+\d+,\d+ @@", line)
        if not m:
            continue
        start = int(m.group(1)) - 1 + offset
        hunk = []
        for body in lines[n + 1 :]:
            if body.startswith("@@"):
                break
            hunk.append(body)
        old = [b[1:] for b in hunk if b[:1] in (" ", "-")]
        new = [b[1:] for b in hunk if b[:1] in (" ", "+")]
        assert result[start : start + len(old)] == old, f"hunk {line} does not apply"
        result[start : start + len(old)] = new
        offset += len(new) - len(old)
    assert result == (ROOT / ported_name).read_text().splitlines()


def commands(guide: str) -> list:
    shown = blocks(guide, "bash")
    assert len(shown) == 1, "one bash block: the commands"
    return [ln for ln in shown[0].splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("guide", list(GUIDES))
def test_guide_commands_run_the_two_scripts(guide: str) -> None:
    scripts = [next(w for w in shlex.split(c) if w.endswith(".py")) for c in commands(guide)]
    assert scripts == list(GUIDES[guide][:2])


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("horovodrun", path=str(Path(sys.executable).parent)) is None,
    reason="horovodrun not found next to this Python (run scripts/bootstrap.sh)",
)
@pytest.mark.parametrize("index", [0, 1], ids=["horovod", "hvd_ps"])
@pytest.mark.parametrize("guide", list(GUIDES))
def test_guide_command_trains(guide: str, index: int, tmp_path: Path) -> None:
    command = commands(guide)[index]
    assert command.split()[1] == "horovodrun"
    # run as shown (its VAR=value prefix included); PYTHONUNBUFFERED off, as in a plain shell,
    # so the scripts' print() calls are one write each
    job_env = job_run.env(str(tmp_path), PYTHONUNBUFFERED="")
    proc = job_run.run(["bash", "-c", command], job_env, TIMEOUT)
    out = proc.stdout
    tail = (out + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"{command}: exit code {proc.returncode}\n{tail}"
    epochs = re.findall(r"^\[1,0\]<stdout>:epoch (\d+): loss (\d+\.\d+)$", out, flags=re.M)
    assert [int(e) for e, _ in epochs] == list(range(1, 11)), tail
    assert float(epochs[-1][1]) < float(epochs[0][1])  # it learns
    acc = re.findall(r"^\[1,0\]<stdout>:test accuracy: (\d\.\d{4})$", out, flags=re.M)
    assert len(acc) == 1, tail
    assert float(acc[0]) >= 0.93, f"{command}: test accuracy {acc[0]}"
