"""What an embedding is keyed by: the model's weights SHA-256 (``zoo.weights_sha256``: computed once
per file, see ``models.checkpoint_hash``) and its input transform."""
from __future__ import annotations

from pathlib import Path

from ..models import zoo
from ..models.transforms import InputTransform
from ..models.zoo import weights_sha256


def model_arch(model) -> str:
    if isinstance(model, zoo.LoadedModel):
        return model.arch
    if str(model) in zoo.MODELS:
        return zoo.get_spec(str(model)).arch
    return zoo.detect_arch(zoo.load_state_dict(model), model)


def model_name(model) -> str:
    return model.name if isinstance(model, zoo.LoadedModel) else (
        str(model) if str(model) in zoo.MODELS else Path(str(model)).name)


def encoder_base(model) -> dict | None:
    """The base reference of a fine-tuned checkpoint that did not train the image encoder (its
    embeddings are its base model's), else None."""
    from ..models.finetuned import is_finetuned, read_checkpoint

    path = model.checkpoint if isinstance(model, zoo.LoadedModel) else (
        None if str(model) in zoo.MODELS else str(model))
    if path is None or not is_finetuned(path):
        return None
    record = read_checkpoint(path)
    return None if "image_encoder" in record["trained_modules"] else record["base"]


def expected_key(model, vit_preprocess: str = "paper") -> dict:
    """The key fields a store of this model must carry (model name included for messages). A
    fine-tuned checkpoint whose image encoder is its base's is keyed as its base."""
    base = encoder_base(model)
    if base is not None:
        transform = InputTransform(base["arch"], vit_preprocess)
        return {"model": Path(str(base["model"])).name, "weights_sha256": base["weights_sha256"],
                "transform": transform.key, "image_size": transform.image_size}
    transform = InputTransform(model_arch(model), vit_preprocess)
    return {"model": model_name(model), "weights_sha256": weights_sha256(model), "transform": transform.key,
            "image_size": transform.image_size}
