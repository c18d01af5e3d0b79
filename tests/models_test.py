"""Models: parity with the PyTorch original, and behaviour of every variant."""

import ast
import collections
import dataclasses
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusion_jax import configs, data, models, steps
from fusion_jax import optim as optim_lib
from fusion_jax.models import convert
from tests.conftest import FIXTURES, TORCH_SKIP, torch_python

PARITY = np.load(os.path.join(FIXTURES, "parity.npz"))
PCFG = ast.literal_eval(str(PARITY["config"]))
INPUTS = tuple(PARITY[k] for k in ("speech", "speech_mask", "text", "text_mask"))


def _parity_state(variant):
  prefix = f"{variant}/state/"
  return {k[len(prefix):]: PARITY[k] for k in PARITY.files if k.startswith(prefix)}


def _parity_config():
  return models.ModelConfig(**{k: PCFG[k] for k in (
      "speech_dim", "text_dim", "hidden", "layers", "heads", "f_hidden", "classifier_hidden",
      "dropout")})


ORIGINAL = models.variant_names(original=True)


@pytest.mark.parametrize("variant", ORIGINAL)
def test_parity_with_pytorch_original(variant):
  """Same weights, same padded inputs (garbage in padding): logits within 1e-5."""
  model = models.build_model(_parity_config(), variant, PCFG["classes"])
  params = convert.convert_torch_state_dict(_parity_state(variant))
  logits, aux = jax.jit(model.apply)({"params": params}, *INPUTS)
  ref = PARITY[f"{variant}/logits"]
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(logits - ref)) / np.max(np.abs(ref)) < 1e-5
  if models.get_variant(variant).is_fusion:
    np.testing.assert_allclose(aux["fusion/fused"], PARITY[f"{variant}/fused"], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(aux["temporal/pooled"], PARITY[f"{variant}/temporal_pooled"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["contextual/pooled"],
                               PARITY[f"{variant}/contextual_pooled"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ORIGINAL)
def test_original_checkpoint_converts_to_the_same_logits(variant):
  path = os.path.join(FIXTURES, "torch_checkpoints", f"best_{variant}_model.pt")
  ckpt = models.load_torch_checkpoint(path, base_config=models.ModelConfig(heads=PCFG["heads"]))
  assert ckpt["variant"] == variant and ckpt["num_classes"] == PCFG["classes"]
  assert ckpt["class_names"][0] == "angry" and ckpt["epoch"] == 3
  model = models.build_model(ckpt["model_config"], variant, ckpt["num_classes"])
  logits, _ = jax.jit(model.apply)({"params": ckpt["params"]}, *INPUTS)
  np.testing.assert_allclose(logits, PARITY[f"{variant}/logits"], rtol=1e-5, atol=1e-6)


def test_converter_rejects_a_state_dict_that_does_not_fit(tmp_path):
  state = _parity_state("gated")
  del state["fusion.speech_gate.0.bias"]
  state["fusion.text_proj.weight"] = state["fusion.text_proj.weight"][:, :5]
  path = tmp_path / "best_gated_model.pt"
  data.save_torch_file({"model_state_dict": state, "fusion_type": "gated"}, path)
  with pytest.raises(data.DataError) as e:
    models.load_torch_checkpoint(path, base_config=models.ModelConfig(heads=4))
  msg = str(e.value)
  assert "best_gated_model.pt" in msg and "model_state_dict" in msg
  assert "missing" in msg and "speech_gate" in msg and "shape" in msg


def test_converter_rejects_unknown_keys():
  with pytest.raises(ValueError, match="extra_head.weight"):
    convert.convert_torch_state_dict({"extra_head.weight": np.zeros((2, 2))})


@pytest.mark.parametrize("variant,expected", [
    ("cross_attention", 19.3e6), ("concatenation", 16.6e6), ("gated", 18.0e6),
    ("weighted", 17.1e6)])
def test_default_parameter_counts_match_the_original_design(variant, expected):
  model = models.build_model(configs.default().model, variant, 7)
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  assert abs(models.count_params(shapes) - expected) < 0.05e6
  enc = models.count_params(shapes["temporal_block"])
  assert abs(enc - 7.9e6) < 0.05e6


# ------------------------------------------------------- behaviour per variant
TINY = models.ModelConfig.from_config(configs.tiny().model)


def _batch(rng, b=3, ts=7, tt=5, s_len=(7, 1, 4), t_len=(5, 2, 1), cfg=TINY):
  s = rng.standard_normal((b, ts, cfg.speech_dim)).astype(np.float32)
  t = rng.standard_normal((b, tt, cfg.text_dim)).astype(np.float32)
  sm = (np.arange(ts)[None] < np.array(s_len)[:, None]).astype(np.float32)
  tm = (np.arange(tt)[None] < np.array(t_len)[:, None]).astype(np.float32)
  return s, sm, t, tm


class _Jitted:
  """The model with a jitted ``apply`` (eager op-by-op dispatch makes tests slow)."""

  def __init__(self, model):
    self.model = model
    self.apply = jax.jit(model.apply, static_argnames="train")


@pytest.fixture(scope="module", params=models.variant_names())
def variant_model(request):
  model = models.build_model(TINY, request.param, 7)
  return request.param, _Jitted(model), models.init_params(model, jax.random.key(1))


def test_shapes_and_finite(variant_model):
  variant, model, params = variant_model
  s, sm, t, tm = _batch(np.random.default_rng(0))
  logits, aux = model.apply({"params": params}, s, sm, t, tm)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  spec = models.get_variant(variant)
  if spec.reads("speech"):
    assert aux["temporal/sequence"].shape == (3, 7, TINY.speech_dim)
    assert aux["temporal/pooled"].shape == (3, TINY.speech_dim)
  if spec.reads("text"):
    assert aux["contextual/pooled"].shape == (3, TINY.text_dim)
  if spec.is_fusion:   # late fusion's "fused" vector is its combined logits
    assert aux["fusion/fused"].shape == (3, 7 if spec.head.produces_logits else TINY.f_hidden)
  if variant == "cross_attention":
    w = aux["fusion/speech_to_text_attention"]
    assert w.shape == (3, 7, 5)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(w)[2, :, 1:], 0.0)  # text row 2 has 1 token
  if variant == "gated":
    g = aux["fusion/speech_gate"]
    assert g.shape == (3, TINY.f_hidden) and (g > 0).all() and (g < 1).all()
  if variant == "weighted":
    np.testing.assert_allclose(aux["fusion/modality_weights"].sum(-1), 1.0, rtol=1e-6)
  for v in aux.values():
    assert np.isfinite(np.asarray(v, np.float32)).all()


def test_padding_invariance(variant_model):
  """Changing padded frames or tokens (or adding more padding) changes nothing."""
  variant, model, params = variant_model
  rng = np.random.default_rng(1)
  s, sm, t, tm = _batch(rng)
  logits, aux = model.apply({"params": params}, s, sm, t, tm)
  s2 = np.where(sm[..., None] > 0, s, 1e4 * rng.standard_normal(s.shape)).astype(np.float32)
  t2 = np.where(tm[..., None] > 0, t, -1e4).astype(np.float32)
  logits2, aux2 = model.apply({"params": params}, s2, sm, t2, tm)
  np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-6)
  # More padding (a longer bucket), filled with noise, gives the same result.
  longer = lambda x, m, n: (
      np.concatenate([x, rng.standard_normal((x.shape[0], n, x.shape[2]))], 1).astype(
          np.float32), np.concatenate([m, np.zeros((m.shape[0], n), np.float32)], 1))
  logits3, _ = model.apply({"params": params}, *longer(s, sm, 9), *longer(t, tm, 3))
  np.testing.assert_allclose(logits3, logits, rtol=1e-5, atol=1e-6)
  for key in ("temporal/sequence", "contextual/sequence"):
    if key in aux:
      np.testing.assert_allclose(aux2[key], aux[key], rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_blocks(variant_model):
  variant, model, params = variant_model
  s, sm, t, tm = _batch(np.random.default_rng(2))

  def loss(p):
    logits, _ = model.apply({"params": p}, s, sm, t, tm, train=True,
                            rngs={"dropout": jax.random.key(0)})
    return jnp.sum(logits ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  norm = lambda tree: float(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(tree)))
  spec = models.get_variant(variant)
  for m in spec.modalities:
    assert norm(_block(grads, variant, m)) > 0, m
  assert bool(_block(params, variant, "text")) == spec.reads("text")


def _block(tree, variant, modality):
  """The encoder parameters of one modality (inside the head for MBT, which owns them)."""
  spec = models.get_variant(variant)
  if spec.is_fusion and spec.head.owns_encoders:
    return {k: v for k, v in tree["fusion_head"].items() if k.startswith(modality + "_")}
  return tree.get("temporal_block" if modality == "speech" else "contextual_block", {})


def test_dropout_is_active_only_in_training(variant_model):
  _, model, params = variant_model
  s, sm, t, tm = _batch(np.random.default_rng(3))
  run = lambda key: model.apply({"params": params}, s, sm, t, tm, train=True,
                                rngs={"dropout": jax.random.key(key)})[0]
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(run(0), run(0))


def test_bfloat16_compute_within_tolerance(variant_model):
  """bf16 matmuls (float32 params, LayerNorm and softmax): logits within 0.05 + 5%."""
  variant, model, params = variant_model
  s, sm, t, tm = _batch(np.random.default_rng(4))
  ref, _ = model.apply({"params": params}, s, sm, t, tm)
  bf = models.build_model(dataclasses.replace(TINY, dtype="bfloat16"), variant, 7)
  out, _ = jax.jit(bf.apply)({"params": params}, s, sm, t, tm)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05)
  assert np.abs(np.asarray(out) - np.asarray(ref)).max() > 0  # bf16 really ran


def test_input_projection_and_positions():
  cfg = dataclasses.replace(TINY, model_dim=8, positional_encoding=True)
  model = _Jitted(models.build_model(cfg, "cross_attention", 7))
  params = models.init_params(model.model, jax.random.key(0))
  assert params["temporal_block"]["input_proj"]["kernel"].shape == (TINY.speech_dim, 8)
  s, sm, t, tm = _batch(np.random.default_rng(5))
  logits, aux = model.apply({"params": params}, s, sm, t, tm)
  assert aux["temporal/sequence"].shape[-1] == 8 and np.isfinite(logits).all()
  # With positions, order matters; without, the model is permutation invariant.
  perm = np.array([0, 2, 1, 3, 4, 5, 6])
  logits_p, _ = model.apply({"params": params}, s[:, perm], sm, t, tm)
  assert not np.allclose(logits_p[0], logits[0], atol=1e-6)


def test_registry_lookup_names_valid_variants():
  assert models.get_variant("gated").head is models.heads.GatedFusion
  assert models.get_variant("speech_only").modalities == ("speech",)
  with pytest.raises(ValueError, match="unknown variant 'attention'; valid: .*concatenation"):
    models.get_variant("attention")
  with pytest.raises(ValueError, match="unknown variant 'fused'"):
    models.parse_variants("gated,fused")
  assert models.parse_variants("all") == models.variant_names()
  assert models.parse_variants("original") == ["cross_attention", "concatenation", "gated",
                                               "weighted"]
  assert set(models.parse_variants("fusion")) >= set(models.parse_variants("original"))


def test_random_keys_are_pinned_to_the_original_order():
  """Each run's key comes from the variant's id: registering another never changes them."""
  ids = {v: models.get_variant(v).id for v in models.variant_names(original=True)}
  assert ids == {"cross_attention": 0, "concatenation": 1, "gated": 2, "weighted": 3,
                 "speech_only": 4, "text_only": 5}
  extra = models.Variant("toy_keys", ("speech", "text"), models.heads.ConcatenationFusion,
                         "a test head")
  assert extra.id not in ids.values()
  with pytest.raises(ValueError, match="already registered"):
    models.register_variant(models.Variant("gated", ("speech",), None, "dup"))
  with pytest.raises(ValueError, match="modalities"):
    models.Variant("bad", ("video",), None, "x")


def test_masked_mean_against_numpy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 5, 2)).astype(np.float32)
  m = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.float32)
  got = models.masked_mean(x, m)
  for i in range(2):
    np.testing.assert_allclose(got[i], x[i][m[i] > 0].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(got[2], 0.0)  # fully padded row: zeros, not NaN


# ------------------------------------------------------- the original's checkpoint, written
TORCH_CHECK = """
import sys
import numpy as np
import torch
sys.path.insert(0, sys.argv[1])
import make_torch_fixtures as ref
d = sys.argv[2]
inputs = np.load(d + "/inputs.npz")
for variant in sys.argv[3].split(","):
  ckpt = torch.load(f"{d}/best_{variant}_model.pt", weights_only=True)
  assert sorted(ckpt) == sorted(["epoch", "model_state_dict", "optimizer_state_dict", "val_acc",
                                 "confusion_matrix", "class_names", "fusion_type"]), list(ckpt)
  assert ckpt["confusion_matrix"].dtype == torch.int64 and ckpt["fusion_type"] == variant
  model = (ref.Unimodal if variant.endswith("_only") else ref.Fusion)(ref.CFG, variant)
  model.load_state_dict(ckpt["model_state_dict"], strict=True)
  opt = torch.optim.Adam(model.parameters(), lr=1.0)
  opt.load_state_dict(ckpt["optimizer_state_dict"])   # torch's own checks of the form
  model.eval()
  with torch.no_grad():
    logits = model(*(torch.from_numpy(inputs[k]) for k in
                     ("speech", "text", "speech_mask", "text_mask")))[0].numpy()
  want = inputs[variant]
  err = np.abs(logits - want).max() / np.abs(want).max()
  assert err < 1e-5, (variant, err)
  print("TORCH_OK", variant, f"{err:.1e}", ckpt["epoch"], opt.param_groups[0]["lr"])
"""


def _trained_params(variant):
  """Random parameters and Adam moments as after 2 steps (NumPy values: nothing to compile)."""
  model = models.build_model(_parity_config(), variant, PCFG["classes"])
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(3)
  random = lambda scale: jax.tree_util.tree_map(
      lambda x: (scale * rng.standard_normal(x.shape)).astype(np.float32), shapes)
  params = random(0.3)
  opt_state = optim_lib.make_optimizer(configs.default().optim).init(params)
  adam = opt_state[1]._replace(count=np.asarray(2, np.int32), mu=random(1.0),
                               nu=jax.tree_util.tree_map(np.abs, random(1.0)))
  return model, steps.TrainState(np.asarray(2), params, (opt_state[0], adam),
                                 np.asarray(1e-3, np.float32))


def test_torch_checkpoint_round_trip_for_every_original_variant(tmp_path):
  """Written without torch, read back by the converter: the same parameters and moments."""
  for variant in ORIGINAL:
    model, state = _trained_params(variant)
    path = tmp_path / f"best_{variant}_model.pt"
    models.save_torch_checkpoint(state.params, variant, path, epoch=7, val_acc=0.5,
                                 class_names=["a", "b", "c", "d", "e"],
                                 confusion_matrix=np.eye(5, dtype=np.int64),
                                 opt_state=state.opt_state, learning_rate=5e-4,
                                 optim_config=configs.default().optim,
                                 confusion_as_numpy=variant == "gated")
    back = models.load_torch_checkpoint(path, base_config=models.ModelConfig(heads=PCFG["heads"]))
    assert back["variant"] == variant and back["epoch"] == 7 and back["num_classes"] == 5
    assert back["class_names"][0] == "a"
    if models.get_variant(variant).is_fusion:   # a baseline's other dim cannot be inferred
      assert back["model_config"] == _parity_config()
    np.testing.assert_array_equal(back["confusion_matrix"], np.eye(5))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back["params"],
                           jax.device_get(state.params))
    raw = data.load_torch_file(path)
    sd, opt = raw["model_state_dict"], raw["optimizer_state_dict"]
    adam = state.opt_state[1]
    mu = models.to_torch_state_dict(adam.mu, variant)
    assert list(sd) == list(mu) and len(opt["state"]) == len(sd)
    assert opt["param_groups"][0]["lr"] == 5e-4 and opt["param_groups"][0]["params"] == list(
        range(len(sd)))
    nu = models.to_torch_state_dict(adam.nu, variant)
    for i, key in enumerate(sd):
      np.testing.assert_array_equal(opt["state"][i]["exp_avg"], mu[key])
      np.testing.assert_array_equal(opt["state"][i]["exp_avg_sq"], nu[key])
      assert float(opt["state"][i]["step"]) == 2.0
    # the state_dict has the original's names, in the original's order
    fixture = data.load_torch_file(os.path.join(FIXTURES, "torch_checkpoints",
                                                f"best_{variant}_model.pt"))
    assert list(sd) == list(fixture["model_state_dict"])
    for key, value in fixture["model_state_dict"].items():
      assert sd[key].shape == value.shape, key


def test_written_adam_moments_are_pytorchs_own(tmp_path):
  """PyTorch's Adam moments (the fixtures: torch.optim.Adam after its steps) read into an
  optax state and written back: exp_avg and exp_avg_sq each where torch keeps it."""
  for variant in ORIGINAL:
    ref = data.load_torch_file(os.path.join(FIXTURES, "torch_checkpoints",
                                            f"best_{variant}_model.pt"))
    sd, torch_state = ref["model_state_dict"], ref["optimizer_state_dict"]["state"]
    moment = lambda name: models.convert_torch_state_dict(collections.OrderedDict(
        (k, np.asarray(torch_state[i][name])) for i, k in enumerate(sd)))
    params = models.convert_torch_state_dict(sd)
    opt_state = optim_lib.make_optimizer(configs.default().optim).init(params)
    step = int(float(torch_state[0]["step"]))
    adam = opt_state[1]._replace(count=np.asarray(step, np.int32), mu=moment("exp_avg"),
                                 nu=moment("exp_avg_sq"))
    path = tmp_path / f"best_{variant}_model.pt"
    models.save_torch_checkpoint(params, variant, path, epoch=1, val_acc=0.5,
                                 class_names=list("abcde"), opt_state=(opt_state[0], adam),
                                 learning_rate=1e-4, optim_config=configs.default().optim)
    written = data.load_torch_file(path)["optimizer_state_dict"]["state"]
    assert len(written) == len(torch_state)
    for i in torch_state:
      for name in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(written[i][name], torch_state[i][name], err_msg=name)
      assert float(written[i]["step"]) == step


def test_torch_checkpoint_refuses_what_the_original_cannot_hold(tmp_path):
  cfg = dataclasses.replace(_parity_config(), model_dim=8)
  model = models.build_model(cfg, "gated", 5)
  params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, np.float32), jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0))))
  with pytest.raises(ValueError, match="input_proj"):
    models.save_torch_checkpoint(params, "gated", tmp_path / "x.pt", epoch=1, val_acc=0.1,
                                 class_names=list("abcde"))
  assert not (tmp_path / "x.pt").exists()


@pytest.mark.skipif(torch_python() is None, reason=TORCH_SKIP)
def test_pytorch_loads_the_written_checkpoint_and_agrees(tmp_path):
  """torch.load(weights_only=True) + the reference model's load_state_dict(strict=True)."""
  expected = dict(speech=INPUTS[0], speech_mask=INPUTS[1], text=INPUTS[2], text_mask=INPUTS[3])
  for variant in ORIGINAL:
    model, state = _trained_params(variant)
    models.save_torch_checkpoint(state.params, variant, tmp_path / f"best_{variant}_model.pt",
                                 epoch=3, val_acc=0.5, class_names=list("abcde"),
                                 opt_state=state.opt_state, learning_rate=1e-4,
                                 optim_config=configs.default().optim)
    expected[variant], _ = jax.jit(model.apply)({"params": state.params}, *INPUTS)
  np.savez(tmp_path / "inputs.npz", **{k: np.asarray(v) for k, v in expected.items()})
  scripts = os.path.join(os.path.dirname(FIXTURES), "..", "scripts")
  proc = subprocess.run([torch_python(), "-c", TORCH_CHECK, scripts, str(tmp_path),
                         ",".join(ORIGINAL)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert proc.stdout.count("TORCH_OK") == len(ORIGINAL)


# ------------------------------------------------------- the fusion workbench's references
def _tiny_model(variant, **changes):
  cfg = dataclasses.replace(TINY, **changes)
  model = models.build_model(cfg, variant, 7)
  return model, models.init_params(model, jax.random.key(7)), cfg


def test_tensor_fusion_is_the_outer_product_then_the_projection():
  from scipy.special import erf  # pylint: disable=import-outside-toplevel
  model, params, _ = _tiny_model("tensor")
  s, sm, t, tm = _batch(np.random.default_rng(8))
  _, aux = jax.jit(model.apply)({"params": params}, s, sm, t, tm)
  sv, tv = np.asarray(aux["fusion/speech_vector"], np.float64), np.asarray(
      aux["fusion/text_vector"], np.float64)
  ext = lambda v: np.concatenate([v, np.ones((v.shape[0], 1))], 1)
  outer = np.stack([np.outer(a, b).ravel() for a, b in zip(ext(sv), ext(tv))])
  np.testing.assert_allclose(aux["fusion/tensor"], outer, rtol=1e-5, atol=1e-6)
  fp = params["fusion_head"]["fusion_proj"]
  h = outer @ np.asarray(fp["dense"]["kernel"], np.float64) + np.asarray(fp["dense"]["bias"])
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5)
  h = h * np.asarray(fp["norm"]["scale"]) + np.asarray(fp["norm"]["bias"])
  np.testing.assert_allclose(aux["fusion/fused"], h, rtol=1e-4, atol=1e-5)


def test_low_rank_fusion_with_full_rank_equals_tensor_fusion():
  """Any tensor-fusion weight W [k+1, k+1, F] splits per output into rank-(k+1) factors."""
  k1 = TINY.tensor_dim + 1
  model, params, _ = _tiny_model("low_rank", rank=k1)
  rng = np.random.default_rng(9)
  w = rng.standard_normal((k1, k1, TINY.f_hidden))
  fs, ft = np.zeros((k1, k1, TINY.f_hidden)), np.zeros((k1, k1, TINY.f_hidden))
  for f in range(TINY.f_hidden):   # W[:, :, f] = U diag(σ) Vᵀ = Σ_r (U σ)_r ⊗ V_r
    u, sig, vt = np.linalg.svd(w[:, :, f])
    fs[:, :, f], ft[:, :, f] = (u * sig).T, vt
  head = dict(params["fusion_head"], speech_factors=fs.astype(np.float32),
              text_factors=ft.astype(np.float32))
  params = dict(params, fusion_head=head)
  s, sm, t, tm = _batch(np.random.default_rng(10))
  _, aux = jax.jit(model.apply)({"params": params}, s, sm, t, tm)
  ext = lambda v: np.concatenate([np.asarray(v, np.float64), np.ones((v.shape[0], 1))], 1)
  tensor_form = np.einsum("bi,bj,ijf->bf", ext(aux["fusion/speech_vector"]),
                          ext(aux["fusion/text_vector"]), w) + np.asarray(head["bias"])
  np.testing.assert_allclose(aux["fusion/product"], tensor_form, rtol=1e-4, atol=1e-4)


def test_late_fusion_is_the_weighted_sum_of_the_unimodal_logits():
  model, params, _ = _tiny_model("late")
  params = jax.tree_util.tree_map(np.asarray, params)
  params["fusion_head"]["mix"] = np.array([0.7, -0.4], np.float32)
  s, sm, t, tm = _batch(np.random.default_rng(11))
  logits, aux = jax.jit(model.apply)({"params": params}, s, sm, t, tm)
  head = params["fusion_head"]
  unimodal = {}
  for variant, m, block in (("speech_only", "speech", "temporal_block"),
                            ("text_only", "text", "contextual_block")):
    uni = models.build_model(TINY, variant, 7)
    p = {block: params[block], "dense1": head[f"{m}_dense1"], "dense2": head[f"{m}_dense2"]}
    unimodal[m], _ = jax.jit(uni.apply)({"params": p}, s, sm, t, tm)
  w = np.exp([0.7, -0.4]) / np.exp([0.7, -0.4]).sum()
  np.testing.assert_allclose(logits, w[0] * unimodal["speech"] + w[1] * unimodal["text"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux["fusion/modality_weights"][0], w, rtol=1e-6)
  np.testing.assert_array_equal(aux["fusion/fused"], logits)


@pytest.mark.parametrize("changes", [dict(bottleneck_tokens=0),
                                     dict(fusion_layer=2, layers=2)])
def test_bottleneck_without_exchange_is_two_independent_encoders(changes):
  """No bottleneck tokens, or a fusion layer past the last: exactly the two blocks."""
  model, params, cfg = _tiny_model("bottleneck", **changes)
  s, sm, t, tm = _batch(np.random.default_rng(12))
  _, aux = jax.jit(model.apply)({"params": params}, s, sm, t, tm)
  for m, x, mask, key in (("speech", s, sm, "temporal"), ("text", t, tm, "contextual")):
    enc = models.SequenceEncoder(cfg.layers, cfg.heads, 4 * cfg.hidden, cfg.dropout)
    enc_params = {k[len(m) + 1:]: v for k, v in params["fusion_head"].items()
                  if k.startswith(m + "_layer_")}
    want = jax.jit(lambda p, x, mask: enc.apply({"params": p}, x, mask, deterministic=True))(
        enc_params, x, mask)
    np.testing.assert_allclose(aux[f"{key}/sequence"], want, rtol=1e-6, atol=1e-6)
  assert "bottleneck" not in params["fusion_head"]


def test_bottleneck_exchanges_only_through_its_tokens():
  """Fusing from layer 0 of 2: changing the text changes speech's layer-1 output, through
  the tokens that text updated in layer 0."""
  model, params, _ = _tiny_model("bottleneck", layers=2)
  s, sm, t, tm = _batch(np.random.default_rng(13))
  apply = jax.jit(model.apply)
  _, a = apply({"params": params}, s, sm, t, tm)
  _, b = apply({"params": params}, s, sm, t + 1.0, tm)
  assert np.abs(np.asarray(a["temporal/sequence"]) - np.asarray(b["temporal/sequence"])).max() > 1e-4
  w = np.asarray(a["fusion/speech_to_bottleneck_attention"])
  assert w.shape == (3, 7, TINY.bottleneck_tokens) and (w >= 0).all() and (w.sum(-1) <= 1 + 1e-5).all()


def test_new_heads_are_registered_with_their_papers():
  for name, paper in (("mult", "Tsai"), ("bottleneck", "Nagrani"), ("tensor", "Zadeh"),
                      ("low_rank", "Liu"), ("late", "late")):
    spec = models.get_variant(name)
    assert spec.is_fusion and not spec.original and paper in spec.reference
  assert set(models.parse_variants("fusion")) == set(models.parse_variants("original")) | {
      "mult", "bottleneck", "tensor", "low_rank", "late"}


def test_hash_dropout_keeps_the_right_fraction_independently():
  drop = models.layers.Dropout(0.4)
  x = jnp.ones((64, 8, 50, 40))
  apply = jax.jit(lambda k: drop.apply({}, x, deterministic=False, rngs={"dropout": k}))
  a, b = np.asarray(apply(jax.random.key(0))), np.asarray(apply(jax.random.key(1)))
  kept = a > 0
  assert abs(kept.mean() - 0.6) < 0.003                       # 1 M elements
  np.testing.assert_allclose(a[kept], 1 / 0.6, rtol=1e-6)     # inverted scaling
  assert abs(a.mean() - 1.0) < 0.01
  np.testing.assert_array_equal(a, np.asarray(apply(jax.random.key(0))))   # a function of key
  both = (kept & (b > 0)).mean()
  assert abs(both - 0.36) < 0.003                             # masks of two keys independent
  flat = kept.reshape(-1).astype(np.float64)
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01   # neighbours uncorrelated
  # seeds 5·φ apart: were the seed only added to index·φ, the second mask would be the
  # first one shifted by 5 elements
  s1 = 7
  s2 = (s1 + 5 * 0x9E3779B1) % 2 ** 32
  m1, m2 = (np.asarray(models.layers.hash_dropout(jnp.ones(1 << 16), jnp.uint32(s), 0.5)) > 0
            for s in (s1, s2))
  assert abs((m1[5:] == m2[:-5]).mean() - 0.5) < 0.02
  np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)


def test_attention_one_head_at_a_time_equals_the_whole_tensor():
  """The memory-saving path (per head, recomputed in the backward pass) changes nothing:
  same outputs, same dropout masks, same gradients, padded keys included."""
  q = jax.random.normal(jax.random.key(0), (3, 9, 12))
  kv = jax.random.normal(jax.random.key(1), (3, 7, 12))
  mask = (jnp.arange(7)[None] < jnp.array([[7], [4], [1]])).astype(jnp.float32)
  def run(recompute_above):
    mha = models.layers.MultiHeadAttention(num_heads=3, dropout=0.3,
                                           recompute_above=recompute_above)
    params = mha.init(jax.random.key(2), q, kv, mask, deterministic=True)
    def loss(p, q, kv):
      out, _ = mha.apply(p, q, kv, mask, deterministic=False, rngs={"dropout": jax.random.key(3)})
      return jnp.sum(out * jnp.cos(out))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, q, kv)
  (whole, g_whole), (per_head, g_head) = run(2 ** 40), run(0)
  np.testing.assert_allclose(per_head, whole, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g_head), jax.tree_util.tree_leaves(g_whole)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
