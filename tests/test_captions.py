"""The language-model step: prompts, budget, retries, fallback and cancellation (the parser has
its own module, ``test_caption_parser.py``)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from editor.caption_parser import (
    AFTER_HEADING,
    BEFORE_HEADING,
    parse_captions,
)
from editor.captions import SHIPPED_TEMPLATES, CaptionWriter, Generation, build_prompt, load_templates
from editor.config import LanguageModelConfig, engine_config, load_yaml
from editor.language_model import CausalLanguageModel
from editor.types import EditCancelled, EditSettings, InvalidInput

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CAPTION = "a cat sitting on a table"
INSTRUCTION = "turn the cat into a dog"

# ---------------------------------------------------------------- prompts and templates


def test_shipped_templates() -> None:
    templates = load_templates(SHIPPED_TEMPLATES)
    assert {"zero_shot", "few_shot"} <= set(templates)
    for text in templates.values():
        assert "{instruction}" in text
        assert "{n}" in text


def test_few_shot_examples_follow_the_format_the_parser_reads() -> None:
    text = load_templates(SHIPPED_TEMPLATES)["few_shot"]
    examples = text.split("Instruction:")[1:-1]
    assert len(examples) >= 2
    for example in examples:
        parsed = parse_captions(example, 5)
        assert parsed is not None
        assert parsed[0] != parsed[1]


@pytest.mark.parametrize("template", ["zero_shot", "few_shot"])
def test_locked_prompt_ends_with_the_caption_under_the_before_heading(template: str) -> None:
    text = load_templates(SHIPPED_TEMPLATES)[template]
    prompt = build_prompt(text, "make it {n} snowy", f'  "{CAPTION}"  ', 4, lock=True)
    assert prompt.endswith(f"\n{BEFORE_HEADING}\n1. {CAPTION}\n")
    assert "make it {n} snowy" in prompt  # the instruction is inserted verbatim, never re-expanded
    assert "exactly 4 captions" in prompt
    assert "{instruction}" not in prompt
    assert prompt.count(CAPTION) == 1


def test_unlocked_prompt_ends_at_the_before_heading() -> None:
    prompt = build_prompt("Instruction: {instruction}", "add snow", CAPTION, 3, lock=False)
    assert prompt == f"Instruction: add snow\n{BEFORE_HEADING}\n"


def test_lock_needs_a_caption_with_words() -> None:
    with pytest.raises(ValueError, match="caption lock"):
        build_prompt("Instruction: {instruction}", "add snow", ' "..." ', 3, lock=True)


def test_templates_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no prompt templates"):
        load_templates(tmp_path)
    (tmp_path / "broken.txt").write_text("Write {n} captions.", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.*instruction"):
        load_templates(tmp_path)


# ---------------------------------------------------------------- writer with a scripted model


class ScriptedModel:
    """Plays back prepared continuations; records what it was asked and checks ``done``."""

    def __init__(self, *outputs: str, truncated: bool = False, on_call: Callable[[], None] | None = None):
        self.outputs = list(outputs)
        self.truncated = truncated
        self.on_call = on_call
        self.seeds: list[int] = []
        self.prompts: list[str] = []
        self.done_results: list[bool] = []

    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        max_new_tokens: int,
        done: Callable[[str], bool],
        cancel: threading.Event | None,
    ) -> Generation:
        self.seeds.append(seed)
        self.prompts.append(prompt)
        if self.on_call:
            self.on_call()
        text = self.outputs.pop(0)
        self.done_results.append(done(text))
        return Generation(text=text, tokens=self.count_tokens(text), truncated=self.truncated)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


GOOD = (
    "2. a cat on a wooden table\n\nAfter transformation:\n1. a dog sitting on a table\n2. a dog on a table\n"
)
SETTINGS = EditSettings(num_captions=2, template="zero_shot")
LM = LanguageModelConfig(max_attempts=3)


def _writer(model: ScriptedModel, lm: LanguageModelConfig = LM) -> CaptionWriter:
    return CaptionWriter(load_templates(SHIPPED_TEMPLATES), lm, model)


def test_retries_until_an_answer_parses() -> None:
    model = ScriptedModel("zzz nonsense", GOOD)
    result = _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=41)
    assert result.before == (CAPTION, "a cat on a wooden table")
    assert result.after == ("a dog sitting on a table", "a dog on a table")
    assert (result.used_fallback, result.generate_calls) == (False, 2)
    assert result.tokens == 2 + len(GOOD.split())
    assert model.seeds == [41, 42]
    assert model.done_results == [False, True]
    assert model.prompts[0].endswith(f"{BEFORE_HEADING}\n1. {CAPTION}\n")


def test_falls_back_after_max_attempts() -> None:
    model = ScriptedModel("nope", "still nope", "2. a cat\nAfter transformation:\n1. a dog\n")
    result = _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=0)
    assert result.used_fallback
    assert result.generate_calls == 3
    assert result.before == (CAPTION,)
    assert result.after == (f"{CAPTION}, {INSTRUCTION}",)
    assert model.seeds == [0, 1, 2]


def test_greedy_decoding_is_tried_once() -> None:
    model = ScriptedModel("nope")
    result = _writer(model, LanguageModelConfig(do_sample=False, max_attempts=5)).write(
        INSTRUCTION, CAPTION, SETTINGS, seed=0
    )
    assert (result.used_fallback, result.generate_calls) == (True, 1)


def test_without_the_lock_the_model_writes_every_before_caption() -> None:
    model = ScriptedModel("1. a cat\n2. a kitten\nAfter transformation:\n1. a dog\n2. a puppy\n")
    result = _writer(model).write(INSTRUCTION, CAPTION, SETTINGS.replace(caption_lock=False), seed=0)
    assert result.before == ("a cat", "a kitten")
    assert model.prompts[0].endswith(f"{BEFORE_HEADING}\n")


@pytest.mark.parametrize(("truncated", "parses"), [(True, False), (False, True)])
def test_a_line_cut_by_the_token_budget_is_not_a_caption(truncated: bool, parses: bool) -> None:
    cut = "2. a cat\nAfter transformation:\n1. a dog\n2. a dog on a ta"
    result = _writer(ScriptedModel(cut, truncated=truncated), LanguageModelConfig(max_attempts=1)).write(
        INSTRUCTION, CAPTION, SETTINGS, seed=0
    )
    assert result.used_fallback is not parses


def test_cancel_before_generation_stops_at_once() -> None:
    cancel = threading.Event()
    cancel.set()
    model = ScriptedModel(GOOD)
    with pytest.raises(EditCancelled):
        _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=0, cancel=cancel)
    assert model.seeds == []


def test_cancel_during_an_attempt_stops_before_the_next() -> None:
    cancel = threading.Event()
    model = ScriptedModel("nope", GOOD, on_call=cancel.set)
    with pytest.raises(EditCancelled):
        _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=0, cancel=cancel)
    assert len(model.seeds) == 1


@pytest.mark.parametrize(
    ("changes", "caption", "message"),
    [({"template": "nonexistent"}, CAPTION, "Unknown prompt template"), ({}, " ** ", "description is empty")],
)
def test_bad_requests_are_refused(changes: dict, caption: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _writer(ScriptedModel(GOOD)).write(INSTRUCTION, caption, SETTINGS.replace(**changes), seed=0)


def test_config_must_allow_an_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _writer(ScriptedModel(), LanguageModelConfig(max_attempts=0))


# ---------------------------------------------------------------- the tiny Phi, loaded for real


@pytest.fixture(scope="module")
def tiny_lm_config(tiny_config: Path) -> LanguageModelConfig:
    return engine_config(load_yaml(tiny_config)).language_model


@pytest.fixture(scope="module")
def tiny_writer(tiny_models_dir: Path, tiny_lm_config: LanguageModelConfig) -> CaptionWriter:
    return CaptionWriter.from_pretrained(
        str(tiny_models_dir / "tiny/phi"), torch.device("cpu"), torch.float32, tiny_lm_config
    )


def test_tiny_phi_noise_falls_back_after_every_attempt(
    tiny_writer: CaptionWriter, tiny_lm_config: LanguageModelConfig
) -> None:
    assert tiny_writer.template_names == ("few_shot", "zero_shot")
    rng_state = torch.get_rng_state()
    result = tiny_writer.write(INSTRUCTION, CAPTION, SETTINGS, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded sampling leaves global RNG alone
    assert result.used_fallback
    assert result.generate_calls == tiny_lm_config.max_attempts
    budget = tiny_writer.budget(SETTINGS.num_captions, SETTINGS.caption_lock)
    assert 0 < result.tokens <= tiny_lm_config.max_attempts * budget
    assert result.before == (CAPTION,)


#: New tokens allowed in the direct calls of the tiny Phi below.
BUDGET = 12


def _prompt() -> str:
    return build_prompt("Instruction: {instruction}", INSTRUCTION, CAPTION, 2, lock=True)


def test_tiny_phi_sampling_is_reproducible_per_seed(tiny_writer: CaptionWriter) -> None:
    model = tiny_writer.generate_text
    first, again, other = (
        model(_prompt(), seed=s, max_new_tokens=BUDGET, done=lambda _: False, cancel=None) for s in (1, 1, 2)
    )
    assert first == again
    assert first.text != other.text


@contextmanager
def _only_newlines(model: CausalLanguageModel) -> Iterator[int]:
    """Bias the tiny Phi so every token it samples is a newline."""
    newline = model.tokenizer("\n")["input_ids"][0]
    bias = model.model.lm_head.bias
    original = bias.detach().clone()
    with torch.no_grad():
        bias[newline] = 1e4
    try:
        yield newline
    finally:
        with torch.no_grad():
            bias.copy_(original)


def test_generation_stops_when_the_answer_is_complete(tiny_writer: CaptionWriter) -> None:
    model = tiny_writer.generate_text
    seen: list[str] = []

    def done(text: str) -> bool:
        seen.append(text)
        return len(seen) == 3

    with _only_newlines(model):
        stopped = model(_prompt(), seed=0, max_new_tokens=BUDGET, done=done, cancel=None)
        budget = model(_prompt(), seed=0, max_new_tokens=BUDGET, done=lambda _: False, cancel=None)
    assert (stopped.tokens, stopped.truncated) == (3, False)
    assert seen == ["\n", "\n\n", "\n\n\n"]
    assert (budget.tokens, budget.truncated) == (BUDGET, True)


def test_generation_stops_on_cancel(tiny_writer: CaptionWriter) -> None:
    cancel = threading.Event()
    cancel.set()
    generation = tiny_writer.generate_text(
        _prompt(), seed=0, max_new_tokens=BUDGET, done=lambda _: False, cancel=cancel
    )
    assert generation.tokens == 1


# ---------------------------------------------------------------- the budget at N = 1, 5, 10, 16

_PIECE = re.compile(r"[^\S\n]*(?:\n|\w+|[^\w\s])")
#: A caption of the few-shot examples' length (13 words), varied per item and side.
_CAPTION_WORDS = "a wooden cabin beside a calm lake with green pine trees in {season} light number {k}"


class BudgetedModel:
    """Writes a well-formed answer piece by piece (one piece ~ one BPE token: a word, a mark or a
    line end), checks ``done`` at each line end like ``CausalLanguageModel`` and stops at the budget."""

    def __init__(self, n: int) -> None:
        before = "".join(f"{k}. {_CAPTION_WORDS.format(season='summer', k=k)}\n" for k in range(2, n + 1))
        after = "".join(f"{k}. {_CAPTION_WORDS.format(season='winter', k=k)}\n" for k in range(1, n + 1))
        self.answer = f"{before}\n{AFTER_HEADING}\n{after}\nInstruction: make it night\n"
        self.budgets: list[int] = []

    def count_tokens(self, text: str) -> int:
        return len(_PIECE.findall(text))

    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        max_new_tokens: int,
        done: Callable[[str], bool],
        cancel: threading.Event | None,
    ) -> Generation:
        self.budgets.append(max_new_tokens)
        text = ""
        for count, piece in enumerate(_PIECE.findall(self.answer)[:max_new_tokens], 1):
            text += piece
            if piece.endswith("\n") and done(text):
                return Generation(text=text, tokens=count, truncated=False)
        return Generation(text=text, tokens=self.count_tokens(text), truncated=True)


#: The budget every attempt had before it was derived from N.
OLD_FIXED_BUDGET = 256


@pytest.mark.parametrize("n", [1, 5, 10, 16])
@pytest.mark.parametrize("template", ["few_shot", "zero_shot"])
def test_well_formed_answers_fit_the_budget_at_any_n(n: int, template: str) -> None:
    model = BudgetedModel(n)
    settings = EditSettings(num_captions=n, template=template)
    result = _writer(model, LanguageModelConfig()).write(
        INSTRUCTION, "a wooden cabin by a lake", settings, seed=0
    )
    assert not result.used_fallback
    assert result.generate_calls == 1
    assert (len(result.before), len(result.after)) == (n, n)
    assert result.after[-1] == _CAPTION_WORDS.format(season="winter", k=n)
    # The fixed budget this replaces could not hold the answers from N=10 on: the fallback every time.
    needed = model.count_tokens(model.answer.split("\nInstruction")[0])
    assert result.tokens == needed <= model.budgets[0]
    assert (needed > OLD_FIXED_BUDGET) == (n >= 10)


def test_the_budget_grows_with_n_and_shrinks_with_the_lock() -> None:
    writer = _writer(BudgetedModel(1), LanguageModelConfig(caption_tokens=20))
    budgets = [writer.budget(n, lock=True) for n in (1, 5, 10, 16)]
    assert budgets == sorted(budgets)
    assert writer.budget(16, lock=True) - writer.budget(15, lock=True) >= 2 * 20
    assert writer.budget(5, lock=False) - writer.budget(5, lock=True) >= 20


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_few_shot_examples_show_n_captions_a_side(n: int) -> None:
    template = load_templates(SHIPPED_TEMPLATES)["few_shot"]
    prompt = build_prompt(template, INSTRUCTION, CAPTION, n, lock=True)
    examples = prompt.split("Instruction:")[1:-1]
    shown = min(n, 5)  # the shipped examples have five captions a side
    for example in examples:
        assert parse_captions(example, shown) is not None
        assert parse_captions(example, shown + 1) is None
    assert f"exactly {n} captions" in prompt


def test_the_fallback_is_reported_and_keeps_the_instruction_whole() -> None:
    class WordLimit:
        """A text encoder that reads 12 words."""

        limit = 12

        def count(self, text: str) -> int:
            return len(text.split())

        def shorten(self, text: str, limit: int | None = None) -> str | None:
            words = text.split()[: self.limit if limit is None else limit]
            return " ".join(words) or None

    caption = "a long caption of a wooden cabin beside a calm lake with pine trees"
    result = _writer(ScriptedModel("nope", "nope", "nope")).write(
        INSTRUCTION, caption, SETTINGS, seed=0, limit=WordLimit()
    )
    assert result.used_fallback
    (before,), (after,) = result.before, result.after
    assert after == f"{before}, {INSTRUCTION}"
    assert len(after.split()) <= 12
    assert caption.startswith(before)


def test_lists_equal_once_fitted_to_the_encoder_are_retried() -> None:
    class FirstWords:
        limit = 3

        def count(self, text: str) -> int:
            return len(text.split())

        def shorten(self, text: str, limit: int | None = None) -> str | None:
            return " ".join(text.split()[:3])

    same_start = (
        "2. a cat sitting near a window\nAfter transformation:\n1. a cat sitting in snow\n"
        "2. a cat sitting on a chair\n"
    )
    model = ScriptedModel(same_start, GOOD)
    result = _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=0, limit=FirstWords())
    assert (result.used_fallback, result.generate_calls) == (False, 2)
    assert result.before == ("a cat sitting", "a cat on")
    assert result.shortened == 4
