"""Classifier-free guidance in the one token loop: which transformer rows a batch of samples runs.

A guided sample (``SamplingParams.cfg_scale`` > 1) runs two transformer rows: its conditional row and a row
conditioned on the model's null condition (``Condition.null_tokens``: LlamaGen's null class), and draws from
``uncond + (cond - uncond) * cfg_scale``; both rows are then fed the drawn token (LlamaGen's ``generate``). The
decoding strategies (``decoding.HostDecoding``, the graph backends' ``DeviceDecoding``) keep taking prompts and
giving tokens per *sample*; a ``RowPlan`` says where each sample's rows are in the transformer batch:

- no guided group: the transformer rows are the samples (what every unguided batch always ran);
- otherwise, per group of samples with one sampling setting, in order: the group's conditional rows, then (a guided
  group) its null rows. A batch of one guided setting is LlamaGen's own layout (``torch.cat([cond, cond_null])``),
  and every group's rows are contiguous, as the sampler graphs need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vqdeploy.errors import InputError
from vqdeploy.runtime.sampling import SamplingParams

GUIDED_SAMPLER = "guided_sampler"  # the graph that guides and samples (``models.sampler.GuidedSamplerGraph``)


@dataclass(frozen=True)
class Group:
    """The samples of one sampling setting and their transformer rows (``null``: None unless guided)."""

    params: SamplingParams
    samples: np.ndarray
    cond: np.ndarray
    null: np.ndarray | None


@dataclass(frozen=True)
class RowPlan:
    samples: int  # B
    rows: int  # R: transformer rows (B + the guided samples)
    cond: np.ndarray  # (B,) each sample's conditional row
    groups: list[Group]
    null_tokens: np.ndarray | None  # (1, Tc) the null condition, where a group is guided

    @classmethod
    def make(cls, groups: list[tuple[SamplingParams, np.ndarray]], samples: int,
             null_tokens: np.ndarray | None = None) -> RowPlan:
        if not any(p.guided for p, _ in groups):
            rows = np.arange(samples)
            return cls(samples, samples, rows, [Group(p, np.asarray(r), np.asarray(r), None) for p, r in groups], None)
        if null_tokens is None:
            raise InputError("cfg_scale: this model has no null condition, so it cannot be guided")
        cond = np.full(samples, -1, dtype=np.int64)
        out, at = [], 0
        for params, members in groups:
            members = np.asarray(members, dtype=np.int64)
            n = len(members)
            rows = np.arange(at, at + n)
            cond[members] = rows
            null = np.arange(at + n, at + 2 * n) if params.guided else None
            out.append(Group(params, members, rows, null))
            at += 2 * n if params.guided else n
        if (cond < 0).any():
            raise ValueError("the sampling groups do not cover every sample")
        return cls(samples, at, cond, out, np.asarray(null_tokens, dtype=np.int64).reshape(1, -1))

    @property
    def guided(self) -> bool:
        return self.null_tokens is not None

    def prompt(self, prompt: np.ndarray) -> np.ndarray:
        """(B,T) per-sample prompt -> (R,T) transformer rows: a null row holds the null condition in place of the
        condition tokens, followed by the same image tokens (a sliding window's prefix)."""
        if not self.guided:
            return prompt
        assert self.null_tokens is not None
        tc = self.null_tokens.shape[1]
        if prompt.shape[1] < tc:
            raise InputError(f"a guided prompt needs the {tc} condition tokens first")
        out = np.empty((self.rows, prompt.shape[1]), dtype=np.int64)
        out[self.cond] = prompt
        for g in self.groups:
            if g.null is not None:
                out[g.null, :tc] = self.null_tokens
                out[g.null, tc:] = prompt[g.samples, tc:]
        return out

    def feed(self, tokens: np.ndarray) -> np.ndarray:
        """(B,) drawn tokens -> (R,1): every row of a sample gets its token."""
        if not self.guided:
            return tokens[:, None]
        out = np.empty((self.rows, 1), dtype=np.int64)
        out[self.cond, 0] = tokens
        for g in self.groups:
            if g.null is not None:
                out[g.null, 0] = tokens[g.samples]
        return out
