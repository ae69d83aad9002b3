"""The name tcpsrv/ and reconcile_plan.py import the start-up stand-ins by; they live in
_startup (this goes when those import from there)."""

from __future__ import annotations

from ._startup import TYPE_CHECKING as TYPE_CHECKING
from ._startup import NamedTuple as NamedTuple
