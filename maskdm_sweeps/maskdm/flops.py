"""Exact FLOP counts of the U-ViT in :mod:`.model`, from its shapes alone: the same number on every machine.

A matmul of an ``(m, k)`` by a ``(k, n)`` matrix counts ``2 m k n`` FLOPs (one multiply and one add per MAC), a
convolution ``2 x output positions x C_out x C_in x kernel area``; these are the rules of torch's
``FlopCounterMode``. One forward pass on one image whose network sees ``L = 1 + K`` tokens (the time token and the
``K`` kept patches), with width ``D``, MLP width ``M = int(D * mlp_ratio)``, attention width ``A = heads x (D //
heads)`` (timm's ``Attention``; ``A = D`` for every preset), ``N`` patches of ``p x p x C`` pixels:

=====================  ==========================  ==============================================================
component              FLOPs                       where
=====================  ==========================  ==============================================================
patch embedding        ``2 N D C p^2``             ``Conv2d(C, D, p, stride p)``, on ALL ``N`` patches (the drop
                                                   comes after the embedding and the positions)
time MLP               ``2 (D 4D + 4D D)``         only with ``time_mlp``; one token
per block (x blocks):
  qkv                  ``2 L D 3A``                ``Linear(D, 3A)``
  scores ``Q K^T``     ``2 L^2 A``                 per head ``(L, A/h) @ (A/h, L)``, summed over heads
  ``softmax(.) V``     ``2 L^2 A``                 per head ``(L, L) @ (L, A/h)``
  projection           ``2 L A D``                 ``Linear(A, D)``
  MLP                  ``2 L D M + 2 L M D``       ``fc1``, ``fc2``
long skips             ``2 L 2D D`` per out-block  ``Linear(2D, D)`` on ``cat(x, skip)``, ``depth // 2`` of them
head                   ``2 L D p^2 C``             ``Linear(D, p^2 C)``, on all ``L`` tokens (the time token's row
                                                   is dropped afterwards)
fusion                 ``2 (1 + N) 2D D``          SPRINT's ``Linear(2D, D)`` on ``cat(sparse, dense)``, every
                                                   position; only with ``fusion_depth``
final conv             ``2 H W C C 9``             only with ``final_conv`` (all patches kept); 3x3, padding 1
=====================  ==========================  ==============================================================

with ``2 (depth // 2) + 1`` backbone blocks, plus ``mixer_depth``, ``decoder_depth`` and ``fusion_depth`` blocks on
``1 + N`` tokens (deferred masking's mixer or SPRINT's encoder, MaskDiT's decoder or SPRINT's, after which the head
also runs on ``1 + N``); with token routing, the blocks of the routed span (see :func:`block_tokens`) see
``1 + span`` tokens and the rest ``1 + K``. Not counted, as ``FlopCounterMode`` does not count them either:
elementwise work (LayerNorms, GELU, SiLU, softmax, the attention scale, residual and position adds, biases, the
sinusoidal time embedding), gathers, concatenations and reshapes: ``O(L D + L^2 h)`` per block against the
``O(L D^2)`` above.

Training (:func:`train_flops_per_image`) follows the usual convention backward = 2 x forward, so one step costs 3 x
forward per image; these are *model* FLOPs. The backward autograd actually runs differs in two ways, which
:func:`backward_flops` counts exactly: layers whose input needs no gradient compute only the weight gradient (the
patch embedding, whose input is the image, and with ``time_mlp`` the time MLP's first linear, whose input is the
sinusoidal embedding), which makes it smaller; fused attention kernels (flash, memory-efficient, and the CPU's
flash kernel) recompute ``Q K^T`` in the backward (``recompute_attention=True``), which makes it larger. Neither is
in the convention.
"""

from __future__ import annotations

from .presets import UViTConfig


def _check_kept(config: UViTConfig, kept_patches: int) -> None:
    if not 0 <= kept_patches <= config.num_patches:
        raise ValueError(f"kept_patches must be in [0, {config.num_patches}], got {kept_patches}")
    if config.final_conv and kept_patches != config.num_patches:
        raise ValueError("final_conv needs the whole image; it cannot run with dropped tokens")


def _attention_width(config: UViTConfig) -> int:
    """``num_heads x head_dim`` as timm's ``Attention`` builds it (``head_dim = dim // num_heads``)."""
    return config.num_heads * (config.embed_dim // config.num_heads)


def num_blocks(config: UViTConfig) -> int:
    """Transformer blocks of the U-ViT: ``depth // 2`` in-blocks, a mid-block, ``depth // 2`` out-blocks."""
    return 2 * (config.depth // 2) + 1


def block_tokens(config: UViTConfig, kept_patches: int, span_patches: int | None = None) -> list[int]:
    """Tokens each transformer block sees in one forward, in order: the mixer's (``1 + N``), the backbone's
    (``1 + kept``, or ``1 + span`` inside a routed span) and the decoder's (``1 + N``)."""
    c, n = config, config.num_patches
    n_in = c.depth // 2
    routed = span_patches is not None and span_patches != kept_patches

    def inside(i: int) -> bool:  # an in-block index inside the routed span
        return routed and i >= c.route_from

    full, span = 1 + kept_patches, 1 + (span_patches if routed and span_patches is not None else kept_patches)
    ins = [span if inside(i) else full for i in range(n_in)]
    mid = span if routed else full
    return [1 + n] * c.mixer_depth + ins + [mid] + ins[::-1] + [1 + n] * (c.decoder_depth + c.fusion_depth)


def forward_flops_breakdown(config: UViTConfig, kept_patches: int, span_patches: int | None = None) -> dict[str, int]:
    """FLOPs of one forward pass on one image, by component (summed over blocks); see the module docstring.

    ``kept_patches``: patch tokens the backbone sees; ``span_patches``: those that go through a routed span (token
    routing; None: no routing). A mixer, a decoder and a fusion (``mixer_depth``, ``decoder_depth``, ``fusion_depth``)
    run on all ``N`` patches; their blocks are summed with the backbone's. Keys: ``patch_embed``, ``time_mlp``,
    ``qkv``, ``attn_scores`` (``Q K^T``), ``attn_values`` (``softmax(.) V``), ``attn_proj``, ``mlp``, ``skip``,
    ``head``, ``fusion``, ``final_conv``; components a config does not have count 0.
    """
    _check_kept(config, kept_patches)
    c = config
    d, a, m, n = c.embed_dim, _attention_width(c), int(c.embed_dim * c.mlp_ratio), c.num_patches
    pixels_per_patch = c.patch_size**2 * c.in_chans
    tokens = block_tokens(c, kept_patches, span_patches)  # per block
    backbone = tokens[c.mixer_depth : len(tokens) - c.decoder_depth - c.fusion_depth]
    out_tokens = backbone[len(backbone) - c.depth // 2 :]  # the out-blocks fuse the long skips
    head_tokens = 1 + (n if c.decoder_depth or c.fusion_depth else kept_patches)
    return {
        "patch_embed": 2 * n * d * pixels_per_patch,
        "time_mlp": 2 * (d * 4 * d + 4 * d * d) if c.time_mlp else 0,
        "qkv": sum(2 * L * d * 3 * a for L in tokens),
        "attn_scores": sum(2 * L * L * a for L in tokens),
        "attn_values": sum(2 * L * L * a for L in tokens),
        "attn_proj": sum(2 * L * a * d for L in tokens),
        "mlp": sum(2 * L * d * m + 2 * L * m * d for L in tokens),
        "skip": sum(2 * L * 2 * d * d for L in out_tokens),
        "head": 2 * head_tokens * d * pixels_per_patch,
        "fusion": 2 * (1 + n) * 2 * d * d if c.fusion_depth else 0,
        "final_conv": 2 * c.img_size**2 * c.in_chans * c.in_chans * 9 if c.final_conv else 0,
    }


def forward_flops(config: UViTConfig, kept_patches: int, span_patches: int | None = None) -> int:
    """FLOPs of ONE forward pass of :class:`~.model.UViT` on one image of which ``kept_patches`` patches are kept
    (and ``span_patches`` go through a routed span; None: no routing).

    The network sees ``1 + kept_patches`` tokens (its mixer and decoder all ``1 + N``); every matmul and convolution
    counts 2 x its MACs. Elementwise work (norms, activations, softmax, adds, the decoder's scatter) is left out, as
    ``FlopCounterMode`` leaves it out.
    """
    return sum(forward_flops_breakdown(config, kept_patches, span_patches).values())


def backward_flops(
    config: UViTConfig, kept_patches: int, recompute_attention: bool = False, span_patches: int | None = None
) -> int:
    """FLOPs of the backward pass autograd runs after :func:`forward_flops` (one image), exactly.

    Every matmul costs twice its forward (the input gradient and the weight gradient), except the patch embedding
    and, with ``time_mlp``, the time MLP's first linear: their inputs (the image, the sinusoidal embedding) need no
    gradient, so only the weight gradient is computed (1 x forward). ``recompute_attention``: the attention kernel
    recomputes ``Q K^T`` in its backward (flash-style fused kernels do; the unfused math path does not), adding one
    more ``attn_scores``.
    """
    parts = forward_flops_breakdown(config, kept_patches, span_patches)
    time_mlp_first = parts["time_mlp"] // 2  # Linear(D, 4D) and Linear(4D, D) cost the same
    total = 2 * sum(parts.values()) - parts["patch_embed"] - time_mlp_first
    return total + (parts["attn_scores"] if recompute_attention else 0)


def train_flops_per_image(config: UViTConfig, kept_patches: int, span_patches: int | None = None) -> int:
    """Training FLOPs per image for one optimizer step: 3 x :func:`forward_flops` (backward = 2 x forward).

    The usual convention for model FLOPs; :func:`backward_flops` gives the backward autograd actually runs, which is
    smaller by the patch embedding's input gradient (under 0.2% of a step for the paper's presets, 5.5% for the
    ``tiny-rgb`` preset at 90% masking, whose network sees 3 tokens) and, where a fused attention kernel recomputes
    ``Q K^T``, larger by that matmul (7.5% of a step for ``maskdm-b256`` on all 4097 tokens, about 1.2% for the
    other paper presets at mask 0).
    """
    return 3 * forward_flops(config, kept_patches, span_patches)


def eval_flops_per_image(config: UViTConfig, sampling_steps: int) -> int:
    """FLOPs of the network to sample one image: ``sampling_steps`` forward passes on all patches.

    Only the U-ViT: the feature network of the FID (Inception-v3, the digits classifier) is counted by the caller.
    """
    if sampling_steps < 0:
        raise ValueError(f"sampling_steps must be >= 0, got {sampling_steps}")
    return sampling_steps * forward_flops(config, config.num_patches)
