"""LlamaGen's image tokenizer (``tokenizer/tokenizer_image/vq_model.py`` at ce98ec4), key-for-key and op-for-op
in eval mode: a taming-style encoder/decoder (its ``conv_blocks``/``mid`` layout) and a ``VectorQuantizer`` whose
codebook and latents are l2-normalised before the nearest-code search (``codebook_l2_norm``, cosine similarity).

The residual, attention and resampling blocks are the same computations as taming's (``vqdeploy.models.autoencoder``,
whose fp16 handling they bring); only the module tree and its key names differ. The modules are built from
widths (what the weights hold: ``ch * ch_mult[i]``), so a checkpoint of any width loads (LlamaGen's own
``VQModel`` fixes ``ch`` at 128).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.models.autoencoder import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, nonlinearity
from vqdeploy.models.nearest_code import nearest_code, nearest_code_distances


class Encoder(nn.Module):
    def __init__(self, in_channels: int, ch: int, widths: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.num_resolutions = len(widths)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i_level, block_out in enumerate(widths):
            conv_block = nn.Module()
            res, attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                res.append(ResnetBlock(in_channels=block_in, out_channels=block_out))
                block_in = block_out
                if i_level == self.num_resolutions - 1:
                    attn.append(AttnBlock(block_in))
            conv_block.res = res
            conv_block.attn = attn
            if i_level != self.num_resolutions - 1:
                conv_block.downsample = Downsample(block_in, True)
            self.conv_blocks.append(conv_block)
        self.mid = nn.ModuleList([ResnetBlock(in_channels=block_in, out_channels=block_in), AttnBlock(block_in),
                                  ResnetBlock(in_channels=block_in, out_channels=block_in)])
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, block in enumerate(self.conv_blocks):
            for i_block in range(self.num_res_blocks):
                h = block.res[i_block](h)
                if len(block.attn) > 0:
                    h = block.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = block.downsample(h)
        for mid in self.mid:
            h = mid(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, z_channels: int, widths: Sequence[int], num_res_blocks: int, out_channels: int) -> None:
        super().__init__()
        self.num_resolutions = len(widths)
        self.num_res_blocks = num_res_blocks
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(in_channels=block_in, out_channels=block_in), AttnBlock(block_in),
                                  ResnetBlock(in_channels=block_in, out_channels=block_in)])
        self.conv_blocks = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            conv_block = nn.Module()
            res, attn = nn.ModuleList(), nn.ModuleList()
            block_out = widths[i_level]
            for _ in range(num_res_blocks + 1):
                res.append(ResnetBlock(in_channels=block_in, out_channels=block_out))
                block_in = block_out
                if i_level == self.num_resolutions - 1:
                    attn.append(AttnBlock(block_in))
            conv_block.res = res
            conv_block.attn = attn
            if i_level != 0:
                conv_block.upsample = Upsample(block_in, True)
            self.conv_blocks.append(conv_block)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for mid in self.mid:
            h = mid(h)
        for i_level, block in enumerate(self.conv_blocks):
            for i_block in range(self.num_res_blocks + 1):
                h = block.res[i_block](h)
                if len(block.attn) > 0:
                    h = block.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = block.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """LlamaGen's quantizer in eval mode: ``embedding`` (K, C) and, where the checkpoint has it, the training-usage
    buffer ``codebook_used`` (kept for the key-for-key state_dict; eval never reads it)."""

    def __init__(self, n_e: int, e_dim: int, l2_norm: bool, usage_buffer: int | None) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = n_e, e_dim, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        if usage_buffer is not None:
            self.register_buffer("codebook_used", torch.zeros(usage_buffer))

    def codebook(self) -> torch.Tensor:
        """The (K, C) codes the search and the decoder use: l2-normalised as upstream (``F.normalize``) when
        ``l2_norm``, else the raw table."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def normalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) latent as the search sees it: normalised over C when ``l2_norm``, channels-last and
        contiguous as upstream's ``F.normalize(z_flattened)`` (the same reduction order, so the same bits)."""
        if not self.l2_norm:
            return z
        return F.normalize(z.permute(0, 2, 3, 1).contiguous(), p=2, dim=-1).permute(0, 3, 1, 2)

    def indices(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B,C,h,w) -> (B,h,w): upstream's ``d = |z|^2 + |e|^2 - 2 z.e`` and first argmin, on the normalised
        vectors (``vqdeploy::nearest_code``, exported as one NearestCode node)."""
        return nearest_code(self.normalize_latent(z), self.codebook() if codebook is None else codebook)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B,h,w,K) the search's distances (parity certifies near-ties with them)."""
        return nearest_code_distances(self.normalize_latent(z), self.codebook())


class VQModel(nn.Module):
    """``encode`` image -> indices and ``decode_code`` indices -> image, as upstream's (eval mode)."""

    def __init__(self, in_channels: int, ch: int, encoder_widths: Sequence[int], decoder_widths: Sequence[int],
                 num_res_blocks: int, z_channels: int, codebook_size: int, codebook_embed_dim: int,
                 out_channels: int = 3, l2_norm: bool = True, usage_buffer: int | None = 65536) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.ch = in_channels, out_channels, ch
        self.encoder_widths, self.decoder_widths = list(encoder_widths), list(decoder_widths)
        self.z_channels, self.embed_dim, self.n_embed = z_channels, codebook_embed_dim, codebook_size
        self.encoder = Encoder(in_channels, ch, encoder_widths, num_res_blocks, z_channels)
        self.decoder = Decoder(z_channels, decoder_widths, num_res_blocks, out_channels)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim, l2_norm, usage_buffer)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return int(2 ** (len(self.encoder_widths) - 1))

    @property
    def upsample_factor(self) -> int:
        return int(2 ** (len(self.decoder_widths) - 1))

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> the (B,embed_dim,h,w) latent the quantizer searches."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize.indices(self.latent(x))

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,h,w) indices -> (B,C,H,W) image: the codes (normalised) -> post_quant_conv -> decoder."""
        b, h, w = indices.shape
        quant = self.quantize.codebook()[indices.reshape(-1)].reshape(b, h, w, self.embed_dim).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(quant.contiguous()))
