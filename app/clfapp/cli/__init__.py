"""The command line: one module per command; no torch import until a command runs."""
