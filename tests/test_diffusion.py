"""The pix2pix-zero core on tiny random weights: equivalence with diffusers' reference
pipeline, the shared UNet left untouched, cancellation, counts and determinism."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from editor.config import InversionConfig
from editor.diffusion import DiffusionModels
from editor.guidance import CrossAttentionMaps, UNetCounter
from editor.inversion import auto_correlation_loss, draw_roll, draw_shifts
from editor.types import EditCancelled, EditSettings, InvalidInput

STEPS = 3
CPU = torch.device("cpu")
#: Edit settings of most tests: strong attention guidance so that its effect is visible.
SETTINGS = EditSettings(steps=STEPS, guidance_scale=5.0, cross_attention_guidance=1.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Two shared cores: keep torch to one thread while this module runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def diffusion_path(tiny_models_dir: Path) -> str:
    return str(tiny_models_dir / "tiny" / "stable-diffusion")


@pytest.fixture(scope="module")
def models(diffusion_path: str) -> DiffusionModels:
    return DiffusionModels.from_pretrained(diffusion_path, CPU, torch.float32)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (64, 64, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


class Embeds:
    """Caption, before and after caption embeddings and their direction."""

    def __init__(self, models: DiffusionModels) -> None:
        self.caption = models.encode_prompt(["a cat on the table"])
        self.before = models.encode_prompt(["a cat on the table", "a cat sitting on grass"])
        self.after = models.encode_prompt(["a dog on the table", "a dog sitting on grass"])
        self.direction = (self.after.mean(0) - self.before.mean(0))[None]


@pytest.fixture(scope="module")
def embeds(models: DiffusionModels) -> Embeds:
    return Embeds(models)


#: The inversion of diffusers' reference: its roll rule (0 allowed) and its inverse scheduler.
DIFFUSERS_INVERSION = InversionConfig(roll="diffusers")


def invert(models: DiffusionModels, latents: torch.Tensor, embeds: Embeds, **options) -> torch.Tensor:
    options.setdefault("generator", torch.Generator().manual_seed(7))
    options.setdefault("config", InversionConfig())
    return models.invert(latents, embeds.caption, steps=STEPS, **options)


@pytest.fixture(scope="module")
def latents(models: DiffusionModels, image: Image.Image) -> torch.Tensor:
    return models.encode_image(image)


@pytest.fixture(scope="module")
def inverted(models: DiffusionModels, latents: torch.Tensor, embeds: Embeds) -> torch.Tensor:
    return invert(models, latents, embeds)


def edit(models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds, **options) -> torch.Tensor:
    options.setdefault("settings", SETTINGS)
    direction = options.pop("direction", embeds.direction)
    return models.edit(inverted, embeds.caption, direction, **options)


# --- equivalence with diffusers' StableDiffusionPix2PixZeroPipeline --------------------------


@pytest.fixture(scope="module")
def reference_pipeline(diffusion_path: str, models: DiffusionModels):
    """The deprecated reference, on its own UNet copy (it rewires the UNet it is given)."""
    from diffusers import (
        DDIMInverseScheduler,
        DDIMScheduler,
        StableDiffusionPix2PixZeroPipeline,
        UNet2DConditionModel,
    )

    pipeline = StableDiffusionPix2PixZeroPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=UNet2DConditionModel.from_pretrained(diffusion_path, subfolder="unet"),
        scheduler=DDIMScheduler.from_config(models.scheduler_config),
        inverse_scheduler=DDIMInverseScheduler.from_config(models.scheduler_config),
        feature_extractor=None,
        safety_checker=None,
        caption_generator=None,
        caption_processor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def reference_edit(pipeline, latents: torch.Tensor, embeds: Embeds) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's inversion and edit: latents go in as the image (it then skips the VAE)."""
    inverted = pipeline.invert(
        image=latents,
        prompt_embeds=embeds.caption,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).latents
    edited = pipeline(
        prompt_embeds=embeds.caption,
        negative_prompt_embeds=embeds.caption,
        source_embeds=embeds.before,
        target_embeds=embeds.after,
        latents=inverted,
        num_inference_steps=STEPS,
        guidance_scale=SETTINGS.guidance_scale,
        cross_attention_guidance_amount=SETTINGS.cross_attention_guidance,
        output_type="latent",
    ).images
    return inverted, edited


def test_matches_reference_exactly_with_the_same_attention_arithmetic(
    diffusion_path: str, reference_pipeline, latents: torch.Tensor, embeds: Embeds
) -> None:
    """With the reference's bmm attention in every layer and its batch-2 reconstruction,
    inversion and edit agree to rounding."""
    from diffusers.models.attention_processor import AttnProcessor

    ours = DiffusionModels.from_pretrained(diffusion_path, CPU, torch.float32)
    ours.unet.set_attn_processor(AttnProcessor())
    expected_inverted, expected_edited = reference_edit(reference_pipeline, latents, embeds)

    inverted = invert(ours, latents, embeds, config=DIFFUSERS_INVERSION)
    edited = edit(ours, expected_inverted, embeds, fold_equal_halves=False)

    torch.testing.assert_close(inverted, expected_inverted, rtol=0, atol=1e-6)
    torch.testing.assert_close(edited, expected_edited, rtol=0, atol=1e-6)


def test_matches_reference_with_sdpa_attention(
    models: DiffusionModels, reference_pipeline, latents: torch.Tensor, embeds: Embeds
) -> None:
    """With our SDPA layers and batch-1 reconstruction the results differ by float rounding
    only (measured: < 1e-4).

    1e-3 is far below what a wrong step would change: attention guidance alone moves
    the edit by ~1e-2 here, the roll rule the inversion by ~5e-2, the direction by ~1.
    """
    expected_inverted, expected_edited = reference_edit(reference_pipeline, latents, embeds)

    inverted = invert(models, latents, embeds, config=DIFFUSERS_INVERSION)
    edited = edit(models, expected_inverted, embeds)
    unguided = edit(
        models, expected_inverted, embeds, settings=SETTINGS.replace(cross_attention_guidance=0.0)
    )

    torch.testing.assert_close(inverted, expected_inverted, rtol=0, atol=1e-3)
    torch.testing.assert_close(edited, expected_edited, rtol=0, atol=1e-3)
    assert (unguided - expected_edited).abs().max() > 5e-3


def test_auto_correlation_loss_replays_the_reference(reference_pipeline) -> None:
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    ours_generator = torch.Generator().manual_seed(3)
    reference_generator = torch.Generator().manual_seed(3)

    ours = auto_correlation_loss(noise, draw_shifts(noise.shape, ours_generator, 1, rule="diffusers")[0])
    expected = reference_pipeline.auto_corr_loss(noise, generator=reference_generator)

    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
    assert torch.equal(ours_generator.get_state(), reference_generator.get_state())


# --- the roll ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(size=st.integers(min_value=4, max_value=512), seed=st.integers(min_value=0, max_value=2**32))
def test_pix2pix_zero_roll_is_never_zero(size: int, seed: int) -> None:
    roll = draw_roll(size, torch.Generator().manual_seed(seed))
    assert 1 <= roll < size // 2
    assert roll % size != 0


@settings(max_examples=50, deadline=None)
@given(size=st.integers(min_value=2, max_value=512), seed=st.integers(min_value=0, max_value=2**32))
def test_reference_roll_replays_randint(size: int, seed: int) -> None:
    expected = torch.randint(size // 2, (1,), generator=torch.Generator().manual_seed(seed)).item()
    assert draw_roll(size, torch.Generator().manual_seed(seed), "diffusers") == expected


def test_our_rolls_change_the_inversion(
    models: DiffusionModels, latents: torch.Tensor, embeds: Embeds, inverted: torch.Tensor
) -> None:
    """Same seed, other roll rule: the switch really selects the reference's draws."""
    reference_rolls = invert(models, latents, embeds, config=DIFFUSERS_INVERSION)
    assert (reference_rolls - inverted).abs().max() > 1e-3


@pytest.mark.parametrize(("size", "rule"), [(3, "pix2pix_zero"), (1, "diffusers")])
def test_a_side_too_short_cannot_roll(size: int, rule: str) -> None:
    with pytest.raises(ValueError, match="cannot draw"):
        draw_roll(size, torch.Generator(), rule)


@pytest.mark.parametrize("shape", [(12, 40), (64, 4)])
def test_auto_correlation_loss_handles_wide_and_thin_latents(shape: tuple[int, int]) -> None:
    """A 64x4 map would be pooled below one pixel by the references (they fail); ours stops."""
    noise = torch.randn(1, 4, *shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = auto_correlation_loss(noise, draw_shifts(noise.shape, torch.Generator().manual_seed(0), 1)[0])
    loss.backward()
    assert loss.item() > 0
    assert torch.isfinite(noise.grad).all()


# --- the shared UNet is left exactly as found ---------------------------------------------------


def unet_state(models: DiffusionModels) -> tuple[dict[str, int], list[bool]]:
    processors = {name: id(processor) for name, processor in models.unet.attn_processors.items()}
    return processors, [parameter.requires_grad for parameter in models.unet.parameters()]


def assert_no_hooks_or_grads(models: DiffusionModels) -> None:
    for module in models.unet.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
    assert all(parameter.grad is None for parameter in models.unet.parameters())


class StopHere(RuntimeError):
    pass


@pytest.mark.parametrize("ending", ["normal", "exception", "cancel"])
def test_unet_is_restored(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds, ending: str
) -> None:
    """Processors are the same objects and requires_grad flags as before, whatever happens."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    cross_layer = next(name for name in models.unet.attn_processors if "attn2" in name)
    models.unet.get_submodule(cross_layer.removesuffix(".processor")).to_q.weight.requires_grad_(True)
    before = unet_state(models)
    cancel = threading.Event()
    seen_during: list[dict[str, str]] = []

    def callback(stage: str, step: int, total: int) -> None:
        seen_during.append({n: type(p).__name__ for n, p in models.unet.attn_processors.items()})
        if (stage, step) == ("edit", 2):
            if ending == "exception":
                raise StopHere
            if ending == "cancel":
                cancel.set()

    expected = {"normal": None, "exception": StopHere, "cancel": EditCancelled}[ending]
    try:
        if expected is None:
            edit(models, inverted, embeds, callback=callback, cancel=cancel)
        else:
            with pytest.raises(expected):
                edit(models, inverted, embeds, callback=callback, cancel=cancel)
        assert unet_state(models) == before
        assert_no_hooks_or_grads(models)
        # During the run only cross-attention layers are probed; the rest keep SDPA.
        for name, kind in seen_during[-1].items():
            is_cross = models.unet.get_submodule(name.removesuffix(".processor")).is_cross_attention
            assert kind == ("_ProbedCrossAttention" if is_cross else AttnProcessor2_0.__name__)
    finally:
        models.unet.requires_grad_(False)


def test_models_are_frozen_and_use_sdpa(models: DiffusionModels) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    for model in (models.unet, models.vae, models.text_encoder):
        assert not any(parameter.requires_grad for parameter in model.parameters())
    assert all(isinstance(p, AttnProcessor2_0) for p in models.unet.attn_processors.values())


# --- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "step"), [("invert", 1), ("edit", 1), ("edit", 2)])
def test_cancel_stops_within_one_step(
    models: DiffusionModels, latents: torch.Tensor, embeds: Embeds, stage: str, step: int
) -> None:
    cancel = threading.Event()
    calls: list[tuple[str, int]] = []
    counter = UNetCounter()

    def callback(current_stage: str, current_step: int, total: int) -> None:
        calls.append((current_stage, current_step))
        if (current_stage, current_step) == (stage, step):
            cancel.set()

    def invert_then_edit() -> None:
        noise = invert(models, latents, embeds, callback=callback, cancel=cancel, counter=counter)
        edit(models, noise, embeds, callback=callback, cancel=cancel, counter=counter)

    with pytest.raises(EditCancelled, match="cancelled"):
        invert_then_edit()

    assert calls[-1] == (stage, step)
    assert counter.forwards[stage] == step * (2 if stage == "edit" else 1)
    assert counter.forwards.get("reconstruct", 0) == (step if stage == "edit" else 0)


def test_cancel_set_beforehand_runs_no_unet(
    models: DiffusionModels, latents: torch.Tensor, embeds: Embeds, inverted: torch.Tensor
) -> None:
    cancel = threading.Event()
    cancel.set()
    counter = UNetCounter()
    with pytest.raises(EditCancelled):
        invert(models, latents, embeds, cancel=cancel, counter=counter)
    with pytest.raises(EditCancelled):
        edit(models, inverted, embeds, cancel=cancel, counter=counter)
    assert counter == UNetCounter()


# --- counts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("guidance", "negative"), [(1.0, "caption"), (0.0, "caption"), (1.0, "empty")])
def test_counts_follow_the_formula_and_the_real_calls(
    models: DiffusionModels, latents: torch.Tensor, embeds: Embeds, guidance: float, negative: str
) -> None:
    """Inversion N x batch 1; reconstruction N x batch 1 (batch 2 with another negative prompt);
    edit N x (forward with grad, backward, forward), batch 2; without attention guidance the
    edit skips the first two. With the defaults: 6N batch-samples, against the reference's 7N."""
    counter = UNetCounter()
    real_batches: list[int] = []
    hook = models.unet.register_forward_pre_hook(lambda module, args: real_batches.append(args[0].shape[0]))
    negative_embeds = models.encode_prompt([""]) if negative == "empty" else None
    try:
        noise = invert(models, latents, embeds, counter=counter)
        settings = SETTINGS.replace(cross_attention_guidance=guidance)
        edit(models, noise, embeds, counter=counter, settings=settings, negative_embeds=negative_embeds)
    finally:
        hook.remove()

    guided = guidance > 0
    edit_forwards = STEPS * (2 if guided else 1)
    halves = 2 if negative == "empty" else 1
    assert counter.forwards == {"invert": STEPS, "reconstruct": STEPS, "edit": edit_forwards}
    assert counter.batch_samples == {
        "invert": STEPS,
        "reconstruct": halves * STEPS,
        "edit": 2 * edit_forwards,
    }
    assert counter.backwards == (STEPS if guided else 0)
    assert len(real_batches) == sum(counter.forwards.values())
    assert sum(real_batches) == sum(counter.batch_samples.values())


# --- determinism and the direction ---------------------------------------------------------------


def test_same_seed_gives_identical_latents(
    models: DiffusionModels, latents: torch.Tensor, embeds: Embeds, inverted: torch.Tensor
) -> None:
    again = invert(models, latents, embeds)
    assert torch.equal(again, inverted)
    assert torch.equal(edit(models, inverted, embeds), edit(models, again, embeds))


def test_other_seed_gives_other_inversion(
    models: DiffusionModels, latents: torch.Tensor, embeds: Embeds, inverted: torch.Tensor
) -> None:
    other = invert(models, latents, embeds, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other, inverted)


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_direction_changes_the_edit(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds, guidance_scale: float
) -> None:
    """Also at guidance 1, where the reference silently drops the direction."""
    settings = SETTINGS.replace(guidance_scale=guidance_scale, cross_attention_guidance=0.0)
    directed = edit(models, inverted, embeds, settings=settings)
    undirected = edit(
        models, inverted, embeds, settings=settings, direction=torch.zeros_like(embeds.direction)
    )
    assert (directed - undirected).abs().max() > 1e-2


def test_direction_strength_scales_the_direction(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds
) -> None:
    settings = SETTINGS.replace(cross_attention_guidance=0.0)
    doubled = edit(models, inverted, embeds, settings=settings, direction=2 * embeds.direction)
    strength_two = edit(models, inverted, embeds, settings=settings.replace(direction_strength=2.0))
    torch.testing.assert_close(strength_two, doubled)


# --- the stages separately ----------------------------------------------------------------------


def test_reconstruction_maps_cover_every_step_and_cross_attention_layer(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds
) -> None:
    maps = models.reconstruct(inverted, embeds.caption, steps=STEPS, guidance_scale=5.0)
    both_halves = models.reconstruct(
        inverted, embeds.caption, steps=STEPS, guidance_scale=5.0, fold_equal_halves=False
    )
    cross_layers = {
        name
        for name in models.unet.attn_processors
        if models.unet.get_submodule(name.removesuffix(".processor")).is_cross_attention
    }
    assert len(maps.timesteps) == len(maps.per_step) == STEPS
    for step_maps, step_both in zip(maps.per_step, both_halves.per_step, strict=True):
        assert set(step_maps) == set(step_both) == cross_layers
        for name, probs in step_maps.items():
            heads = models.unet.get_submodule(name.removesuffix(".processor")).heads
            assert probs.shape[0] == heads  # batch 1: the negative prompt is the caption
            assert probs.shape[2] == 77
            torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
            negative_half, caption_half = step_both[name].chunk(2)
            assert torch.equal(negative_half, caption_half)  # why folding them is safe

    reused = models.edit(inverted, embeds.caption, embeds.direction, settings=SETTINGS, reference=maps)
    assert torch.equal(reused, edit(models, inverted, embeds))


def test_maps_of_other_steps_are_refused(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds
) -> None:
    maps = CrossAttentionMaps(timesteps=(1, 2), per_step=({}, {}))
    with pytest.raises(ValueError, match="recorded over 2 steps"):
        models.edit(inverted, embeds.caption, embeds.direction, settings=SETTINGS, reference=maps)


# --- encoding and bad inputs --------------------------------------------------------------------


def test_encode_and_decode_shapes(models: DiffusionModels, image: Image.Image, latents: torch.Tensor) -> None:
    assert latents.shape == (1, 4, 32, 32)
    assert latents.dtype == torch.float32
    assert torch.equal(models.encode_image(image), latents)  # the posterior mean, not a sample
    decoded = models.decode(latents)
    assert decoded.size == (64, 64)
    assert decoded.mode == "RGB"
    prompts = models.encode_prompt(["a cat", "a dog", "a red table"])
    assert prompts.shape == (3, 77, 32)
    assert prompts.dtype == torch.float32


@pytest.mark.parametrize("texts", [[], "a cat"])
def test_encode_prompt_wants_a_list_of_texts(models: DiffusionModels, texts) -> None:
    with pytest.raises(ValueError, match="non-empty sequence"):
        models.encode_prompt(texts)


def test_a_too_thin_image_is_refused_politely(models: DiffusionModels, embeds: Embeds) -> None:
    with pytest.raises(InvalidInput, match="too thin to edit"):
        invert(models, torch.zeros(1, 4, 32, 1), embeds)


@pytest.mark.parametrize(
    ("field", "shape"),
    [
        ("direction", (1, 77, 16)),
        ("caption_embeds", (2, 77, 32)),
        ("negative_embeds", (1, 76, 32)),
        ("latents", (4, 32, 32)),
    ],
)
def test_wrong_shapes_are_refused(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds, field: str, shape: tuple[int, ...]
) -> None:
    values = {
        "latents": inverted,
        "caption_embeds": embeds.caption,
        "negative_embeds": embeds.caption,
        "direction": embeds.direction,
    }
    values[field] = torch.zeros(shape)
    with pytest.raises(ValueError, match=f"expected {field} of shape"):
        models.edit(
            values["latents"],
            values["caption_embeds"],
            values["direction"],
            settings=SETTINGS,
            negative_embeds=values["negative_embeds"],
        )


def test_the_negative_prompt_is_the_callers_choice(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds
) -> None:
    """Default: the caption (the paper's choice); another negative prompt changes the edit."""
    settings = SETTINGS.replace(cross_attention_guidance=0.0)
    default = edit(models, inverted, embeds, settings=settings)
    explicit_caption = edit(models, inverted, embeds, settings=settings, negative_embeds=embeds.caption)
    empty = edit(models, inverted, embeds, settings=settings, negative_embeds=models.encode_prompt([""]))
    assert torch.equal(default, explicit_caption)
    assert (default - empty).abs().max() > 1e-2


def test_a_missing_model_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="Could not load the diffusion model"):
        DiffusionModels.from_pretrained(str(tmp_path / "nowhere"), CPU, torch.float32)


# --- half precision -----------------------------------------------------------------------------


def test_half_precision_keeps_latents_and_the_vae_in_float32(diffusion_path: str, embeds: Embeds) -> None:
    """fp16 models (as on CUDA): latents, gradients and SD's VAE stay float32; one short edit."""
    half = DiffusionModels.from_pretrained(diffusion_path, CPU, torch.float16)
    assert half.unet.dtype == torch.float16
    assert half.vae.dtype == torch.float32  # force_upcast
    config = InversionConfig(regularisation_steps=1, auto_correlation_rolls=1)
    caption = half.encode_prompt(["a cat on the table"])
    noise = half.invert(
        torch.randn(1, 4, 16, 16), caption, steps=1, config=config, generator=torch.Generator().manual_seed(0)
    )
    edited = half.edit(noise, caption, embeds.direction, settings=SETTINGS.replace(steps=1))
    assert noise.dtype == edited.dtype == torch.float32
    assert torch.isfinite(edited).all()
    assert half.decode(edited).size == (32, 32)


@pytest.mark.parametrize("steps", [0, 2.5])
def test_bad_step_counts_are_refused(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds, steps
) -> None:
    with pytest.raises(ValueError, match="whole number of at least 1"):
        models.reconstruct(inverted, embeds.caption, steps=steps, guidance_scale=5.0)


def test_an_unsupported_cross_attention_layer_is_refused_and_nothing_changes(
    models: DiffusionModels, inverted: torch.Tensor, embeds: Embeds
) -> None:
    before = unet_state(models)
    layer = next(m for m in models.unet.modules() if getattr(m, "is_cross_attention", False))
    layer.residual_connection = True
    try:
        with pytest.raises(ValueError, match="does not support"):
            models.reconstruct(inverted, embeds.caption, steps=STEPS, guidance_scale=5.0)
    finally:
        layer.residual_connection = False
    assert unet_state(models) == before
