"""``medguard models``: candidates, the current model, promotion and rollback.

``list`` and ``show`` read the registry's signed index and manifests; ``promote`` and ``rollback`` move its signed
``current`` pointer (the model diagnosis and the API load), each an audited write naming who (``os:<user>``) and
why. ``promote`` holds the candidate's recorded judgement to today's floors (``settings.governance``) and refuses
one that misses them or was never compared with the model current now, unless ``--force --reason``.
"""

from __future__ import annotations

import getpass
import re
from typing import Annotated, Any

import typer

from pipeline.cli_support import JsonOption, emit, settings_from

models_app = typer.Typer(help="Registered models: candidates, the current one, promotion and rollback.",
                         no_args_is_help=True)

VersionArg = Annotated[str, typer.Argument(help="NAME@vN, or N / vN when only one model is registered.")]


def _operator() -> str:
    return f"os:{getpass.getuser()}"


def _registry(ctx: typer.Context) -> Any:
    from analytics.registry import ModelRegistry
    from storage_security.keys.providers import provider_from_settings

    settings = settings_from(ctx)
    return ModelRegistry(settings, provider_from_settings(settings))


def _resolve(registry: Any, version: str) -> tuple[str, int]:
    """``name@vN`` → (name, N); a bare ``N``/``vN`` when the registry holds one model only."""
    from pipeline.errors import ValidationError

    match = re.fullmatch(r"(?:([a-z0-9_]{1,200})@)?v?([1-9]\d{0,8})", version.strip())
    if match is None:
        raise ValidationError(f"model version {version!r}: expected NAME@vN (see `medguard models list`)")
    name, number = match.group(1), int(match.group(2))
    if name is None:
        names = registry.models()
        if len(names) != 1:
            raise ValidationError(f"model version {version!r} is ambiguous with {len(names)} registered models: "
                                  "write NAME@vN")
        name = names[0]
    return name, number


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@models_app.command("list")
def list_models(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every registered version: status (current, candidate, retired), held-out metrics, the promotion decision."""
    registry = _registry(ctx)
    models = [registry.describe(name) for name in registry.models()]

    def text() -> None:
        if not models:
            typer.echo("no registered model: run `medguard train`")
        for model in models:
            for row in model["versions"]:
                m = row.get("metrics") or {}
                decision = (row.get("promotion") or {}).get("decision", "-")
                reason = "; ".join((row.get("promotion") or {}).get("reasons", [])[:1])
                typer.echo(f"{row['model_version']:<40} {row['status']:<9} AUROC {_fmt(m.get('auroc'))} "
                           f"sens {_fmt(m.get('sensitivity'))} spec {_fmt(m.get('specificity'))} "
                           f"judged {decision}{': ' + reason if reason else ''}"
                           f"{'' if row['verified'] else '  DOES NOT VERIFY: ' + row['problem']}")

    emit({"models": models}, as_json, text)


@models_app.command("show")
def show(ctx: typer.Context, version: VersionArg, as_json: JsonOption = False) -> None:
    """One version: status, metrics with intervals, the promotion judgement and its reasons, training snapshot."""
    from pipeline.errors import ValidationError

    registry = _registry(ctx)
    name, number = _resolve(registry, version)
    described = registry.describe(name)
    row = next((v for v in described["versions"] if v["version"] == number), None)
    if row is None:
        raise ValidationError(f"model {name}@v{number} is not registered")
    history = [h for h in described["history"] if number in (h.get("version"), h.get("previous"))]
    result = {**row, "history": history}
    promotion = row.get("promotion") or {}
    lines = [f"{row['model_version']}: {row['status']}"
             f"{'' if row['verified'] else ' — DOES NOT VERIFY: ' + row['problem']}",
             "metrics (held-out test): " + ", ".join(f"{k} {_fmt(v)}" for k, v in (row.get("metrics") or {}).items()),
             f"judged at training: {promotion.get('decision', 'n/a')}",
             *[f"  - {r}" for r in promotion.get("reasons", [])],
             *[f"{h['at']}: {h['action']} v{h['version']} (was v{h['previous']}) by {h['principal']}: {h['reason']}"
               for h in history]]
    emit(result, as_json, "\n".join(lines))


@models_app.command("promote")
def promote(
    ctx: typer.Context,
    version: VersionArg,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded, signed, audited).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even when the floors are not met (needs "
                                                       "--reason).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Make a registered version the current one: the model diagnosis and the API use from now on."""
    from analytics.promotion import recheck
    from pipeline.errors import ValidationError

    settings = settings_from(ctx)
    registry = _registry(ctx)
    name, number = _resolve(registry, version)
    if force and not (reason and reason.strip()):
        raise ValidationError("--force needs --reason: say why the floors are overridden")
    described = registry.describe(name)
    row = next((v for v in described["versions"] if v["version"] == number), None)
    if row is None:
        raise ValidationError(f"model {name}@v{number} is not registered")
    current = described["current"]
    problems = recheck(row.get("promotion"), settings.governance,
                       f"{name}@v{current}" if current is not None else None)
    if problems and not force:
        raise ValidationError(f"{name}@v{number} does not earn promotion: {'; '.join(problems)} "
                              "(override with --force --reason)")
    why = reason or "meets the governance floors (checked by medguard models promote)"
    if force and problems:
        why = f"forced over: {'; '.join(problems)} — {why}"
    entry = registry.promote(name, number, reason=why, principal=_operator(), expect_current=current)
    emit({"model_version": f"{name}@v{number}", "status": "current", **entry}, as_json,
         f"{name}@v{number} is now current (was {'v' + str(entry['previous']) if entry['previous'] else 'none'})")


@models_app.command("rollback")
def rollback(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded, signed, audited).")],
    model: Annotated[str | None, typer.Option("--model", help="Model name (needed when several exist).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="A retired version (NAME@vN or N); default: the one the "
                                                      "current version replaced.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Make an earlier current version current again."""
    from pipeline.errors import ValidationError

    registry = _registry(ctx)
    number = None
    if to is not None:
        name, number = _resolve(registry, to if "@" in to or model is None else f"{model}@v{to.lstrip('v')}")
    elif model is not None:
        name = model
    else:
        names = registry.models()
        if len(names) != 1:
            raise ValidationError(f"{len(names)} registered models: name one with --model")
        name = names[0]
    entry = registry.rollback(name, reason=reason, principal=_operator(), to=number)
    emit({"model_version": f"{name}@v{entry['version']}", "status": "current", **entry}, as_json,
         f"{name}@v{entry['version']} is current again (v{entry['previous']} retired)")
