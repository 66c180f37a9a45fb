"""The caption-only LM head gives transformers' labels= loss and the same gradients."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xraygpt.models.caption_loss import IGNORE_INDEX, caption_lm_loss


def test_loss_and_gradients_equal_hf_labels_path():
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4)).eval()
    embeds = torch.randn(3, 12, 32)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding, as training batches have
    labels = torch.randint(0, 300, (3, 12))
    labels[:, :5] = IGNORE_INDEX  # prompt and image positions
    labels[1, 9:] = IGNORE_INDEX

    grads = []
    for compute in (lambda e: llm(inputs_embeds=e, attention_mask=mask, labels=labels).loss,
                    lambda e: caption_lm_loss(llm, e, mask, labels)):
        leaf = embeds.clone().requires_grad_(True)
        loss = compute(leaf)
        loss.backward()
        grads.append((loss.detach(), leaf.grad))
    (ref_loss, ref_grad), (loss, grad) = grads
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    assert grad.abs().sum() > 0
