"""How many examples a fuzz test draws: its default times ``FUZZ_SCALE`` (1 in the suite, which must stay within
10 minutes on 2 cores; ``FUZZ_SCALE=10 pytest tests/test_untrusted_*.py`` for a deeper run before a release)."""

from __future__ import annotations

import os


def examples(default: int) -> int:
    return max(1, round(default * float(os.environ.get("FUZZ_SCALE", "1"))))
