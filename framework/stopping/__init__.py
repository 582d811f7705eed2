"""Stopping: stopping points, stopping rules, the budget rule and their offline tuning."""
