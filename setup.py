"""Only for the optional C speedup (rafs._speedups); metadata lives in setup.cfg.

A failed compile never blocks installation: the pure-Python twin (rafs._chunkmap) is used instead.
"""

import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler, no headers
            warnings.warn(f"rafs._speedups not built ({e}); using the pure-Python chunk lookup",
                          stacklevel=2)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            warnings.warn(f"rafs._speedups not built ({e}); using the pure-Python chunk lookup",
                          stacklevel=2)


setup(
    ext_modules=[Extension("rafs._speedups", ["rafs/_speedups.c"], optional=True,
                           extra_compile_args=["-O2", "-Wall", "-Wextra"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
