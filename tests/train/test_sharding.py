"""Sharding: the rules table covers every logical axis name the models use, awkward sizes fall
back to replication, and one train step on 8 fake CPU devices equals the single-device step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxtok.models.tokenizers.titok import TiTok
from jaxtok.models.tokenizers.vit import ViTTokenizer
from jaxtok.models.tokenizers.vqgan import VQGAN
from jaxtok.quantizers.vq import VectorQuantizer
from jaxtok.train import sharding
from jaxtok.train.tokenizer_trainer import jitted_step

KEY = jax.random.key(0, impl="rbg")


def _logical_names(tree) -> set:
  names = set()
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    if isinstance(leaf, nn.Partitioned):
      names.update(n for n in leaf.names if n is not None)
  return names


def test_rules_cover_every_logical_name_of_the_tokenizers():
  q = VectorQuantizer(codebook_size=16, dim=8)
  models = [VQGAN.from_preset("tiny", quantizer=q),
            ViTTokenizer(quantizer=q, encoder_size="tiny", decoder_size="tiny", patch_size=4,
                         image_size=16),
            TiTok(quantizer=q, encoder_size="tiny", decoder_size="tiny", patch_size=4,
                  image_size=16, num_latent_tokens=4)]
  names = set()
  for model in models:
    names |= _logical_names(jax.eval_shape(model.init, KEY, jnp.zeros((1, 16, 16, 3))))
  ruled = {name for name, _ in sharding.LOGICAL_AXIS_RULES}
  assert names and names <= ruled, f"no rule for {names - ruled}"
  assert {"embed", "mlp", "heads", "conv_in", "conv_out", "norm"} <= names


def test_spec_replicates_what_the_mesh_cannot_divide():
  mesh = sharding.make_mesh((2, 2, 2))
  # conv kernel [3, 3, 3 in, 64 out]: 3 input channels cannot split over fsdp=2.
  assert sharding.spec_for((3, 3, 3, 64), P(None, None, "conv_in", "conv_out"), mesh) == P(
      None, None, None, "tensor")
  assert sharding.spec_for((3, 3, 32, 64), P(None, None, "conv_in", "conv_out"), mesh) == P(
      None, None, "fsdp", "tensor")
  # Unnamed: large arrays go over fsdp along their largest divisible dim, small stay whole.
  assert sharding.spec_for((4, 8192), None, mesh) == P(None, "fsdp")
  assert sharding.spec_for((3, 5), None, mesh) == P(None, None)
  with pytest.raises(ValueError, match="'nonsense' has no rule"):
    sharding.spec_for((4,), P("nonsense"), mesh)


def test_mesh_shape_fills_and_checks():
  assert sharding.mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.mesh_shape((-1, 3, 1), 8)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh((4, 4, 1))


def _step_on(mesh, parts, config, host_state, images, step=None):
  _, _, shardings, _, mesh_step = jitted_step(parts, config, mesh)
  state = jax.device_put(host_state, shardings)
  batch = sharding.global_batch({"image": images}, mesh)
  step = step or mesh_step
  new, metrics = step(state, batch, {})
  return jax.device_get(new), jax.device_get(metrics)


def test_one_step_on_every_mesh_equals_the_single_device_step(tiny_single):
  config, parts, host_state, single_step, single, _ = tiny_single  # GAN on, lr > 0 at step 0
  images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  ref, ref_metrics = _step_on(single, parts, config, host_state, images, single_step)
  assert ref_metrics["skipped"] == 0 and ref_metrics["disc_factor"] > 0
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), ref.params, host_state.params)
  assert any(jax.tree.leaves(changed)), "the step did not move the parameters"

  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    mesh = sharding.make_mesh(shape)
    _, _, shardings, _, _ = jitted_step(parts, config, mesh)
    kernel_sharding = shardings.params["decoder"]["mid_0"]["conv1"]["kernel"]
    if shape[1] > 1:  # FSDP: parameters and Adam moments are split, not replicated
      assert "fsdp" in str(kernel_sharding.spec), kernel_sharding
      mu = shardings.opt_state[1][0].mu["decoder"]["mid_0"]["conv1"]["kernel"]
      assert mu == kernel_sharding
    new, metrics = _step_on(mesh, parts, config, host_state, images)
    flat_new = jax.tree_util.tree_flatten_with_path(new)[0]
    for (path, a), b in zip(flat_new, jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6,
                                 err_msg=f"mesh {shape}: {jax.tree_util.keystr(path)}")
    for name in ("loss", "d_loss", "grad_norm", "psnr"):
      np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-6, err_msg=name)


def test_distributed_initialize_is_driven_by_the_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  sharding.maybe_initialize_distributed()
  monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: still a single process
  sharding.maybe_initialize_distributed()
  assert calls == []
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  sharding.maybe_initialize_distributed()
  assert calls == [(("10.0.0.1:1234",), {"num_processes": 4, "process_id": 2})]
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  monkeypatch.setenv("SLURM_NTASKS", "8")  # a cluster JAX detects by itself
  sharding.maybe_initialize_distributed()
  assert calls[-1] == ((), {})
