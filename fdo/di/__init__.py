"""DI, device initialisation (spec §5.2): the manufacturer gives a device its credential."""
