"""Coding schemes: each one's plan (the master's side: what to send, when results suffice, how to decode)."""
