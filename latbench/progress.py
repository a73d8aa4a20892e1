"""Progress bars (tqdm) that stay quiet when output is not a terminal or when disabled."""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def bar(total: int, desc: str, enabled: bool = True, **kw: Any) -> tqdm:
    """A tqdm bar on stderr; disabled when ``enabled`` is false or stderr is not a TTY."""
    return tqdm(total=total, desc=desc, unit="op", disable=not enabled or not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False, **kw)
