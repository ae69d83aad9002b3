"""qboot-systemd: run eQmail's qboot bootctrl directory under systemd."""

__version__ = "0.1.0"
