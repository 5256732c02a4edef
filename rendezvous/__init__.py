"""The rendezvous service: TO0 and TO1 servers over a database of owner registrations.

Importing this package loads nothing heavy; :mod:`rendezvous.app` builds the FastAPI
application and :mod:`rendezvous.cli` is the ``fdo rendezvous`` command group.
"""
