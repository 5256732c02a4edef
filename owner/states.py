"""A voucher row's states (``docs/vouchers.md``, "Replacement and lost replies").

Kept apart from :mod:`owner.tables` (SQLModel) so that code running its statements on
the driver (:mod:`owner.to0`) imports them without SQLAlchemy; :mod:`owner.tables`
re-exports them.
"""

from __future__ import annotations

#: The voucher of the device's current credential: usable in TO2, kept registered by TO0.
ACTIVE = "active"
#: Replaced by a TO2 whose last reply (Done2) the device may not have received: still
#: usable, until the device's first proven contact under the new GUID.
REPLACING = "replacing"
#: Replaced for good: the device showed that it holds the replacement.
REPLACED = "replaced"
#: A replacement the device never took up: a later TO2 with the previous credential
#: replaced it.
SUPERSEDED = "superseded"
#: Extended to another owner's key (:mod:`owner.handon`): no more TO0 or TO2 for it.
HANDED_ON = "handed_on"
#: The states in which a voucher takes part in TO2 and is kept registered by TO0.
USABLE = (ACTIVE, REPLACING)
#: Every state, in the order listings show them.
STATES = (ACTIVE, REPLACING, REPLACED, SUPERSEDED, HANDED_ON)
