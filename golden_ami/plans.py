"""What `invoke prune` and `invoke reap` show and then carry out: one Plan type.

A Plan is made by a target (targets/<name>/prune.py, targets/<name>/reap.py), shown with
describe(), written by --json with as_dict(), and carried out with apply(), which reads every
change back and raises NotApplied if one did not land. Code above the targets (tasks.py, the
pipeline) uses only these four and has_work.

    plan          what it lists                     as_dict keys
    PrunePlan     actions on older approved images  target os where keep_approved deprecate_after_days
                  (deprecate, deregister, delete)   pointer actions protected notes
    ReapPlan      leftovers of crashed runs         target where older_than_hours
                                                    candidates_older_than_hours leftovers kept notes

The neutral part of the prune policy lives here too (PrunePlan.rank): only approvals that
verify count, the newest approved image is always kept, newer is targets.base.age_order.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Optional

from .errors import UserError
from .targets.base import age_order


@dataclass(frozen=True)
class ChangeResult:
    """What became of one planned change."""

    action: str
    status: str  # "done" | "skipped" (refused for safety at apply time) | "failed"
    detail: str = ""


class NotApplied(UserError):
    """Some planned changes did not land; ``outcomes`` says which (shown by the task)."""

    def __init__(self, message: str, outcomes: list[ChangeResult]):
        super().__init__(message)
        self.outcomes = outcomes


class Plan(abc.ABC):
    """Shown first, carried out only when asked. Subclasses hold the data; each target's
    subclass of those knows how to carry it out (_carry_out)."""

    verb = ""  # the invoke task: "prune" | "reap"
    change_noun = "change(s)"

    @property
    @abc.abstractmethod
    def has_work(self) -> bool:
        """Whether apply() would change anything."""

    @abc.abstractmethod
    def describe(self) -> list[str]: ...

    @abc.abstractmethod
    def as_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _headline(self) -> str:
        """The plan's scope in a failure message: "prune debian12 (us-east-1)"."""

    @abc.abstractmethod
    def _carry_out(self, **overrides: Any) -> list[ChangeResult]: ...

    def apply(self, **overrides: Any) -> list[ChangeResult]:
        """Carry out the plan, read every change back; raise NotApplied if one did not land.
        overrides: what a test hands the target's _carry_out (API clients, a grace period)."""
        results = self._carry_out(**overrides)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise NotApplied(f"{self._headline()}: {len(failed)} of {len(results)} {self.change_noun} did not land, "
                             f"first: {failed[0].action}: {failed[0].detail}; run invoke {self.verb} again to see "
                             "what is left", results)
        return results


# --- prune: older approved images --------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    kind: str  # "deprecate" | "deregister" (aws, snapshots with it) | "delete" (local store)
    image_id: str
    reason: str
    snapshots: tuple[str, ...] = ()
    deprecate_at: str = ""  # ISO 8601 UTC, for "deprecate"

    def describe(self) -> str:
        if self.kind == "deprecate":
            return f"deprecate {self.image_id} at {self.deprecate_at}: {self.reason}"
        if self.kind == "deregister":
            snaps = f" and delete snapshot(s) {', '.join(self.snapshots)}" if self.snapshots else ""
            return f"deregister {self.image_id}{snaps}: {self.reason}"
        return f"delete {self.image_id} from the store: {self.reason}"


@dataclass(frozen=True)
class Protected:
    image_id: str
    why: tuple[str, ...]


@dataclass
class PrunePlan(Plan):
    target: str
    os: str
    where: str  # aws: the region; local: the store directory
    keep_approved: int
    deprecate_after_days: int
    pointer: str = ""  # aws: the SSM parameter that publishes the newest approved image
    statements: str = ""  # aws: the SSM path of approval statements (<path>/<ami>), removed with the image
    actions: list[Action] = field(default_factory=list)
    protected: list[Protected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    verb = "prune"

    @property
    def has_work(self) -> bool:
        return bool(self.actions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "os": self.os, "where": self.where, "keep_approved": self.keep_approved,
            "deprecate_after_days": self.deprecate_after_days, "pointer": self.pointer,
            "actions": [asdict(a) for a in self.actions],
            "protected": [{"image_id": p.image_id, "why": list(p.why)} for p in self.protected],
            "notes": list(self.notes),
        }

    def describe(self) -> list[str]:
        head = f"prune {self.os} on {self.target} ({self.where}), keep {self.keep_approved} newest approved"
        lines = [head + (": nothing to do" if not self.actions else f": {len(self.actions)} change(s)")]
        lines += [f"  - {a.describe()}" for a in self.actions]
        lines += [f"  keep {p.image_id}: {'; '.join(p.why)}" for p in self.protected]
        lines += [f"  note: {n}" for n in self.notes]
        return lines

    def _headline(self) -> str:
        return f"prune {self.os} ({self.where})"

    def _carry_out(self, **overrides: Any) -> list[ChangeResult]:
        raise NotImplementedError(f"a prune plan for {self.target} is made by targets/{self.target}/prune.py")

    def rank(self, approved: Iterable[tuple[str, Mapping[str, str], str]], refused: Mapping[str, list[str]],
             nothing_where: str) -> list[tuple[int, str]]:
        """The neutral policy: from (id, tags, created) of the images tagged approved, the older
        ones that keep_approved and the target's own rules decide about, as (position, id),
        position 2 being the second newest.

        An image whose signed approval does not verify (refused) gets a note; it is neither the
        newest nor counted in keep_approved, and never removed here (a person decides). The
        newest counted image is always kept. Newer is targets.base.age_order, as `latest` has it."""
        approved = list(approved)
        uncounted = {image_id for image_id, _, _ in approved if image_id in refused}
        for image_id in sorted(uncounted):
            self.notes.append(f"{image_id} is tagged approved but its approval does not verify "
                              f"({'; '.join(refused[image_id])}): not counted, not removed "
                              f"(invoke attest --image-id={image_id})")
        ordered = sorted((i for i in approved if i[0] not in uncounted), key=lambda i: age_order(i[0], i[1], i[2]),
                         reverse=True)
        if not ordered:
            self.notes.append(f"no approved {self.os} image {nothing_where}")
            return []
        self.protected.append(Protected(ordered[0][0], ("the newest approved image",)))
        return [(position, image_id) for position, (image_id, _, _) in enumerate(ordered[1:], start=2)]

    def within_keep(self, position: int) -> str:
        return f"approved image #{position}, within keep_approved={self.keep_approved}"


# --- reap: what crashed runs left behind -------------------------------------------------------------
@dataclass(frozen=True)
class Leftover:
    kind: str  # instance | key-pair | security-group | image | snapshot | volume | process | store-image |
    #            store-partial | runtime-dir | verify-leftover
    ident: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind} {self.ident}: {self.reason}"


@dataclass(frozen=True)
class Kept:
    kind: str
    ident: str
    why: str


@dataclass
class ReapPlan(Plan):
    target: str
    where: str  # aws: the region; local: the state dir
    older_than_hours: float
    candidates_older_than_hours: float
    leftovers: list[Leftover] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    verb = "reap"
    change_noun = "removal(s)"

    @property
    def has_work(self) -> bool:
        return bool(self.leftovers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "where": self.where, "older_than_hours": self.older_than_hours,
            "candidates_older_than_hours": self.candidates_older_than_hours,
            "leftovers": [{"kind": x.kind, "id": x.ident, "reason": x.reason, "details": x.details}
                          for x in self.leftovers],
            "kept": [{"kind": k.kind, "id": k.ident, "why": k.why} for k in self.kept],
            "notes": list(self.notes),
        }

    def describe(self) -> list[str]:
        found = f"{len(self.leftovers)} leftover(s)" if self.leftovers else "nothing left behind"
        lines = [f"reap {self.target} ({self.where}), older than {self.older_than_hours:g} h "
                 f"(candidate images {self.candidates_older_than_hours:g} h): {found}"]
        lines += [f"  - {x.describe()}" for x in self.leftovers]
        lines += [f"  keep {k.kind} {k.ident}: {k.why}" for k in self.kept]
        lines += [f"  note: {n}" for n in self.notes]
        return lines

    def _headline(self) -> str:
        return f"reap {self.target} ({self.where})"

    def _carry_out(self, **overrides: Any) -> list[ChangeResult]:
        raise NotImplementedError(f"a reap plan for {self.target} is made by targets/{self.target}/reap.py")


DEFAULT_OLDER_THAN_HOURS = 2.0
DEFAULT_CANDIDATES_OLDER_THAN_HOURS = 24.0


def age_since(now: datetime, then: Optional[datetime]) -> Optional[timedelta]:
    return None if then is None else now - then


def age_text(delta: Optional[timedelta]) -> str:
    """An age as the reap plan shows it: "3.5 h old", "12 min old", "unknown age"."""
    if delta is None:
        return "unknown age"
    total = delta.total_seconds() / 3600
    return f"{total:.1f} h old" if total >= 1 else f"{max(delta.total_seconds(), 0) / 60:.0f} min old"
