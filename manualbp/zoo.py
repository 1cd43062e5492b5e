"""Models people download, built from their configs: timm and transformers model code, random
init, nothing downloaded, with example inputs and a loss, to check and time manualbp on code
nobody here wrote.

A spec names the model: ``timm:convnext_atto`` (any ``timm.create_model`` name) or
``transformers:LlamaConfig`` (any transformers config class), with ``key=value`` overrides::

    from manualbp import zoo
    built = zoo.build("transformers:LlamaConfig", ["hidden_size=64", "num_hidden_layers=2"])
    loss = built.loss(built.model)        # the model's own loss
    report = zoo.gradient_check(built)    # convert + hand_written() against the model as built

timm models get ``num_classes=10`` and images of ``image_size`` px (64 unless the model fixes its
own size, as a ViT does; override with ``image_size=`` or ``img_size=``), batch ``batch`` (2); the
loss is cross-entropy of the logits against random classes. transformers configs get small sizes
(width 64, 2 layers, 4 heads, 2 key/value heads, vocabulary 128, dropout 0) unless overridden,
``attn_implementation`` ``"sdpa"`` unless overridden (``"eager"``); the model is the config's
causal-LM class (else masked-LM, else sequence-to-sequence), and the loss the model's own loss
from ``labels=input_ids`` on ``seq`` (16) tokens, computed from the logits in their dtype
(transformers' own casts them to float32). timm and transformers are imported only here, when a
model is built (``pip install manualbp[zoo]``).
"""

from __future__ import annotations

import ast
import copy
import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["ZooModel", "build", "parse_overrides", "gradient_check", "GradientCheck"]

# transformers' configs at sizes that run in float64 in seconds; a key the config does not know is
# ignored, a user's override wins
_SMALL_TRANSFORMER = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 128, "d_ff": 128, "d_kv": 16,
    "num_decoder_layers": 2,
}
_HEADS = ("attn_implementation", "batch", "seq", "image_size")  # overrides the zoo reads, not the model


@dataclass
class ZooModel:
    """A model built from a spec. ``model``: the torch.nn.Module (training mode); ``inputs``: what it
    is called with (keyword arguments); ``loss(model)``: the training loss of ``model`` (this one or
    a converted copy) on those inputs."""

    spec: str
    model: torch.nn.Module
    inputs: dict
    loss_of_outputs: Callable

    def loss(self, model: torch.nn.Module | None = None) -> torch.Tensor:
        model = self.model if model is None else model
        return self.loss_of_outputs(model(**self.inputs))


def parse_overrides(overrides: Sequence[str] | dict | None) -> dict:
    """``["hidden_size=64", "attn_implementation=eager"]`` -> {"hidden_size": 64, ...}: each value a
    Python literal where it reads as one (numbers, True, None, tuples), else a string."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise ValueError(f"zoo: expected overrides as key=value (e.g. hidden_size=64), got {item!r}")
        try:
            parsed[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed[key] = text
    return parsed


def build(spec: str, overrides: Sequence[str] | dict | None = None, dtype: torch.dtype = torch.float64,
          seed: int = 0) -> ZooModel:
    """The model ``spec`` names (``timm:NAME`` or ``transformers:CONFIG``), randomly initialised
    from ``seed``, in ``dtype``, with example inputs and its loss (see the module)."""
    library, _, name = spec.partition(":")
    if library not in ("timm", "transformers") or not name:
        raise ValueError(f"zoo: expected timm:MODEL or transformers:CONFIG (e.g. timm:convnext_atto, "
                         f"transformers:LlamaConfig), got {spec!r}")
    overrides = parse_overrides(overrides)
    try:
        importlib.import_module(library)
    except ImportError:
        raise ImportError(f"zoo: {spec} needs {library}; pip install 'manualbp[zoo]'") from None
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' and timm's notes on configs and init
        built = (_timm if library == "timm" else _transformers)(spec, name, overrides, dtype)
    built.model.train()
    return built


def _timm(spec: str, name: str, overrides: dict, dtype: torch.dtype) -> ZooModel:
    import timm
    import torch.nn.functional as F

    batch = overrides.pop("batch", 2)
    image_size = overrides.pop("image_size", None)
    overrides.setdefault("num_classes", 10)
    if name not in timm.list_models():
        raise ValueError(f"zoo: timm has no model {name!r}; timm.list_models('{name[:4]}*') lists the names")
    model = timm.create_model(name, pretrained=False, **overrides).to(dtype)
    if image_size is None:
        image_size = overrides.get("img_size") or getattr(getattr(model, "patch_embed", None), "img_size", None) or 64
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    images = torch.randn(batch, 3, *size, dtype=dtype)
    classes = torch.randint(0, overrides["num_classes"], (batch,))
    return ZooModel(spec, model, {"x": images}, lambda logits: F.cross_entropy(logits, classes))


def _transformers(spec: str, name: str, overrides: dict, dtype: torch.dtype) -> ZooModel:
    import transformers

    batch, length = overrides.pop("batch", 2), overrides.pop("seq", 16)
    attention = overrides.pop("attn_implementation", "sdpa")
    config_class = getattr(transformers, name, None)
    if not isinstance(config_class, type) or not issubclass(config_class, transformers.PretrainedConfig):
        raise ValueError(f"zoo: transformers has no config class {name!r} (e.g. LlamaConfig, GPT2Config)")
    defaults = config_class()
    settings = {key: value for key, value in _SMALL_TRANSFORMER.items() if hasattr(defaults, key)}
    settings.update({key: 0.0 for key, value in defaults.to_dict().items()  # dropout off: gradients comparable
                     if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop"))})
    settings.update(overrides)
    config = config_class(**settings)
    for token in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        value = getattr(config, token, None)
        if isinstance(value, int) and value >= config.vocab_size:  # a small vocabulary: ids inside it
            setattr(config, token, min(value, config.vocab_size - 1))
    if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = config.pad_token_id or 0  # T5 starts its decoder at pad
    model = _model_for(transformers, config, attention).to(dtype)
    input_ids = torch.randint(0, config.vocab_size, (batch, length))
    inputs = {"input_ids": input_ids}
    if config.is_encoder_decoder:  # the decoder reads the labels shifted right
        inputs["decoder_input_ids"] = model._shift_right(input_ids)
    causal = type(model).__name__.endswith("ForCausalLM")
    return ZooModel(spec, model, inputs, lambda outputs: _token_loss(outputs.logits, input_ids, causal))


def _token_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """The model's own loss from ``labels=input_ids`` (cross-entropy of each token's logits, a causal
    LM's shifted by one), in the logits' dtype: transformers' loss casts the logits to float32, which
    would hold a float64 check to float32 rounding."""
    import torch.nn.functional as F

    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]  # token t predicts token t + 1
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def _model_for(transformers, config, attention: str) -> torch.nn.Module:
    for auto in ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM"):
        try:
            return getattr(transformers, auto).from_config(config, attn_implementation=attention)
        except ValueError as error:
            if "Unrecognized configuration class" not in str(error):
                raise
    raise ValueError(f"zoo: {type(config).__name__} has no causal-LM, masked-LM or sequence-to-sequence model class")


@dataclass
class GradientCheck:
    """Loss and gradients of the converted model under ``hand_written()`` against the model as built:
    ``loss_error`` and ``worst_error`` (norm-relative, over every parameter's gradient), ``worst``
    (the parameter's name), ``coverage`` (the converted graph's :class:`CoverageReport`)."""

    loss_error: float
    worst_error: float
    worst: str
    parameters: int
    coverage: object

    def __str__(self) -> str:
        return (f"float64 gradient check against the model as built: loss {self.loss_error:.1e}, every gradient "
                f"(norm-relative, {self.parameters} parameters) ≤ {self.worst_error:.1e} (largest: {self.worst})")


def gradient_check(built: ZooModel, seed: int = 0) -> GradientCheck:
    """Run ``built.model`` and ``manualbp.convert`` of a copy under ``manualbp.hand_written()`` on
    the same inputs (same random stream) and compare loss and every gradient, norm-relative:
    ‖a − b‖/‖b‖."""
    import manualbp
    from manualbp.coverage import backward_coverage

    original = built.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert's list of what is left: the coverage report says it
        converted = manualbp.convert(copy.deepcopy(original))
    torch.manual_seed(seed)
    expected = built.loss(original)
    torch.manual_seed(seed)
    with manualbp.hand_written():
        loss = built.loss(converted)
    report = backward_coverage(loss)
    theirs_by_name = {name: p for name, p in original.named_parameters() if p.requires_grad}
    ours_by_name = dict(converted.named_parameters())
    names = list(theirs_by_name)
    expected_grads = torch.autograd.grad(expected, list(theirs_by_name.values()), allow_unused=True)
    grads = torch.autograd.grad(loss, [ours_by_name[name] for name in names], allow_unused=True)
    worst, worst_error = "", 0.0
    # a gradient that is 0 in exact arithmetic (a key projection's bias: softmax ignores a constant
    # added to a row) is rounding noise on both sides: measured against the whole gradient's norm
    floor = 1e-8 * torch.stack([g.double().norm() for g in expected_grads if g is not None]).norm().item()
    for name, ours, theirs in zip(names, grads, expected_grads, strict=True):
        if ours is None and theirs is None:
            continue
        ours = torch.zeros_like(theirs) if ours is None else ours
        theirs = torch.zeros_like(ours) if theirs is None else theirs
        error = _relative(ours, theirs, floor)
        if error >= worst_error:
            worst, worst_error = name, error
    return GradientCheck(_relative(loss.detach(), expected.detach()), worst_error, worst, len(names), report)


def _relative(ours: torch.Tensor, theirs: torch.Tensor, floor: float = 0.0) -> float:
    """‖a − b‖/max(‖b‖, floor) (‖a − b‖ where both are 0)."""
    difference = (ours.double() - theirs.double()).norm().item()
    scale = max(theirs.double().norm().item(), floor)
    return difference / scale if scale else difference
