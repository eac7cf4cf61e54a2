"""Test infrastructure: an OpenAI-compatible upstream stub (also used by bench/)."""
