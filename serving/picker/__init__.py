"""The session picker: Envoy's ``ext_authz`` gRPC service. Once per conversation (on the stream's headers) it
checks the API key, the key's quotas, and picks the engine replica the stream goes to."""
