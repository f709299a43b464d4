"""Only the C extension lives here; pyproject.toml holds everything else (setuptools merges both)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("schemas._cavro", ["schemas/_cavro.c"], extra_compile_args=["-O2"])])
