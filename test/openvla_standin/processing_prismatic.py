"""Stand-in for the ``processing_prismatic.py`` that OpenVLA's checkpoints carry, written here for the tests (it is
not OpenVLA's code): ``PrismaticImageProcessor`` (an ``ImageProcessingMixin`` applying torchvision's functional
resize / centre crop / to_tensor / normalize with the parameters stored in ``preprocessor_config.json``) and
``PrismaticProcessor`` (a ``ProcessorMixin`` over it and the tokenizer).

As in OpenVLA's, the ``tvf_*`` parameters computed in ``__init__`` are overwritten by the stored ones (the
``ImageProcessingMixin`` sets every remaining keyword as an attribute), so a checkpoint whose stored mean/std were
rounded to bf16 is preprocessed with the rounded values. The import of the tokenizer type names from
``transformers.tokenization_utils`` is the transformers-4.40 location (transformers 5 moved them)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torchvision.transforms.functional as TVF
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BatchFeature, ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils import PaddingStrategy, PreTokenizedInput, TextInput, TruncationStrategy
from transformers.utils import TensorType

_PIL_CODES = {"nearest": 0, "bilinear": 2, "bicubic": 3}


class PrismaticImageProcessor(ImageProcessingMixin):
    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(self, use_fused_vision_backbone: bool = False, image_resize_strategy: str = "resize-naive",
                 input_sizes: list | None = None, interpolations: list[str] | None = None,
                 means: list | None = None, stds: list | None = None, **kwargs: Any) -> None:
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.image_resize_strategy = image_resize_strategy
        self.input_sizes = input_sizes or [[3, 224, 224]]
        self.interpolations = interpolations or ["bicubic"] * len(self.input_sizes)
        self.means = means or [[0.5, 0.5, 0.5]] * len(self.input_sizes)
        self.stds = stds or [[0.5, 0.5, 0.5]] * len(self.input_sizes)
        if image_resize_strategy != "resize-naive":
            raise ValueError(f"this stand-in implements 'resize-naive' only, not {image_resize_strategy!r}")
        self.tvf_resize_params, self.tvf_crop_params, self.tvf_normalize_params = [], [], []
        for size, interp, mean, std in zip(self.input_sizes, self.interpolations, self.means, self.stds, strict=True):
            side = int(size[-1])
            self.tvf_resize_params.append({"size": [side, side], "interpolation": _PIL_CODES[interp],
                                           "max_size": None, "antialias": True})
            self.tvf_crop_params.append({"output_size": [side, side]})
            self.tvf_normalize_params.append({"mean": list(mean), "std": list(std), "inplace": False})
        self.tvf_do_letterbox, self.tvf_letterbox_fill = False, None
        super().__init__(**kwargs)  # stored tvf_* parameters replace the ones computed above

    def apply_transform(self, img: Image.Image) -> torch.Tensor:
        views = []
        for resize, crop, norm in zip(self.tvf_resize_params, self.tvf_crop_params, self.tvf_normalize_params,
                                      strict=True):
            x = TVF.center_crop(TVF.resize(img, **resize), **crop)
            views.append(TVF.normalize(TVF.to_tensor(x), **norm))
        return torch.vstack(views)

    def preprocess(self, images: Image.Image | list[Image.Image], return_tensors: str | TensorType | None = None,
                   **_: Any) -> BatchFeature:
        images = images if isinstance(images, list) else [images]
        pixel_values = torch.stack([self.apply_transform(i.convert("RGB")) for i in images])
        return BatchFeature(data={"pixel_values": pixel_values.float().numpy()}, tensor_type=return_tensors)

    def __call__(self, images: Image.Image | list[Image.Image], **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)


class PrismaticProcessor(ProcessorMixin):
    attributes: ClassVar[list[str]] = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor: ImageProcessingMixin | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__(image_processor, tokenizer)

    def __call__(self, text: TextInput | PreTokenizedInput | list[TextInput], images: Image.Image | list[Image.Image],
                 padding: bool | str | PaddingStrategy = False, truncation: bool | str | TruncationStrategy | None = None,
                 max_length: int | None = None, return_tensors: str | TensorType | None = TensorType.PYTORCH,
                 ) -> BatchFeature:
        pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        text_inputs = self.tokenizer(text, return_tensors=return_tensors, padding=padding, truncation=truncation,
                                     max_length=max_length)
        if pixel_values.shape[0] != text_inputs.input_ids.shape[0]:
            raise ValueError("need as many images as texts")
        return BatchFeature(data={**text_inputs, "pixel_values": pixel_values})
