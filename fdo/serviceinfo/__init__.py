"""ServiceInfo: the TO2 68/69 exchange and its modules (spec §3.8, reference §7).

Sans-I/O throughout; modules that touch the device system take injected callables.

* :mod:`.kv` — :class:`ServiceInfoKV`, ``ServiceInfo`` encode/decode, MTU chunking
  (:func:`chunk_kvs`, :class:`OutQueue`) and go-style fragment :class:`Reassembler`.
* :mod:`.devmod` — :class:`Devmod` (device writes it) and :class:`DevmodParser` (owner
  reads and validates it, as go does).
* :mod:`.owner` — :class:`OwnerModule` and :class:`OwnerServiceInfoDriver`, which turns
  each DeviceServiceInfo into an OwnerServiceInfo and serialises between requests.
* :mod:`.device` — :class:`DeviceModule` and :class:`DeviceServiceInfoDriver`.
* :mod:`.command`, :mod:`.download`, :mod:`.upload` — the standard FSIMs, both sides.
"""

from fdo.serviceinfo.command import CommandDevice, CommandOwner, CommandResult
from fdo.serviceinfo.device import DeviceModule, DeviceRequest, DeviceServiceInfoDriver
from fdo.serviceinfo.devmod import DEVMOD, Devmod, DevmodParser
from fdo.serviceinfo.download import DownloadDevice, DownloadOwner
from fdo.serviceinfo.kv import (
    DEFAULT_MTU,
    DEVICE_SLACK,
    MAX_ROUNDS,
    MAX_VALUE_SIZE,
    OWNER_SLACK,
    OutQueue,
    Reassembler,
    ServiceInfoKV,
    ServiceInfoMessage,
    chunk_kvs,
    decode_service_info,
    effective_mtu,
    encode_service_info,
    max_bstr_data,
    max_value_size,
    service_info_size,
)
from fdo.serviceinfo.owner import (
    ModuleStatus,
    OwnerModule,
    OwnerReply,
    OwnerServiceInfoDriver,
    Restore,
    SelectModules,
    UnlistedModules,
    module_restorer,
)
from fdo.serviceinfo.upload import UploadDevice, UploadOwner

#: Restores the standard owner modules (pass to OwnerServiceInfoDriver.from_state).
restore_standard: Restore = module_restorer(CommandOwner, DownloadOwner, UploadOwner)

__all__ = [
    "DEFAULT_MTU",
    "DEVICE_SLACK",
    "DEVMOD",
    "MAX_ROUNDS",
    "MAX_VALUE_SIZE",
    "OWNER_SLACK",
    "CommandDevice",
    "CommandOwner",
    "CommandResult",
    "DeviceModule",
    "DeviceRequest",
    "DeviceServiceInfoDriver",
    "Devmod",
    "DevmodParser",
    "DownloadDevice",
    "DownloadOwner",
    "ModuleStatus",
    "OutQueue",
    "OwnerModule",
    "OwnerReply",
    "OwnerServiceInfoDriver",
    "Reassembler",
    "Restore",
    "SelectModules",
    "ServiceInfoKV",
    "ServiceInfoMessage",
    "UnlistedModules",
    "UploadDevice",
    "UploadOwner",
    "chunk_kvs",
    "decode_service_info",
    "effective_mtu",
    "encode_service_info",
    "max_bstr_data",
    "max_value_size",
    "module_restorer",
    "restore_standard",
    "service_info_size",
]
