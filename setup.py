"""The compiled part of qboot-tcpsrv's accept loop (everything else is in pyproject.toml)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "qboot_systemd.tcpsrv._core",
            sources=["qboot_systemd/tcpsrv/_core.c", "qboot_systemd/tcpsrv/_loop.c"],
            depends=["qboot_systemd/tcpsrv/_core.h"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
