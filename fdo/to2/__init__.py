"""TO2 (spec §5.5): the device and its owner prove themselves and transfer ownership."""
