"""Tasks: what a job builds and what one step computes (imported for registration)."""
from xraygpt.tasks import image_text_pretrain  # noqa: F401
