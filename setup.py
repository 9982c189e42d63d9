"""The one compiled module, the relay's pump (maculad/proxy/_pump.c, Linux epoll); the rest of the
build is in pyproject.toml. Elsewhere the relay counts every chunk in Python and never pipes."""

import sys

from setuptools import Extension, setup

PUMP = Extension("maculad.proxy._pump", ["maculad/proxy/_pump.c"], extra_compile_args=["-O2", "-Wall"])

setup(ext_modules=[PUMP] if sys.platform == "linux" else [])
