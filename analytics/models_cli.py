"""``medguard models``: candidates, the current model, promotion and rollback.

Placeholder while model governance is being built this session; replaced by the real commands.
"""

from __future__ import annotations

import typer

models_app = typer.Typer(help="Registered models: candidates, the current one, promotion and rollback.",
                         no_args_is_help=True)
