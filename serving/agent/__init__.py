"""The background agent: tools run by Redis Streams workers beside the conversation, results flowing back.

- ``tools/``: the plugin interface (:class:`~duplex.serving.agent.tools.Tool`) and the built-in tools.
- ``protocol``: the job and update records and the stream names of one deployment.
- ``streams``: the Redis side shared by workers and clients (groups, the atomic finish script, backoff).
- ``worker``: the worker pool (``duplex agent``); ``client``: the engine-facing :class:`AgentClient`.
- ``toolcall``: the model-initiated tool-call syntax and the tool-result text injected back.

docs/agent.md describes the job flow and its crash-safety rules.
"""
