"""The HTTP server: an OpenAI-compatible API over the inference engine, and the web page.

Needs the `serve` extra (fastapi, uvicorn, python-multipart). `create_app(engine, settings)`
builds the app; `speechllm serve` runs it with uvicorn.
"""
