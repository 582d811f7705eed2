"""Data: built-in tasks, users' files, splits, the tokenizer, encoding and the one definition of a counted token."""
