"""Evaluation: exact match and F1, teacher-forced scoring and greedy decoding."""
