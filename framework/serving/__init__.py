"""Serving: loading served models, bucketed generation, micro-batching, the OpenAI-shaped API
and its server."""
