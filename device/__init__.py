"""The device client: credential file, onboarding driver and ServiceInfo modules.

* :mod:`device.credfile` reads and writes the credential file (no HTTP stack).
* :mod:`device.onboard` runs DI, and TO1 then TO2 following the rendezvous directives.
* :mod:`device.modules` gives ``fdo.command``, ``fdo.download`` and ``fdo.upload`` their
  system access (subprocess, files under a root folder).

Nothing is imported here, so ``fdo device show`` loads neither httpx nor the services.
"""
