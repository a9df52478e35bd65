"""The browser page the gateway serves at ``/`` (files in ``static/``; docs/realtime.md)."""
