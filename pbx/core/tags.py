"""To and From tags for what the PBX answers (RFC 3261 §19.3)."""

from __future__ import annotations

import os
import random

_tag_random = random.Random(os.urandom(16))
_TAG_CHARS = 12
_TAGS_AT_ONCE = 512


class _TagPool:
    """Hex text for tags, made 512 tags at a time and handed out in slices."""

    def __init__(self) -> None:
        self.text = ""
        self.at = 0


_tags = _TagPool()


def new_tag() -> str:
    """A To/From tag: 48 random bits (RFC 3261 §19.3 asks for 32 or more).

    From a PRNG seeded once from the OS: tags need to be unique and hard to
    guess, not secret, and one ``os.urandom`` system call per tag showed up
    as a share of a registration's cost. The random bytes come in blocks: a slice
    of ready hex text is cheaper than formatting a number for every tag
    (docs/benchmarks.md, "Why the hot path is written as it is").
    """
    pool = _tags
    at = pool.at
    if at >= len(pool.text):
        pool.text = _tag_random.randbytes(_TAGS_AT_ONCE * _TAG_CHARS // 2).hex()
        at = 0
    pool.at = at + _TAG_CHARS
    return pool.text[at : at + _TAG_CHARS]
