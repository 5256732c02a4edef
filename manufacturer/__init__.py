"""The manufacturer service: DI server, voucher store and the voucher hand-off admin API.

Only :mod:`manufacturer.cli` may be imported without the server stack (the ``fdo``
command loads it); everything else imports FastAPI and SQLModel.
"""
