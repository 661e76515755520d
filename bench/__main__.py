"""The benchmark suite: ``python -m bench all`` or one benchmark (``python -m bench fanout``).

Run from the repository root. See bench/suite.py and docs/benchmarks.md.
"""

from bench.suite import main

main()
