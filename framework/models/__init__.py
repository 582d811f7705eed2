"""Models: recoup's transformer."""
