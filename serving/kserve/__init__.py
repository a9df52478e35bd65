"""KServe Open Inference (V2) protocol for utterance-level requests, on the engine's batching scheduler
(docs/kserve.md): ``tensors`` (the request/response contract), ``utterance`` (one request as an engine
session), ``model`` (the ``kserve.Model``), ``cli`` (``duplex kserve``)."""
