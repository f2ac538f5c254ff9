"""LlamaGen's sampling loop (``autoregressive/models/generate.py`` at ce98ec4: ``generate``, ``sample``,
``top_k_top_p_filtering``), written again on this family's modules for ``bench``'s reference row and for tests: the
same KV-cached loop, the same rules and the same torch RNG calls (``torch.multinomial``), so its cost and its
distribution are LlamaGen's. (The parity tests compare with outputs of LlamaGen's own code, ``reference.pt``.)

Rules: logits / max(temperature, 1e-5); top-k keeps every logit >= the k-th largest; top-p (Hugging Face's
``top_k_top_p_filtering``) removes the tokens, in descending order, after the first whose cumulative probability
exceeds p; softmax; ``torch.multinomial`` (or the first top-1 with ``sample_logits=False``). With ``cfg_scale`` > 1
the batch is doubled (labels, then the null class) and each token is drawn from ``uncond + (cond - uncond) *
cfg_scale``, both halves fed the drawn token; after ``cfg_interval`` decode steps (-1: never) from ``cond`` alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vqdeploy.families.llamagen.gpt import Transformer


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """In place on (B,V) logits, as Hugging Face transformers v3.2 (LlamaGen's copy, min_tokens_to_keep 1)."""
    if top_k > 0:
        top_k = min(max(top_k, 1), logits.size(-1))
        logits[logits < torch.topk(logits, top_k)[0][..., -1, None]] = -float("inf")
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits[remove.scatter(1, sorted_indices, remove)] = -float("inf")
    return logits


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           sample_logits: bool = True) -> torch.Tensor:
    """(B,T,V) -> (B,1) tokens from the last position."""
    x = logits[:, -1, :] / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        x = top_k_top_p_filtering(x, top_k, top_p)
    probs = F.softmax(x, dim=-1)
    if sample_logits:
        return torch.multinomial(probs, num_samples=1)
    return torch.topk(probs, k=1, dim=-1)[1]


@torch.no_grad()
def generate(gpt: Transformer, labels: torch.Tensor, steps: int, null_class: int | None, cfg_scale: float = 1.0,
             cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             sample_logits: bool = True) -> torch.Tensor:
    """(B,) class labels -> (B, steps) image tokens, LlamaGen's ``generate`` for c2i models."""
    guided = cfg_scale > 1.0
    if guided and null_class is None:
        raise ValueError("this model has no null class: it cannot be guided")
    cond = torch.cat([labels, torch.full_like(labels, null_class)]) if guided else labels  # type: ignore[arg-type]
    cache = gpt.new_cache(cond.shape[0])
    kwargs: dict[str, Any] = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "sample_logits": sample_logits}

    def combine(logits: torch.Tensor, on: bool) -> torch.Tensor:
        if not guided:
            return logits
        c, u = torch.split(logits, len(logits) // 2, dim=0)
        return u + (c - u) * cfg_scale if on else c

    logits, cache = gpt.forward_cached(cond[:, None].long(), cache)
    token = sample(combine(logits, True), **kwargs)
    out = [token]
    on = True
    for i in range(steps - 1):
        if cfg_interval > -1 and i > cfg_interval:
            on = False
        x = torch.cat([token, token]) if guided else token
        logits, cache = gpt.forward_cached(x, cache)
        token = sample(combine(logits, on), **kwargs)
        out.append(token)
    return torch.cat(out, dim=1)
