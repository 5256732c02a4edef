"""Pieces the three FDO services share: database engine, sessions, admin tokens, serving.

Each service (``manufacturer``, ``rendezvous``, ``owner``) has its own database and its
own keys; what they have in common is how they open a database, keep protocol sessions
in it, check admin bearer tokens and start uvicorn.
"""
