"""Ground floor: config, errors, records, run store, data, models, face evaluators, metrics, defenses (imports nothing above it)."""
