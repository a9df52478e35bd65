"""duplex.v1: generated from protos/duplex/v1/duplex.proto (``python protos/generate.py``); do not edit."""
