"""The last transformer layer computed only where its output is read.

Both encoders read a few tokens of their last layer: PaSST its class and distillation tokens
((CLS + DIST) / 2, method §3.1), the text encoder its first token (method §4). The other tokens'
outputs of that layer were computed and thrown away. Here the last layer keeps keys and values for
every token (the read tokens attend to all of them) but computes queries, the attention output and
the feed-forward part for the read tokens only. Layer norm works per token, so the embeddings are
the same up to float rounding, and so are the gradients. For the small PaSST (2 blocks, about 140
tokens after patchout) and the tiny profile's 2 training text layers, that is most of the last
layer's work: the tiny profile's nine students of notebook 03 trained in 0.64 times the time
(``results/benchmarks/pipeline.json`` against its baseline, fp32 on 2 cores).
"""

from __future__ import annotations

import torch
from torch import nn


class ReadoutBlock(nn.Module):
    """A hear21passt ``Block`` whose forward returns only its first ``n_read`` tokens.

    It holds the block's own modules under the same names (``norm1``, ``attn``, ``drop_path``,
    ``norm2``, ``mlp``), so every checkpoint's keys, the released one's included, load unchanged.
    """

    def __init__(self, block: nn.Module, n_read: int):
        super().__init__()
        self.norm1, self.attn, self.drop_path = block.norm1, block.attn, block.drop_path
        self.norm2, self.mlp = block.norm2, block.mlp
        self.n_read = n_read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, n_read, C): the block's output at the first ``n_read`` positions."""
        attn, n = self.attn, self.n_read
        batch, tokens, width = x.shape
        heads = attn.num_heads
        h = self.norm1(x)
        if isinstance(attn.qkv, nn.Linear):  # the fused weights split: queries for the read tokens only
            weight, bias = attn.qkv.weight, attn.qkv.bias
            q = nn.functional.linear(h[:, :n], weight[:width], None if bias is None else bias[:width])
            kv = nn.functional.linear(h, weight[width:], None if bias is None else bias[width:])
        else:  # a quantised or wrapped projection has no weight to split: one call, unread queries dropped
            qkv = attn.qkv(h)
            q, kv = qkv[:, :n, :width], qkv[..., width:]
        q = q.reshape(batch, n, heads, width // heads).transpose(1, 2)  # (B, heads, n, d)
        k, v = kv.reshape(batch, tokens, 2, heads, width // heads).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
        weights = attn.attn_drop(((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1))
        mixed = attn.proj_drop(attn.proj((weights @ v).transpose(1, 2).reshape(batch, n, width)))
        y = x[:, :n] + self.drop_path(mixed)
        return y + self.drop_path(self.mlp(self.norm2(y)))


def first_token_of_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A BERT-family layer (BERT, RoBERTa, MiniLM) on ``hidden`` (B, T, d), computed for the first token only.

    ``mask``: the attention mask transformers' ``create_bidirectional_mask`` gives for the layer (None,
    boolean or additive, broadcast over queries or one row per query). Attention runs through
    torch's ``scaled_dot_product_attention`` with the layer's attention dropout while training; the
    layer's own output modules (dense, dropout, residual, layer norm) do the rest. Returns (B, 1, d).
    """
    self_attention = layer.attention.self
    batch, tokens, _ = hidden.shape
    heads, size = self_attention.num_attention_heads, self_attention.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, T, heads * size) -> (B, heads, T, size)
        return x.view(batch, x.shape[1], heads, size).transpose(1, 2)

    query = split(self_attention.query(hidden[:, :1]))
    key, value = split(self_attention.key(hidden)), split(self_attention.value(hidden))
    if mask is not None and mask.shape[-2] > 1:
        mask = mask[..., :1, :]
    dropout = self_attention.dropout.p if self_attention.training else 0.0
    context = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                         scale=self_attention.scaling)
    attended = layer.attention.output(context.transpose(1, 2).reshape(batch, 1, heads * size), hidden[:, :1])
    return layer.output(layer.intermediate(attended), attended)


def read_only_class_tokens(passt: nn.Module) -> nn.Module:
    """``passt`` with its last block replaced by a ``ReadoutBlock`` of its class (and distillation) token."""
    if not isinstance(passt.blocks[-1], ReadoutBlock):
        passt.blocks[-1] = ReadoutBlock(passt.blocks[-1], 1 + (passt.dist_token is not None))
    return passt
