"""Model components; importing this package registers the vision encoders and the MiniGPT-4 model."""
from xraygpt.models import vision_encoders  # noqa: F401  (registers eva_clip_g, medclip_vit)
from xraygpt.models.mini_gpt4 import MiniGPT4  # noqa: F401  (registers mini_gpt4 / xraygpt)

__all__ = ["MiniGPT4"]
