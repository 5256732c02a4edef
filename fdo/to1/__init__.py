"""TO1 (spec §5.4): the device asks the rendezvous server where its owner is."""
