"""The owner's state names, without the tables.

The table modules (:mod:`owner.tables`, :mod:`owner.groups_tables`,
:mod:`owner.rollouts_tables`: SQLModel) re-export these; code on the device plane imports
them from here, so a worker that serves only devices never loads SQLModel or SQLAlchemy.
"""

from __future__ import annotations

# A voucher row's state (``docs/vouchers.md``, "Replacement and lost replies"):
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

# Device statuses: known from a voucher or a label; TO2 running; TO2 done and the
# assignment delivered in full or in part; TO2 done but none of the assignment could be
# delivered (the device lacks the modules); image applied; failed.
NEW = "new"
ONBOARDING = "onboarding"
ONBOARDED = "onboarded"
UNDELIVERED = "undelivered"
APPLIED = "applied"
FAILED = "failed"
STATUSES = (NEW, ONBOARDING, ONBOARDED, UNDELIVERED, APPLIED, FAILED)

# A rollout's state (docs/rollouts.md).
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
ABORTED = "aborted"
ROLLOUT_STATES = (RUNNING, PAUSED, COMPLETED, ABORTED)
ACTIVE_STATES = (RUNNING, PAUSED)
