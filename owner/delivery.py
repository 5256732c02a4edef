"""What a device got of its assignment in a completed TO2, for its record.

:func:`delivery_of` runs when TO2 completes (``record_done``) and gives the device
record's ``delivery``::

    {"result": "full" | "partial" | "none",
     "revision": 3,                       # the revision that was assigned
     "via": "bootc" | "stock",            # our bootc module, or fdo.download/fdo.command
     "delivered": [{"item": "file:/etc/x", "part": "content", "via": "fdo.download"}, ...],
     "missing": [{"item": "image:registry/x@sha256:..", "part": "switch",
                  "needs": "fdo.command", "reason": "the device does not list fdo.command"}]}

* **bootc module**: an item is delivered once the device acknowledged it (``result``
  ok) and the assignment as a whole once the device accepted it (``end``); an item the
  device failed or never answered is missing, with the device's error.
* **stock client**: the plan of :func:`fdo.serviceinfo.bootc.stock_plan` for the modules
  the device listed, made again from the (immutable) revision: TO2 completes only when
  every ``fdo.download`` was stored and every ``fdo.command`` exited 0, so what was
  sent was delivered, except through a module the device declined (``active`` false).

``full``: nothing missing; ``none``: nothing delivered; ``partial``: the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fdo.serviceinfo import OwnerModule
from fdo.serviceinfo.bootc import BOOTC, BootcOwner, Sent, Shortfall, items, stock_plan
from fdo.serviceinfo.devmod import Devmod
from fdo.serviceinfo.owner import ModuleStatus
from owner import groups
from owner.assign import to_bootc

FULL = "full"
PARTIAL = "partial"
NONE = "none"

Modules = Sequence[tuple[OwnerModule, ModuleStatus]]


def _declined(module: str) -> str:
    return f"the device declined {module} (active = false)"


def _bootc(module: BootcOwner, status: ModuleStatus) -> tuple[list[Sent], list[Shortfall]]:
    sent: list[Sent] = []
    missing: list[Shortfall] = []
    for seq, item in enumerate(items(module.assignment)):
        result = module.results.get(seq)
        if status == ModuleStatus.SKIPPED:
            missing.append(Shortfall(item.label, "item", BOOTC, _declined(BOOTC)))
        elif result is None:
            missing.append(Shortfall(item.label, "item", None, "the device did not acknowledge it"))
        elif not result.ok:
            missing.append(Shortfall(item.label, "item", None, result.error or "the device failed it"))
        else:
            sent.append(Sent(item.label, "item", BOOTC))
    if status != ModuleStatus.SKIPPED and not module.accepted:
        why = module.end_error or "the device did not accept the assignment"
        missing.append(Shortfall("assignment", "end", None, why))
    return sent, missing


def _stock(
    assignment: groups.Assignment, devmod: Devmod, modules: Modules
) -> tuple[list[Sent], list[Shortfall]]:
    plan = stock_plan(to_bootc(assignment, None), devmod.modules)
    skipped = {m.name for m, status in modules if status == ModuleStatus.SKIPPED}
    sent = [s for s in plan.sent if s.via not in skipped]
    declined = [Shortfall(s.item, s.part, s.via, _declined(s.via)) for s in plan.sent if s.via in skipped]
    return sent, [*plan.missing, *declined]


def delivery_of(
    assignment: groups.Assignment | None, devmod: Devmod | None, modules: Modules
) -> dict[str, Any] | None:
    """The ``delivery`` of a completed TO2 that was assigned ``assignment`` (None: none was)."""
    if assignment is None or devmod is None:
        return None
    bootc = next(((m, s) for m, s in modules if isinstance(m, BootcOwner)), None)
    if bootc is not None:
        via = "bootc"
        sent, missing = _bootc(*bootc)
    else:
        via = "stock"
        sent, missing = _stock(assignment, devmod, modules)
    result = FULL if not missing else NONE if not sent else PARTIAL
    return {
        "result": result,
        "revision": assignment.revision.number,
        "via": via,
        "delivered": [s.to_json() for s in sent],
        "missing": [m.to_json() for m in missing],
    }
