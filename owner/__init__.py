"""The owner service: voucher import, TO0 client scheduler, TO2 server and admin API.

Importing this package (or :mod:`owner.cli`) loads no server stack; :mod:`owner.app`
does.
"""
