"""Runnable experiments. Each is a small Python file with a `get_config()`; its docstring has the command."""
