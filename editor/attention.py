"""Cross-attention probes: record a pass's attention maps, or pull another pass toward them.

Only the UNet's cross-attention layers get a probing processor; every other layer keeps its
own (SDPA by default), and a probed layer falls back to its own processor on forwards that
neither record nor compare. The probing processors are built once per set of original
processors and reused, so a compiled UNet sees the same objects on every edit and keeps its
graphs. While attached, parameters are frozen; processors and ``requires_grad`` flags are
restored in ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention


def map_distance(probs: torch.Tensor, target: torch.Tensor, heads: int) -> torch.Tensor:
    """pix2pix-zero's attention loss, summed over a batch of K edits.

    ``probs`` is ``[2 * K * heads, queries, tokens]`` (K negative halves, then K directed
    halves); ``target`` holds the recorded maps of one half (``[heads, ...]``, a batch-1
    reconstruction) or of both (``[2 * heads, ...]``). Each edit's loss is the mean over its
    2 x heads rows of the summed squared differences, so its gradient is its own.
    """
    difference = probs.float().unflatten(0, (2, -1, heads)) - target.float().unflatten(0, (-1, 1, heads))
    rows = difference.pow(2).sum((-2, -1))  # [2, K, heads]
    return rows.transpose(0, 1).flatten(1).mean(1).sum()


class _ProbedCrossAttention:
    """A cross-attention processor that exposes its attention probabilities to a probe."""

    def __init__(self, name: str, probe: AttentionProbe, own_processor: Callable[..., torch.Tensor]) -> None:
        self.name = name
        self.probe = probe
        self.own_processor = own_processor

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        probe = self.probe
        if probe.recording is None and probe.reference is None:
            return self.own_processor(
                attn,
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
            )
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        batch_size, key_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if probe.recording is not None:
            probe.recording[self.name] = probs.detach()
        elif probe.reference is not None:
            layer_loss = map_distance(probs, probe.reference[self.name], attn.heads)
            probe.loss = layer_loss if probe.loss is None else probe.loss + layer_loss
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](hidden_states))


def _check_probe_supports(name: str, attn: Attention) -> None:
    """The probe computes plain transformer-block cross-attention; refuse anything fancier."""
    if (
        attn.group_norm is not None
        or attn.spatial_norm is not None
        or attn.residual_connection
        or attn.rescale_output_factor != 1.0
    ):
        raise ValueError(f"cross-attention layer {name} uses features the attention probe does not support")


class AttentionProbe:
    """What the probed cross-attention layers do on the current forward.

    ``recording`` set: store each layer's probabilities there. ``reference`` set: add the
    distance to those maps to ``loss``. Neither: run the layer's own processor.
    """

    def __init__(self) -> None:
        self.recording: dict[str, torch.Tensor] | None = None
        self.reference: Mapping[str, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None
        self._wrapped: dict[str, Any] = {}
        self._processors: dict[str, Any] = {}

    @contextmanager
    def attached(self, unet: UNet2DConditionModel) -> Iterator[AttentionProbe]:
        """Probe ``unet``'s cross-attention layers for the duration; leave it exactly as found."""
        original = unet.attn_processors
        flags = [(parameter, parameter.requires_grad) for parameter in unet.parameters()]
        processors = self._probing(unet, original)
        try:
            unet.requires_grad_(False)
            unet.set_attn_processor(dict(processors))  # diffusers pops from the mapping it is given
            yield self
        finally:
            self.recording = self.reference = self.loss = None
            unet.set_attn_processor(dict(original))
            for parameter, flag in flags:
                parameter.requires_grad_(flag)

    def _probing(self, unet: UNet2DConditionModel, original: dict[str, Any]) -> dict[str, Any]:
        """The processors to install: the cached set while ``original`` is the same objects."""
        cross = {
            name
            for name in original
            if unet.get_submodule(name.removesuffix(".processor")).is_cross_attention
        }
        if not cross:
            raise ValueError("the UNet has no cross-attention layer to guide")
        for name in cross:
            _check_probe_supports(name, unet.get_submodule(name.removesuffix(".processor")))
        if original.keys() != self._wrapped.keys() or any(
            processor is not self._wrapped[name] for name, processor in original.items()
        ):
            self._wrapped = dict(original)
            self._processors = {
                name: _ProbedCrossAttention(name, self, processor) if name in cross else processor
                for name, processor in original.items()
            }
        return self._processors
