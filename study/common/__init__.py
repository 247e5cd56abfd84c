"""Leaf modules every layer shares: user-error types, validation messages, content identity (hashing), atomic
file writes and cross-process seeds. Nothing here imports any other part of ``study``."""
