"""Phi-2 (or any causal LM from the hub) behind :class:`editor.captions.TextGenerator`.

Sampling is seeded per call without touching the process-wide RNG, generation stops once
the caller's ``done`` says the answer is complete (checked only at line ends, so the cost
stays negligible next to a forward pass) or on cancel, and token counts use the model's
own tokenizer so the caller's budget means what it says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from editor.captions import Generation
from editor.config import LanguageModelConfig

if TYPE_CHECKING:
    from collections.abc import Iterator

    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class CausalLanguageModel:
    """Phi-2 (or any causal LM) behind the :class:`TextGenerator` interface."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        device: torch.device,
        lm: LanguageModelConfig,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.lm = lm

    @classmethod
    def from_pretrained(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, lm: LanguageModelConfig
    ) -> CausalLanguageModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        return cls(tokenizer, model.to(device).eval(), torch.device(device), lm)

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        max_new_tokens: int,
        done: Callable[[str], bool],
        cancel: threading.Event | None,
    ) -> Generation:
        from transformers import StoppingCriteriaList

        inputs = self.tokenizer(prompt, return_tensors="pt")
        input_ids = inputs["input_ids"].to(self.device)
        prompt_length = input_ids.shape[1]
        stopper = _StopWhenDone(self.tokenizer, prompt_length, done, cancel)
        sampling = {"temperature": self.lm.temperature, "top_p": self.lm.top_p} if self.lm.do_sample else {}
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        with self._seeded(seed):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=inputs["attention_mask"].to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=self.lm.do_sample,
                stopping_criteria=StoppingCriteriaList([stopper]),
                eos_token_id=eos,
                pad_token_id=pad,
                **sampling,
            )
        generated = output[0, prompt_length:]
        ended_itself = stopper.stopped or (len(generated) > 0 and int(generated[-1]) == eos)
        return Generation(
            text=self.tokenizer.decode(generated, skip_special_tokens=True),
            tokens=len(generated),
            truncated=not ended_itself,
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Seed sampling for one call without disturbing anyone else's random numbers."""
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield


@dataclass
class _StopWhenDone:
    """A stopping criterion: stop on cancel, or once the complete lines so far parse.

    The text is only re-parsed when a new line has been completed, so the cost stays
    negligible next to a forward pass.
    """

    tokenizer: PreTrainedTokenizerBase
    prompt_length: int
    done: Callable[[str], bool]
    cancel: threading.Event | None
    stopped: bool = False
    _lines_seen: int = field(default=0, init=False)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.Tensor:
        stop = self.cancel is not None and self.cancel.is_set()
        if not stop:
            text = self.tokenizer.decode(input_ids[0, self.prompt_length :], skip_special_tokens=True)
            lines = text.count("\n")
            if lines > self._lines_seen:
                self._lines_seen = lines
                stop = self.done(text[: text.rfind("\n") + 1])
        self.stopped = self.stopped or stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
