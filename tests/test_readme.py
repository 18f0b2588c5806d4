"""Every command line the README shows runs and succeeds (a reader copies them verbatim)."""
import re
import shlex
from pathlib import Path

import pytest

from memlib.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The ``python -m memlib ...`` lines inside the README's code blocks, comments removed."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
    out = []
    for lang, block in blocks:
        if lang not in ("bash", "sh", "console", ""):
            continue
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python -m memlib"):
                out.append(line)
    return out


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 5 and {c.split()[3] for c in COMMANDS} >= {"params", "kv", "train", "lora"}


@pytest.mark.parametrize("line", [c for c in COMMANDS if " measure " not in c])
def test_readme_command_runs(line, capsys):
    argv = shlex.split(line)[3:]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()


@pytest.mark.bench
@pytest.mark.parametrize("line", [c for c in COMMANDS if " measure " in c])
def test_readme_measure_command_runs(line, capsys):
    pytest.importorskip("torch")
    assert cli_main(shlex.split(line)[3:] + ["--quiet"]) == 0, capsys.readouterr().err
