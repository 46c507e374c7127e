"""speechllm: build, train, evaluate and serve end-to-end speech LLMs."""

__version__ = "0.1.0"
