"""Response and request ids, and the `created` time of a response."""

from __future__ import annotations

import random
import time


def new_id(prefix: str, separator: str = "-") -> str:
    """A unique id: 128 random bits. Ids are not secrets, so no system call for entropy
    (`random` is reseeded in each forked worker)."""
    return f"{prefix}{separator}{random.getrandbits(128):032x}"


def now() -> int:
    return int(time.time())
