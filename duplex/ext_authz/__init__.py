"""duplex.ext_authz: the subset of Envoy's ext_authz protos the session picker serves."""
