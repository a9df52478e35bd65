"""duplex.ext_authz.v3: generated from protos/duplex/ext_authz/v3/external_auth.proto (``python protos/generate.py``), a
wire-compatible subset of Envoy's envoy/service/auth/v3/external_auth.proto; do not edit."""
