"""Command groups of the storage & security layer: ``medguard vault``, ``medguard keys``, ``medguard audit``.

Registered with the spine's CLI through the ``medguard.commands`` entry points (see pyproject.toml). Heavy
imports stay inside the commands so that ``medguard --help`` stays fast.
"""

from __future__ import annotations

import typer

vault_app = typer.Typer(help="The local OpenBao server of the embedded default (Vault's API).", no_args_is_help=True)
keys_app = typer.Typer(help="Key lifecycle: init, rotate, re-encrypt, shred, status.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log: verify the chain, list alerts.", no_args_is_help=True)
