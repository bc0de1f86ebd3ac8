"""``medguard backup create|verify|restore``: the command line over :mod:`storage_security.backup`."""

from __future__ import annotations

import typer

backup_app = typer.Typer(help="Encrypted backups of the lake, key store and audit log: create, verify, restore.",
                         no_args_is_help=True)
