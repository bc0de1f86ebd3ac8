"""``medguard endpoints``: the registry of endpoints (devices, EHR integrations, partner apps) that call the API.

Placeholder while the registry is being built this session; replaced by the real commands.
"""

from __future__ import annotations

import typer

endpoints_app = typer.Typer(help="Registered endpoints: the only callers the diagnosis API answers.",
                            no_args_is_help=True)
