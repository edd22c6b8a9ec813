"""Every command the README shows is checked as written.

Each ``python -m MODULE ...`` / ``torchrun ... -m MODULE ...`` line of the README's ``bash`` blocks
(continuation lines joined, comments dropped) is parsed by that module's real argument parser:
``main(argv)`` runs until its parser has accepted the arguments, then stops (nothing is trained
or written). Its ``--config`` file must exist and its ``key=value`` overrides must be keys of the
config schema with values of the right type. ``bash scripts/X.sh`` lines must name existing
scripts. Commands that need a finished run (evaluate / generate on ``runs/quickstart/runs/NAME``)
are run for real in ``tests/test_compare.py`` against a compare output of the same layout.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest
from omegaconf import OmegaConf

from pretrain.config import Config
from tests.conftest import ROOT

README = ROOT / "README.md"


def bash_commands(text: str) -> List[str]:
    """Commands of the ```bash blocks: continuation lines joined, comments stripped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(" ".join(shlex.quote(w) for w in words))
    return out


def module_and_args(command: str) -> Tuple[str, List[str]]:
    words = shlex.split(command)
    if words[0] == "torchrun":
        i = words.index("-m")
        return words[i + 1], words[i + 2:]
    assert words[:2] == ["python", "-m"], command
    return words[2], words[3:]


COMMANDS = [c for c in bash_commands(README.read_text()) if c.startswith(("python -m", "torchrun"))]
SCRIPTS = [c for c in bash_commands(README.read_text()) if c.startswith("bash ")]


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parse_with_real_parser(module: str, argv: List[str], monkeypatch) -> argparse.Namespace:
    """Run ``module.main(argv)`` until its parser accepted ``argv`` (a bad option exits 2)."""
    real = argparse.ArgumentParser.parse_args

    def stop_after_parsing(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parsing)
    mod = importlib.import_module(module)
    with pytest.raises(_Parsed) as info:
        mod.main(argv)
    return info.value.namespace


def test_the_readme_shows_commands():
    modules = {module_and_args(c)[0] for c in COMMANDS}
    assert {"pretrain.train", "pretrain.evaluate", "pretrain.generate", "pretrain.compare",
            "data_prep.prepare", "data_prep.bytes", "data_prep.tokenizer", "launch.slurm"} <= modules


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_as_written(command, monkeypatch):
    module, argv = module_and_args(command)
    ns = parse_with_real_parser(module, argv, monkeypatch)
    config = getattr(ns, "config", None)
    if config is not None:
        assert (ROOT / config).is_file(), f"{command}: no config file {config}"
    overrides = [w for w in (getattr(ns, "overrides", None) or []) if "=" in w]
    merged = OmegaConf.merge(OmegaConf.structured(Config),
                             OmegaConf.load(ROOT / config) if config else {})
    for item in overrides:  # unknown keys and wrong types raise here
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))


@pytest.mark.parametrize("command", SCRIPTS)
def test_readme_scripts_exist(command):
    script = shlex.split(command)[1]
    assert (ROOT / script).is_file(), command


def test_the_doc_check_sees_a_wrong_option_and_a_wrong_key(monkeypatch):
    with pytest.raises(SystemExit):
        parse_with_real_parser("pretrain.evaluate", ["--checkpoint", "x", "--mods", "basic"],
                               monkeypatch)
    ns = parse_with_real_parser("pretrain.train", ["--config", "configs/debug.yaml",
                                                   "model.patch_sise=4"], monkeypatch)
    with pytest.raises(Exception, match="patch_sise"):
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(ns.overrides))


def test_readme_run_paths_match_the_compare_layout():
    """The README points evaluate / generate / export at runs/quickstart/runs/NAME (the
    directories the quick start's compare writes, its run_dir per model) or at the run_dir of a
    training command shown in the README."""
    text = README.read_text()
    trained = {a.split("=", 1)[1] for cmd in COMMANDS for a in module_and_args(cmd)[1]
               if a.startswith("run_dir=")}
    for cmd in COMMANDS:
        module, argv = module_and_args(cmd)
        if module in ("pretrain.evaluate", "pretrain.generate", "pretrain.export"):
            ckpt = argv[argv.index("--checkpoint") + 1]
            assert ckpt in trained or re.fullmatch(
                r"runs/quickstart/runs/(megabyte|transformer_bytes|transformer_subword)", ckpt), cmd
    assert "--out runs/quickstart" in (ROOT / "scripts" / "quickstart.sh").read_text()
    assert "runs/quickstart" in text
    source = Path(ROOT / "pretrain" / "comparison" / "matching.py").read_text()
    assert "run_dir={out / 'runs' / (name + suffix)}" in source
    from pretrain.comparison.sweep import run_suffix

    # The plain comparison (its budget, its LR) has no suffix: runs/quickstart/runs/NAME.
    assert run_suffix(3_276_800, 2e-3, 3_276_800, 2e-3) == ""
    assert run_suffix(819_200, 2e-3, 3_276_800, 2e-3) != ""


# ------------------------------------------------- `source scripts/setup_env.sh` in the user's shell

def test_sourcing_setup_env_leaves_the_callers_shell_options_alone():
    """The README says to `source scripts/setup_env.sh` in one's own shell: it activates .venv and
    sets PYTHONPATH but no `set -euo pipefail`, which would close an interactive shell at its
    next failing command."""
    script = ('source scripts/setup_env.sh; echo "opts=$-"; false; echo "after a failing command"; '
              'command -v python; echo "path=$PYTHONPATH"')
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, text=True, capture_output=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    opts = re.search(r"opts=(\S*)", out.stdout).group(1)
    assert "e" not in opts and "u" not in opts, opts
    assert "after a failing command" in out.stdout
    assert str(ROOT / ".venv" / "bin" / "python") in out.stdout
    assert f"path={ROOT}" in out.stdout


def test_a_failed_setup_returns_1_to_the_shell_that_sourced_it(tmp_path):
    """A venv that cannot be made: one `[setup] failed` line, `source` returns 1 and the shell
    goes on (a caller under `set -e`, like quickstart.sh, stops there instead)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup_env.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "requirements.txt", tmp_path)
    (tmp_path / ".venv").write_text("a file where the venv should be\n")
    script = 'source scripts/setup_env.sh; echo "rc=$?"; echo "still here"'
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, text=True, capture_output=True,
                         timeout=120)
    assert "rc=1" in out.stdout and "still here" in out.stdout, (out.stdout, out.stderr)
    assert f"[setup] failed: {tmp_path}/.venv is not ready" in out.stderr
    strict = subprocess.run(["bash", "-c", "set -e; " + script], cwd=tmp_path, text=True,
                            capture_output=True, timeout=120)
    assert strict.returncode != 0 and "still here" not in strict.stdout
