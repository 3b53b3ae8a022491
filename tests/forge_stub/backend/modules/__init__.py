"""Forge 2 stand-in."""
