"""Builds the optional C data path; the distribution still installs if compilation fails."""

from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Keep the pure-Python forwarder when the C extension cannot be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            print(f"flannel-udp: C data path not built ({exc}); using the pure-Python forwarder")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"flannel-udp: C data path not built ({exc}); using the pure-Python forwarder")


setup(
    ext_modules=[
        Extension(
            "flannel_udp._fastpath",
            sources=sorted(glob("csrc/*.c")),
            depends=sorted(glob("csrc/*.h")),
            include_dirs=["csrc"],
            extra_compile_args=["-O2", "-std=gnu11", "-D_GNU_SOURCE=1"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
