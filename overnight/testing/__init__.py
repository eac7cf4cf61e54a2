"""Test helpers shipped with the package: a real OpenAI-compatible upstream stub."""
