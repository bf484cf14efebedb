"""Start-up: `--version` and every `--help` run without importing torch, e3nn or ase, and the
help reads correctly at 80 columns (no option name cut, no line longer than 80)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
COMMANDS = ("quantize", "train", "eval", "lee-check", "inspect", "md", "bench")

PROBE = """
import contextlib, io, json, sys
from gaqtool.cli import main
pages = {}
for args in [["--version"], ["--help"]] + [[c, "--help"] for c in sys.argv[1:]]:
    sys.argv = ["gaqtool", *args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    pages[" ".join(args)] = {"code": code, "text": out.getvalue()}
heavy = [m for m in ("torch", "e3nn", "ase", "sevenn", "matplotlib") if m in sys.modules]
print(json.dumps({"pages": pages, "heavy": heavy}))
"""


def test_version_and_help_import_no_heavy_module_and_fit_80_columns():
    env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-c", PROBE, *COMMANDS], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    pages = result["pages"]
    assert pages["--version"]["text"].startswith("gaqtool ")
    for name, page in pages.items():
        assert page["code"] in (0, None), name
        lines = page["text"].splitlines()
        assert max(len(line) for line in lines) <= 80, name
        cut = [line for line in lines[1:] if "…" in line or line.rstrip().endswith("...")]  # not the usage line
        assert not cut, (name, cut)
    quantize = pages["quantize --help"]["text"]
    for option in ("--weight-rounding", "--small-fan-in-bits", "--tangent-projection", "--energy-correction"):
        assert f"  {option}" in quantize  # the whole name, at the start of its entry
    assert len(quantize.splitlines()) < 200


def test_help_texts_carry_no_measurements():
    """Numbers measured on one model belong in the docs, not in option help."""
    import re

    env = dict(os.environ, COLUMNS="200", PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-c", PROBE, *COMMANDS], capture_output=True, text=True, env=env)
    text = " ".join(page["text"] for page in json.loads(done.stdout)["pages"].values())
    assert not re.search(r"\d+(\.\d+)? vs \d", text)
    assert "docs/" not in text and "README" not in text


def test_ctrl_c_while_starting_exits_130_with_one_line(tmp_path):
    """SIGINT a second in, while the command still imports torch or has just begun."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(SRC))
    process = subprocess.Popen([sys.executable, "-m", "gaqtool", "quantize", "-o", str(tmp_path / "q.safetensors"),
                                "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=tmp_path)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == ["error: interrupted (Ctrl-C)"]
    assert "Traceback" not in stdout + stderr
    assert list(tmp_path.iterdir()) == []
