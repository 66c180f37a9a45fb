"""Filled in by its issue; imported by xraygpt/__init__.py for registration."""
