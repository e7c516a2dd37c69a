"""Every single mutation of SLIME's terms, constants, defaults and presets, and of the compositions, fails a test."""

import subprocess
import sys
from pathlib import Path

import pytest

from slimepo.testing import failing_checks, module_from_source, mutated


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


def test_a_mutation_must_match_exactly_once_and_names_where():
    assert mutated("a = 1\nb = 2\n", "b = 2", "b = 3") == "a = 1\nb = 3\n"
    with pytest.raises(ValueError, match=r"'c = 1' occurs 0 times in loss.py, not once"):
        mutated("a = 1\n", "c = 1", "c = 2", "loss.py")
    with pytest.raises(ValueError, match="occurs 2 times"):
        mutated("x = 1\nx = 1\n", "x = 1", "x = 2")


def test_a_module_from_source_is_fresh_and_leaves_no_trace_in_sys_modules():
    source = "from dataclasses import dataclass\n\n@dataclass\nclass Loss:\n    beta: float = 0.1\n"
    first, second = module_from_source(source, "slimepo_test_copy"), module_from_source(mutated(source, "0.1", "0.2"), "slimepo_test_copy")
    assert (first.Loss().beta, second.Loss().beta) == (0.1, 0.2)  # a dataclass needs its module in sys.modules while built
    assert "slimepo_test_copy" not in sys.modules


def test_failing_checks_names_the_checks_that_fail_by_assertion_or_by_not_running():
    def holds(x):
        assert x > 0

    def fails(x):
        assert x < 0

    def crashes(x):
        return 1 / (x - x)

    assert failing_checks([holds, fails, crashes], 1) == ["fails", "crashes"]
    assert failing_checks([holds], 1) == []
