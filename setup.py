"""The compiled part of qboot-tcpsrv's accept loop (everything else is in pyproject.toml)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "qboot_systemd.tcpsrv._conn",
            sources=["qboot_systemd/tcpsrv/_conn.c", "qboot_systemd/tcpsrv/_lane.c"],
            depends=["qboot_systemd/tcpsrv/_conn.h"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
