"""``qtbench zoo``."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    from qtbench.harness.core.zoo import register_cli  # torch is imported only when a model is built

    register_cli(sub)
