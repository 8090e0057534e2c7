"""Prune on local: delete older approved images from the store (golden_ami/lifecycle.py says
when). The store has no deprecation: approved images beyond lifecycle.keep_approved are deleted,
except the newest approved one and any whose disk a running process has open or names on its
command line."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional

from ...config import Settings
from ...layout import StateDir
from ...plans import Action, ChangeResult, PrunePlan, Protected
from .processes import paths_in_use
from .store import Store


@dataclass
class LocalPrunePlan(PrunePlan):
    def _carry_out(self) -> list[ChangeResult]:
        store = Store(Path(self.where))
        results = []
        for action in self.actions:
            label = action.describe()
            try:
                store.delete(action.image_id)
            except OSError as exc:
                results.append(ChangeResult(label, "failed", str(exc)))
                continue
            gone = not (store.root / action.image_id).exists() and action.image_id not in {i.id for i in store.list()}
            results.append(ChangeResult(label, "done") if gone else
                           ChangeResult(label, "failed", "still in the store after delete"))
        return results


def plan_local(settings: Settings, state_dir: Path, os_name: str, processes: Optional[dict] = None,
               refused: Mapping[str, list[str]] = MappingProxyType({})) -> LocalPrunePlan:
    store = Store(StateDir(state_dir).store)
    approved = {image.id: image for image in store.list(os_name, "approved")}
    keep = settings.lifecycle.keep_approved
    plan = LocalPrunePlan("local", os_name, str(store.root), keep, settings.lifecycle.deprecate_after_days)
    plan.notes.append("the local store has no deprecation: older approved images are only deleted beyond keep_approved")
    older = plan.rank([(i.id, i.tags, "") for i in approved.values()], refused, "in the local store")
    if not older:
        return plan
    in_use = paths_in_use([approved[i].path.parent for position, i in older if position > keep], processes)
    for position, image_id in older:
        users = in_use.get(approved[image_id].path.parent, [])
        if position > keep and not users:
            plan.actions.append(Action("delete", image_id, f"approved image #{position}, beyond keep_approved={keep}"))
        else:
            plan.protected.append(Protected(image_id, tuple(users) or (plan.within_keep(position),)))
    return plan
