"""What a run survives: checkpoints and their integrity, the workdir's lock, buckets, signals,
several hosts, metrics and profiles. The trainer and the evaluator use these; nothing here knows
the recipe."""
