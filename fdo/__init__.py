"""fdo: the sans-I/O FIDO Device Onboard 1.1 protocol core.

Wire format (CBOR), cryptography, ownership vouchers, ServiceInfo and the protocol state
machines of DI, TO0, TO1 and TO2. Nothing here does I/O: no sockets, files, clocks or
environment; ``now`` and randomness are passed in. See ``docs/`` and the FDO 1.1 spec.
"""

__version__ = "0.1.0"
