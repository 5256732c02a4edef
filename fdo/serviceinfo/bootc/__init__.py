"""The bootc ServiceInfo module, both sides (vendor FSIM ``com.fdo-bootc.bootc``; docs/serviceinfo.md).

The name sits outside the ``fdo.*`` space the FIDO Alliance reserves for standard
modules; ``com.fdo-bootc`` is the project's reverse-DNS prefix.

Flow (all values CBOR)::

    owner  -> get-status  null
    device -> status      {"bootc": bool, "image", "digest", "staged-image", "staged-digest"}
    owner  -> item        [seq, kind, meta, length, sha-384]      } once per item, in the
    owner  -> data        bstr (repeated until ``length`` bytes)    } order of :func:`items`
    device -> result      [seq, ok, error-or-null]                  (one per item)
    owner  -> end         uint (number of items sent)
    device -> end         [ok, error-or-null]

Items go in the order the device applies them: registry credentials, signature policy
(``policy.json``, ``registries.d`` entries, public keys), configuration files, systemd
units, SSH authorized keys, the status report endpoint, and last the image pinned by
digest. Contents are split into ``data`` blocks that each fit the negotiated MTU
(:func:`~fdo.serviceinfo.kv.max_bstr_data`), so no value is ever fragmented.

The device side collects the accepted items into an :class:`Assignment`; it does no
system I/O (its status comes from an injected callable). Applying happens after TO2
(``device/apply.py``). :func:`fallback_modules` expresses the same assignment with
``fdo.download`` and ``fdo.command`` for stock clients that lack this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from fdo.serviceinfo.bootc.device import BootcDevice, StatusProvider
from fdo.serviceinfo.bootc.model import (
    AUTH_PATH,
    BOOTC,
    NOT_BOOTC,
    POLICY_PATH,
    REGISTRIES_D,
    ApplyMode,
    Assignment,
    BootcStatus,
    FileItem,
    ImageRef,
    InvalidAssignmentError,
    Item,
    ItemKind,
    ItemResult,
    Report,
    SSHKeys,
    items,
    parse_bootc_status,
    split_digest_ref,
)
from fdo.serviceinfo.bootc.owner import (
    UNIT_DIR,
    BootcOwner,
    Sent,
    Shortfall,
    StockPlan,
    authorized_keys_path,
    fallback_modules,
    restore_bootc,
    stock_plan,
    switch_commands,
)

__all__: Sequence[str] = [
    "AUTH_PATH",
    "BOOTC",
    "NOT_BOOTC",
    "POLICY_PATH",
    "REGISTRIES_D",
    "ApplyMode",
    "Assignment",
    "BootcDevice",
    "BootcOwner",
    "BootcStatus",
    "FileItem",
    "ImageRef",
    "InvalidAssignmentError",
    "Item",
    "ItemKind",
    "ItemResult",
    "Report",
    "SSHKeys",
    "Sent",
    "Shortfall",
    "StatusProvider",
    "StockPlan",
    "UNIT_DIR",
    "authorized_keys_path",
    "fallback_modules",
    "items",
    "parse_bootc_status",
    "restore_bootc",
    "split_digest_ref",
    "stock_plan",
    "switch_commands",
]
