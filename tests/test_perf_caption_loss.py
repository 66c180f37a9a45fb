"""The caption-only LM head gives transformers' labels= loss and the same gradients."""
from __future__ import annotations

import pytest
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


@pytest.mark.gpu
def test_fused_head_equals_plain_head_on_cuda():
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4)).cuda().eval()
    embeds = torch.randn(2, 10, 32, device="cuda")
    mask = torch.ones(2, 10, dtype=torch.long, device="cuda")
    labels = torch.randint(0, 300, (2, 10), device="cuda")
    labels[:, :4] = IGNORE_INDEX
    results = []
    for fused in (False, True):
        leaf = embeds.clone().requires_grad_(True)
        loss = caption_lm_loss(llm, leaf, mask, labels, fused=fused)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)
