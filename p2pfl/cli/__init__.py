"""The ``p2pfl`` command line: one module per command."""
