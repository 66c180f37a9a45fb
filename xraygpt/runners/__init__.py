"""Runners: the training loop (imported for registration, with the lr schedulers it uses)."""
from xraygpt.common import optims  # noqa: F401  (registers the lr schedulers)
from xraygpt.runners import runner_base  # noqa: F401
