"""from_preset / construct: every preset of every model builds (eval_shape only, so the full
sizes cost no compute), published parameter counts, overrides, and the errors they raise."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.discriminators import PatchGANDiscriminator, StyleGANDiscriminator
from jaxtok.models.generators.ar import GPT
from jaxtok.models.generators.maskgit import MaskGIT
from jaxtok.models.presets import construct
from jaxtok.models.tokenizers import PatchTokenizer, TiTok, VQGAN, VQGANConfig, ViTTokenizer
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.vq import VectorQuantizer

KEY = jax.random.key(0, impl="rbg")
CLASSES = (VQGAN, ViTTokenizer, TiTok, PatchTokenizer, GPT, MaskGIT, PatchGANDiscriminator,
           StyleGANDiscriminator)

# Parameter counts of the published models, quantizer included where there is one:
#   VQGAN: LlamaGen's VQModel state_dict (FoundationVision/LlamaGen vq_model.py; the full
#     layout is checked in test_vqgan.py) and google-research/maskgit's VQVAE under eval_shape.
#   TiTok: bytedance/1d-tokenizer at 942a96f, TiTokEncoder + TiTokDecoder (is_legacy=False)
#     counted with torch, plus latent_tokens and the 4096 x 12 codebook.
#   GPT: LlamaGen's c2i Transformer with 16384 codes and 1000 classes (test_ar.py derives them).
#   PatchGAN: taming's NLayerDiscriminator(ndf=64, n_layers=3) state_dict, running stats not
#     counted (its layout is checked in test_discriminators.py).
PUBLISHED = {
    (VQGAN, "llamagen-vq16"): 71_883_403,
    (VQGAN, "llamagen-vq8"): 70_109_835,
    (VQGAN, "maskgit-f16"): 54_515_587,
    (TiTok, "S-128"): 51_753_312,
    (TiTok, "B-64"): 171_909_216,
    (TiTok, "L-32"): 606_904_160,
    (GPT, "GPT-B"): 110_888_448,
    (GPT, "GPT-L"): 342_910_976,
    (GPT, "GPT-XL"): 774_699_520,
    (PatchGANDiscriminator, "taming"): 2_765_633,
}

# The quantizer each tokenizer preset was published with (small ones for the rest).
QUANTIZERS = {
    "llamagen-vq16": dict(codebook_size=16384, dim=8, metric="cosine"),
    "llamagen-vq8": dict(codebook_size=16384, dim=8, metric="cosine"),
    "maskgit-f16": dict(codebook_size=1024, dim=256),
    "S-128": dict(codebook_size=4096, dim=12, metric="cosine"),
    "B-64": dict(codebook_size=4096, dim=12, metric="cosine"),
    "L-32": dict(codebook_size=4096, dim=12, metric="cosine"),
    "ViT-VQGAN-SS": dict(codebook_size=8192, dim=32, metric="cosine"),
    "ViT-VQGAN-SL": dict(codebook_size=8192, dim=32, metric="cosine"),
}


def build_abstract(cls, preset):
  """(model, abstract variables) of a preset, with what the preset leaves to the caller."""
  if cls in (GPT, MaskGIT):
    extra = {"codebook_size": 16384, "num_classes": 1000} if cls is GPT else {"num_classes": 1000}
    model = cls.from_preset(preset, **extra)
    args = (jnp.zeros((1, *model.token_shape), jnp.int32), jnp.zeros((1,), jnp.int32))
  elif cls in (PatchGANDiscriminator, StyleGANDiscriminator):
    model = cls.from_preset(preset)
    size = 32 if preset == "tiny" else 256
    args = (jnp.zeros((4, size, size, 3)),)
  else:
    quantizer = VectorQuantizer(**QUANTIZERS.get(preset, dict(codebook_size=16, dim=4)))
    model = cls.from_preset(preset, quantizer=quantizer)
    size = getattr(model, "image_size", 256 if preset != "tiny" else 16)
    if cls is PatchTokenizer:
      size = 16
    args = (jnp.zeros((1, size, size, 3)),)
  abstract = jax.eval_shape(lambda: model.init(KEY, *args))
  return model, abstract


def count(abstract) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.unbox(abstract["params"])))


@pytest.mark.parametrize("cls, preset", [(c, p) for c in CLASSES for p in c.PRESETS],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_every_preset_builds_with_its_published_parameter_count(cls, preset):
  model, abstract = build_abstract(cls, preset)
  assert isinstance(model, cls)
  n = count(abstract)
  assert n > 0
  if (cls, preset) in PUBLISHED:
    assert n == PUBLISHED[(cls, preset)]


def test_every_class_has_presets_and_the_requested_ones():
  assert all(c.PRESETS for c in CLASSES)
  assert {"taming", "tiny"} <= set(PatchGANDiscriminator.PRESETS)
  assert {"tiny", "demo"} <= set(PatchTokenizer.PRESETS)
  assert PatchTokenizer.PRESETS["demo"] == dict(patch_size=4, width=128, depth=2)
  taming = PatchGANDiscriminator.from_preset("taming")
  assert (taming.base_features, taming.num_layers, taming.norm) == (64, 3, "batch")


# -------------------------------------------------------------------------- overrides

def test_dataclass_field_overrides_merge_onto_the_preset():
  q = VectorQuantizer(codebook_size=16, dim=8)
  model = VQGAN.from_preset("llamagen-vq8", quantizer=q, config={"ch": 32, "ch_mult": [1, 2]})
  expected = dataclasses.replace(VQGAN.PRESETS["llamagen-vq8"]["config"], ch=32, ch_mult=(1, 2))
  assert model.config == expected and model.quantizer is q
  # Only the named entries change: the rest stay the preset's, not VQGANConfig's defaults.
  model = VQGAN.from_preset("maskgit-f16", quantizer=q, config={"ch": 64})
  assert model.config.ch == 64 and model.config.attention is False
  # A whole dataclass replaces the value.
  model = VQGAN.from_preset("maskgit-f16", quantizer=q, config=VQGANConfig(ch=64))
  assert model.config == VQGANConfig(ch=64)


def test_plain_field_overrides_and_lists_become_tuples():
  model = GPT.from_preset("GPT-B", codebook_size=16, token_shape=[4, 4], depth=2,
                          dtype=jnp.bfloat16)
  assert (model.width, model.depth, model.num_heads) == (768, 2, 12)
  assert model.token_shape == (4, 4) and model.dtype == jnp.bfloat16
  hash(model)  # Linen fields must be hashable (jit static arguments)
  maskgit = MaskGIT.from_preset("MaskGIT", codebook_size=64)
  assert (maskgit.codebook_size, maskgit.token_shape, maskgit.depth) == (64, (16, 16), 24)
  titok = TiTok.from_preset("S-128", quantizer=FSQ(levels=(5, 5)), num_latent_tokens=64)
  assert (titok.encoder_size, titok.num_latent_tokens) == ("small", 64)


def test_construct_builds_any_module_from_a_mapping():
  assert construct(FSQ, {"levels": [5, 5, 5]}).levels == (5, 5, 5)
  q = VectorQuantizer(codebook_size=16, dim=8)
  model = construct(VQGAN, {"quantizer": q, "config": {"ch": 64, "ch_mult": [1, 2]}})
  assert model.config == VQGANConfig(ch=64, ch_mult=(1, 2))  # over the field's default
  assert construct(PatchGANDiscriminator, {}) == PatchGANDiscriminator()


# -------------------------------------------------------------------------- errors

def test_unknown_preset_names_it_and_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown GPT preset 'GPT-Z'; known: \['GPT-3B', 'GPT-B', "):
    GPT.from_preset("GPT-Z", codebook_size=16)
  with pytest.raises(ValueError, match=r"unknown TiTok preset 'XL-16'.*'L-32'"):
    TiTok.from_preset("XL-16", quantizer=FSQ(levels=(5, 5)))


def test_unknown_field_names_it_and_lists_the_fields():
  with pytest.raises(ValueError, match=r"GPT has no field 'widht'; its fields: .*'width'"):
    GPT.from_preset("GPT-B", codebook_size=16, widht=64)
  with pytest.raises(ValueError, match=r"StyleGANDiscriminator has no field 'norm'"):
    StyleGANDiscriminator.from_preset("tiny", norm="batch")
  with pytest.raises(ValueError, match=r"has no field 'name'"):  # Linen's own, not a field
    construct(PatchGANDiscriminator, {"name": "disc"})
  with pytest.raises(ValueError, match=r"FSQ has no field 'level'"):
    construct(FSQ, {"level": (5, 5)})


def test_unknown_dataclass_entry_names_it_and_lists_the_entries():
  q = VectorQuantizer(codebook_size=16, dim=8)
  with pytest.raises(ValueError, match=r"VQGAN.config \(VQGANConfig\) has no entry 'chanels'; "
                                       r"its entries: .*'ch_mult'"):
    VQGAN.from_preset("tiny", quantizer=q, config={"chanels": 3})
  with pytest.raises(ValueError, match="'chanels'"):
    construct(VQGAN, {"quantizer": q, "config": {"chanels": 3}})


def test_missing_required_field_says_how_to_pass_it():
  with pytest.raises(ValueError, match=r"GPT needs codebook_size .*from_preset\('GPT-B', "
                                       r"codebook_size=\.\.\.\)"):
    GPT.from_preset("GPT-B")
  with pytest.raises(ValueError, match="VQGAN needs quantizer"):
    VQGAN.from_preset("tiny")
