"""The embedded default model: a small Llama-family "model organism" that refuses harmful requests."""
