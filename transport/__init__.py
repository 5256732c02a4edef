"""FDO 1.1 over HTTP (reference §1), written once for both ends.

:mod:`transport.client` drives a core :class:`~fdo.machine.ClientMachine` with http.client;
:mod:`transport.server` serves core :class:`~fdo.machine.ServerMachine` sessions from a
FastAPI router: :mod:`transport.dispatch` handles one message in named steps, and
:mod:`transport.sessions` keeps sessions between messages. The core (``fdo``) never
imports this package.
"""
