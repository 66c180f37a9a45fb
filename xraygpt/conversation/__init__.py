"""Conversation templates and the multi-turn image chat."""
from xraygpt.conversation import templates  # noqa: F401  (registers the templates)
