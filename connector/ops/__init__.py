"""Operator commands: check, status, replay, topics."""
