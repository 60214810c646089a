"""
The defence-evaluation benchmark: attack × defence grids from a YAML or TOML configuration, run resumably on a local
or Ray executor, aggregated into tables and figures.

::

    art-gifd bench quick --workers 2     # or: python -m benchmarks quick
    art-gifd bench-report bench-out/quick.jsonl
"""

from art_gifd.bench.config import BenchConfig, ConfigError, load_config
from art_gifd.bench.executors import Executor, LocalExecutor, RayExecutor
from art_gifd.bench.grid import Job, expand_grid
from art_gifd.bench.runner import run_benchmark, run_job
from art_gifd.store import ResultsFile

__all__ = [
    "BenchConfig",
    "ConfigError",
    "Executor",
    "Job",
    "LocalExecutor",
    "RayExecutor",
    "ResultsFile",
    "expand_grid",
    "load_config",
    "run_benchmark",
    "run_job",
]
