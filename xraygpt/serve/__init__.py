"""An OpenAI-compatible chat-completions API for the model, with continuous batching (docs/serving.md)."""
