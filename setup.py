"""Package metadata lives in pyproject.toml; this file lets older tooling install the project."""

from setuptools import setup

setup()
