"""The benchmarks ``slimepo eval --bench`` answers: one module each, one line each in :data:`REGISTRY`.

Adding a benchmark: a module defining its :class:`~slimepo.eval.benchmarks.base.Benchmark`
as ``BENCHMARK``, its line below, and its name in :data:`slimepo.config.BENCHMARKS` (and
:data:`~slimepo.config.JUDGED_BENCHMARKS` when judged; the configuration cannot import
this package, so a test keeps the two equal).
"""

from slimepo.eval.benchmarks import alpaca_eval, arena_hard, ifbench, ifeval, mt_bench
from slimepo.eval.benchmarks.base import Benchmark, Prompts

#: Every benchmark by its ``--bench`` name, in the order of the evaluation table.
REGISTRY: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        mt_bench.BENCHMARK,
        ifeval.BENCHMARK,
        ifbench.BENCHMARK,
        arena_hard.BENCHMARK,
        alpaca_eval.BENCHMARK,
    )
}

__all__ = ["REGISTRY", "Benchmark", "Prompts"]
