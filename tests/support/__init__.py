"""Helpers the tests share (and scripts/bench.py, which runs the real-server harness): test modules import from
here, never from one another. conftest.py registers the package for pytest's assertion rewriting."""
