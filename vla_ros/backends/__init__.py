"""``load_policy``: one entry point for every model backend.

Backends are imported lazily so that a consumer pays only for what it uses (the remote client needs
no torch, the debug backend needs nothing).
"""

from __future__ import annotations

import importlib
from typing import Any

from vla_ros.policy import Policy

# backend name -> "module:factory"; each factory takes (path, **options) and returns a Policy.
BACKENDS: dict[str, str] = {
    "debug": "vla_ros.backends.debug:load",
    "native": "vla_ros.backends.native:load",
    "hf": "vla_ros.backends.hf:load",
    "remote": "vla_ros.backends.remote:load",
}


def load_policy(backend: str, path: str | None = None, **options: Any) -> Policy:
    """Load a policy. ``backend`` is one of :data:`BACKENDS`; options are backend-specific
    (quantization, adapter, device, unnorm_key, ...)."""
    try:
        target = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}") from None
    module_name, factory = target.split(":")
    return getattr(importlib.import_module(module_name), factory)(path, **options)
