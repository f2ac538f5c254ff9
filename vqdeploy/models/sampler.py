"""The sampler as a graph: the host sampler's rules (``runtime/sampling.py``) in fp32 torch ops, exported as
``sampler.onnx`` for every family, so that a loop over graphs or engines needs no logits work."""

from __future__ import annotations

import torch
from torch import nn

# TensorRT's TopK takes K <= 3840 (its input axis may be longer: K = 3840 over 16384 and 19200
# builds with TensorRT-RTX 1.7); a vocabulary beyond it is sorted in rounds of at most this many
TOPK_MAX = 3840


def ranked_desc(x: torch.Tensor, chunk: int = TOPK_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,V) -> every value in descending order with its index, from TopKs of K <= ``chunk``.

    A vocabulary of at most ``chunk`` is one sort (one TopK); a larger one is sorted in
    ceil(V / chunk) rounds: each takes the TopK(chunk) of what is left and sets the taken entries
    to -inf by index (ScatterElements), the last takes the rest. Each index is taken exactly once
    (ties are split by index, not by value), so the result is the exact descending order, whatever
    top-k or top-p then needs of it.
    """
    vocab = x.shape[-1]
    if vocab <= chunk:
        return torch.sort(x, dim=-1, descending=True)
    values, indices = [], []
    left = x
    for start in range(0, vocab, chunk):
        v, i = torch.topk(left, min(chunk, vocab - start), dim=-1)
        values.append(v)
        indices.append(i)
        if start + chunk < vocab:
            left = left.scatter(-1, i, torch.full_like(v, -torch.inf))
    return torch.cat(values, dim=-1), torch.cat(indices, dim=-1)


_GRID = float(2**23)


def _grid(p: torch.Tensor) -> torch.Tensor:
    """p (in [0, 1]) rounded down to a multiple of 2^-23: sums of these up to 2 are exact in fp32."""
    return torch.floor(p * _GRID) / _GRID


def split_cumsum(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The running sum of probabilities as hi + lo: hi, the running sum of ``_grid(p)``, is exact;
    lo, that of the remainders (each < 2^-23), is small, so its rounding error is tiny. A plain fp32
    running sum over 8192 tokens is off by ~1e-6 and moves draws near a CDF step away from the
    host's float64 (measured: 2 of 144 draws at top-k 5000); comparisons are then made as
    ``hi - target <= -lo`` (near a step, hi - target is exact)."""
    hi = _grid(p)
    return hi.cumsum(-1), (p - hi).cumsum(-1)


class SamplerGraph(nn.Module):
    """logits (B,T,V) of the last position + one uniform per sample -> next token (B,1), in fp32.

    The host sampler's rules (``runtime/sampling.py``) as a graph, so that a C++ loop can chain
    transformer -> sampler -> transformer without post-processing logits, and the token can feed
    the next step's ``tokens`` input as is. Parameters are inputs, so one graph (and engine) serves
    every setting: temperature <= 0 or top_k == 1 is greedy (the first maximal logit), top_k >= V
    and top_p >= 1 switch those filters off.

    Top-k and top-p need the logits in descending order. Up to ``TOPK_MAX`` tokens that is one sort
    (one TopK) of the logits and one of the probabilities; beyond, ``ranked_desc`` sorts the logits
    in rounds of TopK(3840) and the probabilities are read in that order (softmax is monotonic, so
    they are sorted too: the same values in the same order as sorting them), so every setting stays
    exact at any vocabulary, at the cost of ceil(V / 3840) TopKs per token.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, logits: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        uniform, temperature, top_k, top_p = params  # (B,), (1,), (1,) int64, (1,)
        v = self.vocab_size
        greedy = (temperature <= 0) | (top_k == 1)  # (1,)
        x = logits[:, -1, :].float() / torch.where(temperature > 0, temperature, torch.ones_like(temperature))
        k = torch.where(greedy, torch.ones_like(top_k), top_k.clamp(1, v))
        ranked, order = ranked_desc(x)
        kth = ranked.index_select(1, k - 1)  # (B,1): top-k keeps every logit equal to the k-th
        x = torch.where(x < kth, torch.full_like(x, -torch.inf), x)
        p = torch.softmax(x, dim=-1)
        if v <= TOPK_MAX:
            ranked_p = torch.sort(p, dim=-1, descending=True).values
        else:  # p in the logits' descending order is sorted; a -inf logit has p = 0 wherever it is
            ranked_p = torch.where(ranked > -torch.inf, p.gather(-1, order), torch.zeros_like(ranked))
        hi, lo = split_cumsum(ranked_p)
        # mass of the strictly more likely tokens <= top_p, i.e. (hi - hi_p) + (lo - lo_p) <= top_p
        keep = ((hi - _grid(ranked_p)) - top_p <= -(lo - (ranked_p - _grid(ranked_p)))) | (top_p >= 1)
        threshold = torch.where(keep, ranked_p, torch.full_like(ranked_p, torch.inf)).amin(-1, keepdim=True)
        p = torch.where(p >= threshold, p, torch.zeros_like(p))
        hi, lo = split_cumsum(p)
        target = torch.where(greedy, torch.zeros_like(uniform), uniform)[:, None] * (hi[:, -1:] + lo[:, -1:])
        idx = (hi - target <= -lo).to(torch.float32).sum(-1, keepdim=True)  # inverse CDF: cdf <= target
        return idx.clamp(max=v - 1).to(torch.int64)


class GuidedSamplerGraph(nn.Module):
    """Classifier-free guidance and the sampler in one graph, for models with a null condition (LlamaGen).

    ``logits`` (2B,T,V): rows 0..B-1 conditional, rows B..2B-1 the same samples' null-condition rows (LlamaGen's
    layout: ``torch.cat([cond, cond_null])``); the last position is used. ``cfg_scale`` (1,): above 1 the draw is
    from ``uncond + (cond - uncond) * cfg_scale`` (LlamaGen's expression, fp32), at 1 (guidance off, e.g. after
    ``cfg_interval``) from the conditional logits exactly. Then ``SamplerGraph``'s rules with ``uniform`` (B) and
    the three settings. Output ``tokens`` (2B,1): each sample's token for both of its rows, ready to bind as the
    next step's ``tokens`` input (a null row is fed the token drawn for its sample, as upstream does)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.sampler = SamplerGraph(vocab_size)

    def forward(self, logits: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        uniform, temperature, top_k, top_p, cfg_scale = params
        b = uniform.shape[0]
        last = logits[:, -1:, :].float()
        cond, uncond = last[:b], last[b:]
        guided = torch.where(cfg_scale > 1, uncond + (cond - uncond) * cfg_scale, cond)
        tokens = self.sampler(guided, uniform, temperature, top_k, top_p)
        return torch.cat([tokens, tokens], dim=0)
