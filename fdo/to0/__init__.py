"""TO0 (spec §5.3): the owner registers its voucher and TO2 address with a rendezvous server."""
