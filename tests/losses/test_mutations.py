"""Every single mutation of SLIME's terms, constants, defaults and presets, and of the compositions, fails a test."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_every_single_mutation_of_the_slime_formula_fails_a_test():
    script = Path(__file__).with_name("mutate_slime.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "43 of 43 mutants of SLIME fail a test" in result.stdout


@pytest.mark.slow
def test_every_single_mutation_of_dpo_norm_sft_and_the_compositions_fails_a_test():
    script = Path(__file__).with_name("mutate_compositions.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "34 of 34 mutants of the compositions fail a test" in result.stdout
