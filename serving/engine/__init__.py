"""The engine: owns a model replica's sessions, batches them in phase cohorts, steps the model every chunk.

One way through small stages: ``session`` (who owns what) → ``planner`` (which rows step, with which chunks)
→ ``executor`` (model + codec under one mask) → ``output`` (server events, on the event loop), wired by
``scheduler`` and served by ``server``.
"""
