"""overnight: a self-hosted Batch API for LLM workloads, OpenAI and Azure compatible."""

__version__ = "0.1.0"
