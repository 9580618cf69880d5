"""benchmarks/gpu_run.sh, the one prepared device call: every command it would run must parse.

A GPU lease is ~15 minutes in all, so a typo in a flag found on the device costs most of it.
These tests run the script in its dry mode (commands printed, nothing run) and hand each
benchmark command to that benchmark's own argument parser, at the GPU sizes and the rehearsal
sizes.
"""
import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

#: what the device call allows: files back from $OUT, and the timeout the README gives the call
MAX_FILES_BACK = 8
CALL_TIMEOUT_S = 480


def dry_steps(tmp_path, small: bool) -> list[tuple[str, list[str]]]:
    env = {**os.environ, "GPU_RUN_DRY": "1", "GPU_RUN_SMALL": "1" if small else "0",
           "GPU_RUN_DEVICE": "cpu" if small else "cuda"}
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    steps = []
    for line in out.splitlines():
        if line.startswith("STEP "):
            steps.append((line[5:], []))
        elif steps and not line.startswith("=="):
            steps[-1][1].append(line)
    return steps


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("small", [False, True], ids=["gpu sizes", "cpu rehearsal"])
def test_every_benchmark_command_parses(tmp_path, small):
    steps = dry_steps(tmp_path, small)
    assert [name for name, _ in steps] == ["env", "tests", "chromatin_step", "end_to_end", "paper_table"]
    benchmarks = 0
    for name, argv in steps:
        scripts = [a for a in argv if re.fullmatch(r"benchmarks/\w+\.py", a)]
        if not scripts:
            continue
        benchmarks += 1
        module = importlib.import_module(Path(scripts[0]).stem)
        args = module.parse_args(argv[argv.index(scripts[0]) + 1:])   # SystemExit on a bad flag
        assert args.device == ("cuda" if not small else "cpu"), name
    assert benchmarks == 3


def test_the_gpu_tests_it_selects_are_marked(tmp_path):
    argv = dict(dry_steps(tmp_path, small=False))["tests"]
    files = [a for a in argv if a.startswith("tests/")]
    assert files and "gpu" in argv
    selected = 0
    for f in files:
        text = (ROOT / f).read_text()
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test")):
                continue
            decorators = " ".join(ast.get_source_segment(text, d) for d in node.decorator_list)
            if "cuda" in decorators.lower():
                # a test that needs CUDA carries the marker the step selects
                assert "mark.gpu" in decorators, f"{f}::{node.name}"
                selected += 1
    assert selected >= 4


def test_fits_the_lease(tmp_path):
    """Step limits within the call's timeout, and at most 8 files written under $OUT."""
    text = SCRIPT.read_text()
    limits = [int(n) for n in re.findall(r"^step \w+ (\d+) ", text, flags=re.M)]
    assert len(limits) == 5 and sum(limits) <= CALL_TIMEOUT_S - 20
    steps = dry_steps(tmp_path, small=False)
    csvs = [a for _, argv in steps for a in argv if a.endswith(".csv")]
    assert len(steps) + len(csvs) <= MAX_FILES_BACK
    assert f"timeout_s={CALL_TIMEOUT_S}" in (ROOT / "benchmarks" / "README.md").read_text()
