"""The gateway: API-key auth, admission, least-loaded routing to engine replicas, relay, graceful drain."""
