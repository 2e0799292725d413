"""The five MagicBrush metrics, defined as the official ``evaluation/image_eval.py`` does.

- L1, L2: mean absolute / squared difference of RGB pixels on [0, 1], over every pixel and
  channel, after resizing the generated image to the ground truth's size (bicubic).
- CLIP-I: cosine of the CLIP image embeddings (after the projection) of generated and
  ground-truth images; CLIP's own preprocessing (shorter side to the model's input size,
  bicubic, centre crop, CLIP mean/std).
- DINO: cosine of the DINO ViT class tokens (final layer norm, no pooler head) of the two
  images; shorter side to 256 bicubic, centre crop 224, ImageNet mean/std (for a model of
  another input size the same ratios are kept).
- CLIP-T: cosine of the generated image's CLIP embedding and the CLIP text embedding of the
  turn's local description.

The preprocessing is written out here rather than taken from the models' image processors
because the metric is defined by it (the hub's DINO processor, for one, squashes to 224x224
without the crop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, PreTrainedTokenizerBase, ViTModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: DINO's evaluation resizes to 256 then crops 224.
DINO_RESIZE_RATIO = 256 / 224

METRICS = ("l1", "l2", "clip_i", "dino", "clip_t")
#: Whether a larger value is better, for the tables.
HIGHER_IS_BETTER = {"l1": False, "l2": False, "clip_i": True, "dino": True, "clip_t": True}


@dataclass(frozen=True)
class TurnScores:
    l1: float
    l2: float
    clip_i: float
    dino: float
    #: None when the turn has no local description (the hub's parquet layout).
    clip_t: float | None


def _as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def pixel_errors(generated: Image.Image, truth: Image.Image) -> tuple[float, float]:
    """L1 and L2 of the generated image, resized to the ground truth's size, on [0, 1]."""
    truth = truth.convert("RGB")
    generated = generated.convert("RGB")
    if generated.size != truth.size:
        generated = generated.resize(truth.size, Image.Resampling.BICUBIC)
    difference = _as_array(generated) - _as_array(truth)
    return float(np.abs(difference).mean()), float(np.square(difference).mean())


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic), the longer one scaled and truncated, as torchvision does."""
    width, height = image.size
    shorter, longer = sorted((width, height))
    scaled = (size, int(size * longer / shorter))
    return image.resize(scaled if width <= height else scaled[::-1], Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def normalised_tensor(
    images: list[Image.Image], resize: int, crop: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """A batch ``[n, 3, crop, crop]``: resize, centre crop, scale to [0, 1], normalise."""
    import torch

    arrays = [
        _as_array(center_crop(resize_shorter_side(image.convert("RGB"), resize), crop)) for image in images
    ]
    batch = torch.tensor(np.stack(arrays), dtype=torch.float32).permute(0, 3, 1, 2)
    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_tensor) / std_tensor


def cosine(first: torch.Tensor, second: torch.Tensor) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(first.double(), second.double(), dim=-1))


class Scorer:
    """CLIP and DINO loaded once; :meth:`score` measures one generated image."""

    def __init__(
        self,
        clip_model: CLIPModel,
        clip_tokenizer: PreTrainedTokenizerBase,
        dino_model: ViTModel,
        device: torch.device,
    ) -> None:
        self.clip_model = clip_model.eval()
        self.clip_tokenizer = clip_tokenizer
        self.dino_model = dino_model.eval()
        self.device = device
        # Loaded configs hold one int here; transformers also types them as dicts, lists or None.
        vision: Any = clip_model.config.vision_config
        dino_size: Any = dino_model.config.image_size
        self.clip_size = int(vision.image_size)
        self.dino_crop = int(dino_size)
        self.dino_resize = round(self.dino_crop * DINO_RESIZE_RATIO)

    @classmethod
    def from_pretrained(cls, clip_path: str, dino_path: str, device: str = "auto") -> Scorer:
        """``clip_path`` is a CLIP model folder (model + tokenizer); ``dino_path`` a ViT (DINO)."""
        import torch
        from transformers import AutoTokenizer, CLIPModel, ViTModel

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        chosen = torch.device(device)
        # Any: transformers' ``to`` hides its ``self`` from mypy behind ``functools.wraps``.
        clip_model: Any = CLIPModel.from_pretrained(clip_path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(clip_path)
        # DINO checkpoints carry no pooler head; the class token is the feature.
        dino_model: Any = ViTModel.from_pretrained(dino_path, add_pooling_layer=False, dtype=torch.float32)
        return cls(clip_model.to(chosen), tokenizer, dino_model.to(chosen), chosen)

    def clip_image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        pixels = normalised_tensor(images, self.clip_size, self.clip_size, CLIP_MEAN, CLIP_STD)
        with torch.inference_mode():
            return self.clip_model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output.cpu()

    def clip_text_embeddings(self, texts: list[str]) -> torch.Tensor:
        import torch

        max_length = self.clip_model.config.text_config.max_position_embeddings
        tokens = self.clip_tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self.clip_model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        return output.pooler_output.cpu()

    def dino_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        pixels = normalised_tensor(images, self.dino_resize, self.dino_crop, IMAGENET_MEAN, IMAGENET_STD)
        with torch.inference_mode():
            hidden = self.dino_model(pixel_values=pixels.to(self.device)).last_hidden_state
        return hidden[:, 0].cpu()

    def score(self, generated: Image.Image, truth: Image.Image, caption: str | None) -> TurnScores:
        l1, l2 = pixel_errors(generated, truth)
        clip_images = self.clip_image_embeddings([generated, truth])
        dino_images = self.dino_embeddings([generated, truth])
        clip_t = None
        if caption:
            clip_t = cosine(clip_images[0], self.clip_text_embeddings([caption])[0])
        return TurnScores(
            l1=l1,
            l2=l2,
            clip_i=cosine(clip_images[0], clip_images[1]),
            dino=cosine(dino_images[0], dino_images[1]),
            clip_t=clip_t,
        )
