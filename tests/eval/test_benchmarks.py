"""The benchmark registry: one entry per ``--bench`` choice, each owning its prompts, key and table rows."""

import dataclasses

import pytest

from slimepo.config import BENCHMARKS, JUDGED_BENCHMARKS, EvalConfig
from slimepo.eval.benchmarks import REGISTRY
from slimepo.eval.run import format_eval_table


def test_the_registry_is_the_bench_choices_of_the_config_and_its_judged_ones():
    bench = next(f for f in dataclasses.fields(EvalConfig) if f.name == "bench")

    assert tuple(REGISTRY) == BENCHMARKS
    assert bench.metadata["choices"] == (None, *REGISTRY)
    assert tuple(name for name, benchmark in REGISTRY.items() if benchmark.judged) == JUDGED_BENCHMARKS
    assert all(name == benchmark.name for name, benchmark in REGISTRY.items())


def test_each_benchmark_has_its_own_key_in_eval_json():
    keys = [benchmark.result_key for benchmark in REGISTRY.values()]
    assert keys == ["mt_bench", "ifeval", "ifbench", "arena_hard", "alpaca_eval"]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_benchmark_reads_its_installed_prompts_and_keeps_the_first_max_prompts(name):
    benchmark = REGISTRY[name]

    installed = benchmark.prompts()
    first_two = benchmark.prompts(None, 2)

    assert benchmark.find_prompts().is_file()
    assert len(installed) > 2 and first_two == installed[:2]
    assert benchmark.prompts(str(benchmark.find_prompts()), 2) == first_two
    given = benchmark.prompts(first_two)
    assert given == first_two and given[0] is not first_two[0]  # records given are copied


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_benchmark_has_rows_even_for_a_result_without_scores(name):
    rows = REGISTRY[name].table_rows({})
    assert rows and all(isinstance(metric, str) and value is None for metric, value in rows)


def test_the_eval_table_shows_each_benchmarks_rows_in_registry_order():
    result = {
        "pairs": 1,
        "mt_bench": {"questions": 2, "overall": 7.0, "per_turn": {"1": 7.5, "2": 6.5}},
        "ifeval": {"prompts": 3, "prompt_level_strict": 0.5, "generation": {"ended_rate": 1.0}},
        "ifbench": {"prompts": 4, "left_out": {"prompts": 1}},
        "arena_hard": {"questions": 5, "score": 0.25, "ci_lower": 0.1, "ci_upper": 0.4},
        "alpaca_eval": {"instructions": 6, "win_rate": 40.0, "ci_lower": 30.0, "ci_upper": 50.0},
    }
    table = format_eval_table(result)

    expected = [
        "| MT-Bench score (1-10) | 7 |", "|   turn 2 | 6.5 |", "| IFEval prompts answered | 3 |",
        "| IFEval prompt-level accuracy, strict | 0.5 |", "| IFEval end-of-turn rate | 1 |",
        "| IFBench (partial) prompts left out (unscorable offline) | 1 |",
        "| Arena-Hard score vs baseline (0.5 = par) | 0.25 |", "|   95% interval | 0.100 to 0.400 |",
        "| AlpacaEval instructions answered | 6 |", "|   95% interval | 30.0 to 50.0 |",
    ]
    positions = [table.find(row) for row in expected]
    assert -1 not in positions, [row for row, at in zip(expected, positions, strict=True) if at == -1]
    assert positions == sorted(positions)
