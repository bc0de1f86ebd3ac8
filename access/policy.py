"""Access policies as data: load and validate the YAML, and decide who may do what, with which masks and filters.

A policy file (``access/policies/default.yaml`` ships with the package; ``access.policy_file`` replaces it)
lists rules granting actions (read, decrypt, write, grant) on zones and tables to roles, for purposes of use,
within time limits, with masks per column class and row filters. Columns are classed (direct_identifier,
quasi_identifier, sensitive, non_sensitive) by the column catalog (:mod:`pipeline.catalog`), never by a policy: a
policy file that classes columns is refused at load, naming what the catalog says. The semantics, in full:

- **Deny by default.** Nothing is allowed unless an ``allow`` rule matches role, zone, table, action, purpose
  (it must be among the rule's purposes *and*, when the principal lists purposes, among the principal's) and
  time (``hours`` UTC window, ``valid_from``/``valid_until``).
- **Deny rules win.** Any matching ``deny`` rule refuses the action.
- **Most restrictive wins.** When several allow rules match, each column gets the most restrictive of their
  masks (plaintext < pseudonym < masked < null) and every rule's row filters apply. A column class a rule does
  not name gets ``null``. A column's class is the catalog's for that zone and table, or the stricter of it and
  the class the de-identification report gives; a column neither names is a ``direct_identifier``.
- **Break glass.** Rules with ``break_glass: true`` match only when the caller gives a written reason (at
  least ``access.break_glass_min_reason_chars`` characters); then only break-glass rules count, and the
  decision is flagged so that it is audited as ``break_glass`` and raises an alert.
- **decrypt** is allowed only on columns whose mask is plaintext under a rule granting ``decrypt``.

:class:`PolicyEngine.evaluate` is pure (no I/O); :meth:`PolicyEngine.decide` also records the decision as an
audit event (``policy_decision``, allow/deny, the reason), as every decision must be.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from access.principals import Principal, Role
from pipeline.catalog import Catalog, ColumnClass, catalog_file, load_catalog
from pipeline.errors import SettingsError
from pipeline.lake import Zone

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from storage_security.audit.log import AuditEvent, AuditLog

__all__ = ["Action", "ColumnClass", "Mask", "Policy", "PolicyDecision", "PolicyEngine", "load_policy"]


class Action(StrEnum):
    """What a principal asks to do."""

    READ = "read"
    DECRYPT = "decrypt"
    WRITE = "write"
    GRANT = "grant"


class Mask(StrEnum):
    """What a principal sees of a column, least to most restrictive."""

    PLAINTEXT = "plaintext"
    PSEUDONYM = "pseudonym"
    MASKED = "masked"
    NULL = "null"

    @property
    def rank(self) -> int:
        return _MASK_ORDER.index(self)


_MASK_ORDER = [Mask.PLAINTEXT, Mask.PSEUDONYM, Mask.MASKED, Mask.NULL]
# Blocks of older policy files that classed columns; classes now live in the column catalog only.
_CLASS_BLOCKS = ("column_classes", "tables")
ROW_FILTERS = ("facility", "consent")
# Purposes a new principal gets when none are given.
DEFAULT_PURPOSES: dict[Role, tuple[str, ...]] = {
    Role.ANALYST: ("research",),
    Role.CLINICIAN: ("treatment",),
    Role.DATA_ENGINEER: ("operations",),
    Role.ML_PIPELINE: ("model_training",),
    Role.AUDITOR: ("audit",),
    Role.SECURITY_ADMIN: ("administration",),
}


def _mask(value: Any) -> Mask:
    # YAML reads a bare `null` as None: accept it as the null mask.
    return Mask.NULL if value is None else Mask(value)


class Rule(BaseModel):
    """One grant (or denial) of the policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    effect: Literal["allow", "deny"] = "allow"
    roles: tuple[str, ...]
    zones: tuple[Zone, ...]
    tables: tuple[str, ...] = ("*",)
    actions: tuple[Action, ...]
    purposes: tuple[str, ...] = ()
    masks: dict[ColumnClass, Mask] = Field(default_factory=dict)
    columns: dict[str, Mask] = Field(default_factory=dict)
    row_filters: tuple[str, ...] = ()
    hours: tuple[int, int] | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    break_glass: bool = False
    aggregates_only: bool = False

    @field_validator("masks", "columns", mode="before")
    @classmethod
    def _null_masks(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: _mask(v) for k, v in value.items()}
        return value

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for role in value:
            if role != "*":
                Role(role)
        if not value:
            raise ValueError("a rule needs at least one role")
        return value

    @field_validator("row_filters")
    @classmethod
    def _known_filters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [f for f in value if f not in ROW_FILTERS]
        if unknown:
            raise ValueError(f"unknown row filters {unknown}; known: {list(ROW_FILTERS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if not self.actions or not self.zones:
            raise ValueError("a rule needs at least one action and one zone")
        if self.hours is not None and not (0 <= self.hours[0] < self.hours[1] <= 24):
            raise ValueError(f"hours must be [start, end) with 0 <= start < end <= 24, not {list(self.hours)}")
        if self.valid_from and self.valid_until and self.valid_from > self.valid_until:
            raise ValueError("valid_from is after valid_until")
        if self.effect == "deny" and (self.masks or self.columns or self.row_filters or self.break_glass
                                      or self.aggregates_only):
            raise ValueError("a deny rule takes no masks, columns, row filters, break_glass or aggregates_only")
        return self


class Policy(BaseModel):
    """A whole policy file, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    rules: tuple[Rule, ...]

    @model_validator(mode="after")
    def _unique(self) -> Policy:
        ids = [r.id for r in self.rules]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"rule ids must be unique; repeated: {duplicated}")
        return self

    def column_class(self, zone: Zone | str, table: str, column: str,
                     reported: Mapping[str, str] | None = None) -> ColumnClass:
        """The class of a column: the stricter of the column catalog's class for ``zone.table.column`` and the one
        the de-identification report gives; ``direct_identifier`` when neither knows it (unknown is identifying).
        """
        found = [klass for klass in [load_catalog().column_class(Zone(zone).value, table, column)] if klass]
        if reported and column in reported:
            try:
                found.append(ColumnClass(reported[column]))
            except ValueError:
                found.append(ColumnClass.DIRECT_IDENTIFIER)
        if not found:
            return ColumnClass.DIRECT_IDENTIFIER
        return max(found, key=lambda klass: klass.rank)


def _classes_in_policy(data: Mapping[str, Any], catalog: Catalog) -> str | None:
    """What a policy's own class blocks say against the catalog, or None when it has none."""
    blocks = [key for key in _CLASS_BLOCKS if key in data]
    if not blocks:
        return None
    said: list[tuple[str, str, str]] = []  # (zone.table pattern, column, class) as the policy says
    classes = data.get("column_classes")
    for klass, names in (classes.items() if isinstance(classes, Mapping) else []):
        said += [("*.*", str(name), str(klass)) for name in (names if isinstance(names, list) else [names])]
    tables = data.get("tables")
    for pattern, columns in (tables.items() if isinstance(tables, Mapping) else []):
        said += [(str(pattern), str(c), str(k)) for c, k in (columns.items() if isinstance(columns, Mapping) else [])]
    known = _catalog_classes(catalog)
    clashes = []
    for pattern, column, klass in said:
        where = [(logical, there) for (logical, name), there in known.items()
                 if name == column and fnmatch.fnmatchcase(logical, pattern) and there != klass]
        clashes += [f"{column} is {klass} here but {there} for {logical} in {_catalog_file_of(logical)}"
                    for logical, there in where[:2]]
    detail = "; ".join(clashes[:5]) if clashes else "it agrees with the catalog, but must not repeat it"
    return (f"{' and '.join(blocks)} classes columns, but column classes are declared only in the column catalog "
            f"(pipeline/catalog/): {detail}. Remove the block; a rule's `columns:` may still set one column's mask")


def _catalog_file_of(logical: str) -> str:
    # deidentified tables are not written down: they follow from the raw tables' masks.
    zone = logical.split(".", 1)[0]
    return catalog_file("raw" if zone == "deidentified" else zone)


def _catalog_classes(catalog: Catalog) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for table in catalog.raw.tables:
        out |= {(f"raw.{table}", c): col.klass.value for c, col in catalog.raw_columns(table).items()}
        out |= {(f"deidentified.{table}", c): col.klass.value for c, col in catalog.published(table).items()}
    for zone, tables in catalog.zones.items():
        for table, entry in tables.items():
            out |= {(f"{zone}.{table}", c): col.klass.value for c, col in entry.columns.items()}
    return out


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file (the shipped default when ``path`` is None).

    Raises:
        SettingsError: the file is missing, not YAML, or breaks the schema; the message names the rule and field.
    """
    where = str(path) if path else "access/policies/default.yaml"
    try:
        text = (Path(path).read_text() if path else
                resources.files("access").joinpath("policies/default.yaml").read_text())
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"policy file {where} is not readable YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"policy file {where} must hold a mapping, not {type(data).__name__}")
    clash = _classes_in_policy(data, load_catalog())
    if clash:
        raise SettingsError(f"invalid policy file {where}: {clash}")
    try:
        policy = Policy.model_validate(data)
    except PydanticValidationError as exc:
        rules = data.get("rules") if isinstance(data.get("rules"), list) else []

        def name(loc: tuple[Any, ...]) -> str:
            if len(loc) > 1 and loc[0] == "rules" and isinstance(loc[1], int) and loc[1] < len(rules):
                rule_id = rules[loc[1]].get("id", f"#{loc[1]}") if isinstance(rules[loc[1]], dict) else loc[1]
                return f"rule {rule_id!r} " + ".".join(str(p) for p in loc[2:])
            return ".".join(str(p) for p in loc)

        problems = "; ".join(f"{name(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise SettingsError(f"invalid policy file {where}: {problems}") from exc
    unknown = _unknown_columns(policy, load_catalog())
    if unknown:
        raise SettingsError(f"invalid policy file {where}: {unknown}")
    return policy


def _unknown_columns(policy: Policy, catalog: Catalog) -> str | None:
    """What is wrong with the columns a policy's rules name, or None: each must be a column of at least one
    catalog table the rule covers (a typo, or a column renamed since, would otherwise grant or mask nothing)."""
    tables: dict[str, set[str]] = {}
    for logical, column in _catalog_classes(catalog):
        tables.setdefault(logical, set()).add(column)
    problems = []
    for rule in policy.rules:
        if not rule.columns:
            continue
        covered = {logical: columns for logical, columns in tables.items()
                   if Zone(logical.split(".", 1)[0]) in rule.zones
                   and any(fnmatch.fnmatchcase(logical.split(".", 1)[1], pattern) for pattern in rule.tables)}
        for column in rule.columns:
            if not any(column in columns for columns in covered.values()):
                names = ", ".join(sorted(covered)[:4]) or "no table of the column catalog"
                problems.append(f"rule {rule.id!r} names column {column!r}, which is not a column of "
                                f"{names} (pipeline/catalog/)")
    return "; ".join(problems[:5]) or None


def policy_from_settings(settings: Settings) -> Policy:
    """The policy named by ``access.policy_file``, or the shipped default."""
    return load_policy(settings.access.policy_file)


@dataclass(frozen=True)
class PolicyDecision:
    """The answer to "may P do A on T/columns for purpose U, and with which masks and filters"."""

    allowed: bool
    principal: str
    action: Action
    zone: Zone
    table: str
    columns: tuple[str, ...]
    purpose: str
    reason: str
    masks: Mapping[str, Mask] = field(default_factory=dict)
    row_filters: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    break_glass: bool = False
    policy_version: int = 0
    aggregates_only: bool = False

    @property
    def logical_name(self) -> str:
        return f"{self.zone.value}.{self.table}"

    def audit_event(self, *, details: Mapping[str, Any] | None = None,
                    break_glass_reason: str | None = None) -> AuditEvent:
        """This decision as an audit event (no PHI: names, masks, rule ids)."""
        from storage_security.audit.log import AuditAction, AuditEvent, Decision

        facts: dict[str, Any] = {"requested_action": self.action.value, "policy_version": self.policy_version,
                                 "rules": list(self.rules), "row_filters": list(self.row_filters),
                                 "masks": {c: m.value for c, m in self.masks.items() if m is not Mask.PLAINTEXT}}
        facts.update(details or {})
        action = AuditAction.BREAK_GLASS if self.break_glass and self.allowed else AuditAction.POLICY_DECISION
        reason = self.reason if not (self.break_glass and break_glass_reason) else \
            f"{self.reason}; break-glass reason: {break_glass_reason}"
        return AuditEvent(principal=self.principal, action=action, zone=self.zone, table_name=self.table,
                          columns=self.columns, decision=Decision.ALLOW if self.allowed else Decision.DENY,
                          purpose=self.purpose, reason=reason, details=facts)

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "principal": self.principal, "action": self.action.value,
                "table": self.logical_name, "columns": list(self.columns), "purpose": self.purpose,
                "reason": self.reason, "masks": {c: m.value for c, m in self.masks.items()},
                "row_filters": list(self.row_filters), "rules": list(self.rules), "break_glass": self.break_glass,
                "policy_version": self.policy_version, "aggregates_only": self.aggregates_only}


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PolicyEngine:
    """Evaluates a :class:`Policy` for principals; records every decision in the audit log when given one.

    Args:
        policy: the validated policy.
        audit: where :meth:`decide` records decisions.
        clock: the current time (for ``hours`` and validity dates).
        min_reason_chars: the shortest acceptable break-glass reason.
    """

    def __init__(self, policy: Policy, *, audit: AuditLog | None = None, clock: Callable[[], datetime] = _utcnow,
                 min_reason_chars: int = 20) -> None:
        self.policy = policy
        self.audit = audit
        self._clock = clock
        self._min_reason = min_reason_chars

    def evaluate(self, principal: Principal, action: Action | str, table: str, columns: Sequence[str] = (), *,
                 purpose: str | None = None, break_glass_reason: str | None = None,
                 column_classes: Mapping[str, str] | None = None) -> PolicyDecision:
        """Decide without recording (pure). ``table`` is the logical name ``zone.table``.

        Args:
            column_classes: classes from the de-identification report, when the table has one.
        """
        action = Action(action)
        zone, name = _split(table)
        columns = tuple(columns)
        purpose = purpose or (principal.purposes[0] if principal.purposes else "unspecified")

        def deny(reason: str, rules: tuple[str, ...] = ()) -> PolicyDecision:
            return PolicyDecision(False, principal.qualified, action, zone, name, columns, purpose, reason,
                                  rules=rules, policy_version=self.policy.version)

        if principal.disabled:
            return deny(f"principal {principal.name!r} is disabled")
        break_glass = break_glass_reason is not None
        if break_glass and len(break_glass_reason.strip()) < self._min_reason:
            return deny(f"break-glass access needs a written reason of at least {self._min_reason} characters")
        now = self._clock()
        candidates = [r for r in self.policy.rules if _targets(r, principal.role, zone, name, action)]
        denials = [r for r in candidates if r.effect == "deny" and (not r.purposes or purpose in r.purposes)]
        if denials:
            return deny(f"denied by rule {denials[0].id!r}", (denials[0].id,))
        allows = [r for r in candidates if r.effect == "allow" and r.break_glass == break_glass]
        if not allows:
            kind = "break-glass rule" if break_glass else "rule"
            return deny(f"no {kind} grants {principal.role.value} {action.value} on {zone.value}.{name}")
        matched = [r for r in allows if self._purpose_ok(r, principal, purpose)]
        if not matched:
            allowed = sorted({p for r in allows for p in r.purposes if not principal.purposes
                              or p in principal.purposes})
            return deny(f"purpose {purpose!r} is not permitted for {action.value} on {zone.value}.{name} "
                        f"(permitted for this principal: {allowed or 'none'})")
        timely = [r for r in matched if _in_time(r, now)]
        if not timely:
            return deny(f"outside the time allowed for {action.value} on {zone.value}.{name} "
                        f"(rule {matched[0].id!r})")
        filters = tuple(dict.fromkeys(f for r in timely for f in r.row_filters))
        if "facility" in filters and not principal.facility:
            return deny(f"row filter 'facility' needs a facility attribute, and {principal.name!r} has none")
        rule_ids = tuple(r.id for r in timely)
        masks: dict[str, Mask] = {}
        if action in (Action.READ, Action.DECRYPT):
            for column in columns:
                klass = self.policy.column_class(zone, name, column, column_classes)
                masks[column] = max((r.columns.get(column, r.masks.get(klass, Mask.NULL)) for r in timely),
                                    key=lambda m: m.rank)
        if action is Action.DECRYPT:
            refused = [c for c, m in masks.items() if m is not Mask.PLAINTEXT]
            if refused:
                return deny(f"columns {refused} may not be decrypted by {principal.role.value}", rule_ids)
        if action is Action.READ and columns and all(m is Mask.NULL for m in masks.values()):
            return deny(f"every requested column of {zone.value}.{name} is hidden from {principal.role.value}",
                        rule_ids)
        reason = f"allowed by {', '.join(rule_ids)}" + (" (break glass)" if break_glass else "")
        return PolicyDecision(True, principal.qualified, action, zone, name, columns, purpose, reason, masks,
                              filters, rule_ids, break_glass, self.policy.version,
                              aggregates_only=any(r.aggregates_only for r in timely))

    def decide(self, principal: Principal, action: Action | str, table: str, columns: Sequence[str] = (), *,
               purpose: str | None = None, break_glass_reason: str | None = None,
               column_classes: Mapping[str, str] | None = None,
               details: Mapping[str, Any] | None = None) -> PolicyDecision:
        """Decide and record the decision as an audit event (``break_glass`` when break glass was used)."""
        decision = self.evaluate(principal, action, table, columns, purpose=purpose,
                                 break_glass_reason=break_glass_reason, column_classes=column_classes)
        if self.audit is not None:
            self.audit.record(decision.audit_event(details=details, break_glass_reason=break_glass_reason))
        return decision

    def readable_tables(self, principal: Principal, tables: Sequence[str], *,
                        purpose: str | None = None) -> list[str]:
        """Which of ``tables`` (logical names) the principal may read for ``purpose`` (any listed one if None)."""
        purposes = [purpose] if purpose else list(principal.purposes) or [None]
        return [t for t in tables
                if any(self.evaluate(principal, Action.READ, t, purpose=p).allowed for p in purposes)]

    @staticmethod
    def _purpose_ok(rule: Rule, principal: Principal, purpose: str) -> bool:
        if principal.purposes and purpose not in principal.purposes:
            return False
        return not rule.purposes or purpose in rule.purposes


def _split(table: str) -> tuple[Zone, str]:
    zone, sep, name = table.partition(".")
    if not sep or not name or "." in name:
        raise ValueError(f"expected a logical table name zone.table, not {table!r}")
    return Zone(zone), name


def _targets(rule: Rule, role: Role, zone: Zone, table: str, action: Action) -> bool:
    return (("*" in rule.roles or role.value in rule.roles) and zone in rule.zones and action in rule.actions
            and any(fnmatch.fnmatchcase(table, pattern) for pattern in rule.tables))


def _in_time(rule: Rule, now: datetime) -> bool:
    now = now.astimezone(UTC)
    if rule.valid_from and now.date() < rule.valid_from:
        return False
    if rule.valid_until and now.date() > rule.valid_until:
        return False
    return rule.hours is None or rule.hours[0] <= now.hour < rule.hours[1]
