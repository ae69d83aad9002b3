"""What the generator may write into a unit: the fixed set of lines."""

from __future__ import annotations

import re

ALLOWED = re.compile(
    r"(\[(Unit|Service|Socket)\]|#.*|"
    r"(SourcePath|ExecStart|Environment|User|Group|ListenStream|FreeBind|Backlog)=.*|)\Z"
)
