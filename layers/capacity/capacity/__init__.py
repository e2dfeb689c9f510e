"""The capacity engine's shared Lambda layer: rules, the guarded write, idempotency, events,
metrics and alert logic. Runtime code only."""
