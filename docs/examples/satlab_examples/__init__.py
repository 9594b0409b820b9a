"""Worked examples of docs/extending.md: a dataset, an attack and a task that live outside satlab.

Put this folder on the Python path (`export PYTHONPATH=$PWD/docs/examples`) and add `--config-dir
docs/examples/conf` to a `satlab` command; tests/test_extending.py runs every example.
"""
