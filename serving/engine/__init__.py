"""The engine: owns a model replica's sessions, batches them in phase cohorts, steps the model every chunk."""
