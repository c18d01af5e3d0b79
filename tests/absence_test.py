"""A missing modality and the floor: absent inputs in every head, modality dropout, the
unimodal heads' blend chosen on validation (models/floor.py), true-absence evaluation."""

import dataclasses
import json
import os
import subprocess
import sys
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusion_jax import configs, data, io_utils, models, optim, passes, steps
from fusion_jax.models import floor, registry
from tests.conftest import demo_splits

TINY = models.ModelConfig.from_config(configs.tiny().model)
ROBUST = dataclasses.replace(TINY, absent_embedding=True, unimodal_heads=True)
FUSION = [v for v in models.variant_names() if registry.get(v).is_fusion]


def _batch(rng, b=4, ts=6, tt=5):
  s = rng.standard_normal((b, ts, TINY.speech_dim)).astype(np.float32)
  t = rng.standard_normal((b, tt, TINY.text_dim)).astype(np.float32)
  sm = np.ones((b, ts), np.float32)
  tm = np.ones((b, tt), np.float32)
  sm[0] = 0.0            # row 0: speech absent
  tm[1] = 0.0            # row 1: text absent
  sm[2] = tm[2] = 0.0    # row 2: nothing at all
  sm[3, 4:] = 0.0        # row 3: both, speech padded
  return s, sm, t, tm


@pytest.fixture(scope="module", params=[(v, c) for v in FUSION for c in ("plain", "robust")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def model(request):
  variant, which = request.param
  model = models.build_model(ROBUST if which == "robust" else TINY, variant, 5)
  return variant, which, model, models.init_params(model, jax.random.key(3))


def test_absent_modalities_give_finite_outputs_and_gradients_and_ignore_their_frames(model):
  variant, which, m, params = model
  rng = np.random.default_rng(0)
  s, sm, t, tm = _batch(rng)
  apply = jax.jit(m.apply)
  logits, aux = apply({"params": params}, s, sm, t, tm)
  assert logits.shape == (4, 5) and np.isfinite(logits).all()
  for key, v in aux.items():
    assert np.isfinite(np.asarray(v, np.float32)).all(), key
  # absent means absent: what an all-zero mask hides never reaches the output
  s2 = np.where(sm[..., None] > 0, s, 1e3 * rng.standard_normal(s.shape)).astype(np.float32)
  t2 = np.where(tm[..., None] > 0, t, -1e3).astype(np.float32)
  np.testing.assert_allclose(apply({"params": params}, s2, sm, t2, tm)[0], logits, rtol=1e-5,
                             atol=1e-5)

  def loss(p):
    z, _ = m.apply({"params": p}, s, sm, t, tm, train=True,
                   rngs={"dropout": jax.random.key(0)})
    return jnp.sum(z ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.isfinite(g).all(), jax.tree_util.keystr(path)


def test_with_both_modalities_the_new_options_change_no_head():
  """Presence handling is exact when both are there: a robust model whose extra parameters
  are dropped computes the plain model's fusion logits."""
  rng = np.random.default_rng(2)
  s, sm, t, tm = _batch(rng)
  # both modalities present in every row, the speech of row 3 padded (the shapes of the test
  # above, so its compiled programs serve this one too)
  sm, tm = np.ones_like(sm), np.ones_like(tm)
  sm[3, 4:] = 0.0
  for variant in FUSION:
    robust = models.build_model(ROBUST, variant, 5)
    params = models.init_params(robust, jax.random.key(4))
    _, aux = jax.jit(robust.apply)({"params": params}, s, sm, t, tm)
    plain = models.build_model(TINY, variant, 5)
    kept = {k: v for k, v in params.items()
            if not k.startswith(("speech_head_", "text_head_", "floor_"))}
    kept["fusion_head"] = {k: v for k, v in params["fusion_head"].items()
                           if not k.endswith("_absent")}
    z, _ = jax.jit(plain.apply)({"params": kept}, s, sm, t, tm)
    np.testing.assert_allclose(aux["fusion/logits"], z, rtol=1e-5, atol=1e-6,
                               err_msg=variant)


def test_weights_and_gates_renormalise_over_the_modalities_present():
  rng = np.random.default_rng(3)
  s, sm, t, tm = _batch(rng)
  for variant in ("weighted", "late"):
    m = models.build_model(TINY, variant, 5)
    params = models.init_params(m, jax.random.key(5))
    if variant == "late":
      params["fusion_head"]["mix"] = jnp.asarray([0.3, -0.2])
    _, aux = jax.jit(m.apply)({"params": params}, s, sm, t, tm)
    w = np.asarray(aux["fusion/modality_weights"])
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[0], [0.0, 1.0], atol=1e-7)   # speech absent
    np.testing.assert_allclose(w[1], [1.0, 0.0], atol=1e-7)   # text absent
    assert 0.0 < w[3, 0] < 1.0
    if variant == "late":   # one modality left: its classifier decides alone
      np.testing.assert_allclose(
          jax.jit(m.apply)({"params": params}, s, sm, t, tm)[0][0],
          aux["fusion/text_logits"][0], rtol=1e-6)
  # gated: the present modality's gated term, doubled, is all the projection sees
  m = models.build_model(TINY, "gated", 5)
  params = models.init_params(m, jax.random.key(6))
  captured = {}

  def spy(next_fun, args, kwargs, context):
    if context.module.name == "fusion_proj" and context.method_name == "__call__":
      captured["x"] = args[0]
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(spy):
    _, aux = m.apply({"params": params}, s, sm, t, tm)
  head = params["fusion_head"]["text_proj"]
  t_hat = np.asarray(aux["contextual/pooled"]) @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(captured["x"][0], 2 * aux["fusion/text_gate"][0] * t_hat[0],
                             rtol=1e-5, atol=1e-6)


def test_the_floor_blend_against_numpy():
  rng = np.random.default_rng(4)
  z = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(3)]
  p_s = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
  p_t = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
  blend = np.array([[0.25, 0.5, 0.25], [0.5, 0.0, 0.5], [0.25, 0.75, 0.0]], np.float32)
  w = np.asarray(floor.effective_weights(jnp.asarray(blend), p_s, p_t))
  # each utterance takes its pattern's row: no speech, no text, nothing (fusion), both
  np.testing.assert_allclose(w, [blend[1], blend[2], [1, 0, 0], blend[0]], rtol=1e-6)
  out = np.asarray(floor.blend_logits(jnp.asarray(w), *z))
  logp = [x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in z]
  for b in range(4):
    np.testing.assert_allclose(out[b], sum(w[b, h] * logp[h][b] for h in range(3)), rtol=1e-5)
  # a row that names an absent modality's head is renormalised over what is there
  odd = np.asarray(floor.effective_weights(jnp.asarray(np.full((3, 3), 1 / 3, np.float32)),
                                           p_s, p_t))
  np.testing.assert_allclose(odd[0], [0.5, 0.0, 0.5], rtol=1e-6)
  assert floor.BLENDS[0].tolist() == [1.0, 0.0, 0.0] and len(floor.BLENDS) == 15
  for p, c in floor.CANDIDATES.items():
    np.testing.assert_allclose(c.sum(1), 1.0)
    if p != "both":   # never the absent modality's head
      assert (c[:, 1 if p == "no_speech" else 2] == 0).all() and c[0].tolist() == [1, 0, 0]
  assert floor.choose([0.5, 0.7, 0.7, 0.1]) == 1   # ties keep the earlier (more fusion)


def test_modality_dropout_is_seeded_never_drops_both_and_keeps_its_rate():
  b = 4000
  batch = dict(speech_mask=np.ones((b, 3), np.float32), text_mask=np.ones((b, 2), np.float32))
  batch["text_mask"][:100] = 0.0    # text already absent: speech must stay
  out = steps.drop_modalities(batch, jax.random.key(7), 0.2)
  again = steps.drop_modalities(batch, jax.random.key(7), 0.2)
  other = steps.drop_modalities(batch, jax.random.key(8), 0.2)
  s_on = np.asarray(out["speech_mask"]).max(1) > 0
  t_on = np.asarray(out["text_mask"]).max(1) > 0
  np.testing.assert_array_equal(np.asarray(again["speech_mask"]), np.asarray(out["speech_mask"]))
  assert (np.asarray(other["speech_mask"]) != np.asarray(out["speech_mask"])).any()
  assert (s_on | t_on).all() and s_on[:100].all()
  real = slice(100, None)
  assert abs((~s_on[real]).mean() - 0.2) < 0.03 and abs((~t_on[real]).mean() - 0.2) < 0.03
  # a dropped modality loses its whole mask; the other keeps its own
  kept = np.asarray(out["speech_mask"])[s_on]
  assert (kept == 1.0).all()


def test_the_optimizer_never_moves_the_floor_blend():
  cfg = configs.tiny()
  cfg.model.unimodal_heads = True
  cfg.optim.unimodal_loss_weight = 1.0
  cfg.optim.modality_dropout = 0.3
  model = models.build_model(cfg.model, "gated", 5)
  optimizer = optim.make_optimizer(cfg.optim, frozen=models.model.has_floor(model.config,
                                                                             "gated"))
  state = steps.init_state(model, optimizer, jax.random.key(0), 0.01)
  blend = jnp.asarray([[0.5, 0.25, 0.25], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
  state = state.replace(params=dict(state.params, floor_blend=blend))
  rng = np.random.default_rng(5)
  s, sm, t, tm = _batch(rng)
  batch = dict(speech=s, speech_mask=sm, text=t, text_mask=tm,
               label=np.array([0, 1, 2, 3]), example_mask=np.ones(4, np.float32))
  loss = optim.Loss.from_config(cfg.optim)
  new, _ = jax.jit(lambda st: steps.train_step(
      st, steps.zero_metrics(), batch, jax.random.key(1), model=model, optimizer=optimizer,
      label_smoothing=0.1, loss=loss, modality_dropout=0.3))(state)
  np.testing.assert_array_equal(new.params["floor_blend"], blend)
  moved = lambda k: not np.allclose(new.params[k]["kernel"], state.params[k]["kernel"])
  assert moved("speech_head_dense1") and moved("text_head_dense2")   # the auxiliary loss


def test_evaluation_scores_every_candidate_blend_per_pattern():
  model = models.build_model(ROBUST, "concatenation", 5)
  params = models.init_params(model, jax.random.key(9))
  rng = np.random.default_rng(6)
  s, sm, t, tm = _batch(rng)
  labels = np.array([0, 1, 2, 3])
  batch = dict(speech=s, speech_mask=sm, text=t, text_mask=tm, label=labels,
               example_mask=np.ones(4, np.float32))
  out = jax.jit(lambda p: steps.eval_step(p, batch, model=model, label_smoothing=0.0))(params)
  for row, (pattern, cands) in enumerate(floor.CANDIDATES.items()):
    assert out[f"blend_confusion/{pattern}"].shape == (len(cands), 5, 5)
    sm_p = sm * (pattern != "no_speech")
    tm_p = tm * (pattern != "no_text")
    for j in (0, len(cands) - 1):   # the model itself with that blend, on those masks
      blend = np.asarray(floor.FUSION_ONLY).copy()
      blend[row] = cands[j]
      z, _ = model.apply({"params": dict(params, floor_blend=jnp.asarray(blend))}, s, sm_p,
                         t, tm_p)
      want = np.zeros((5, 5))
      np.add.at(want, (labels, np.argmax(np.asarray(z), -1)), 1)
      np.testing.assert_array_equal(np.asarray(out[f"blend_confusion/{pattern}"][j]), want,
                                    err_msg=f"{pattern} {j}")
  np.testing.assert_array_equal(out["confusion"], out["blend_confusion/both"][0])
  stats = passes.summarise_eval([jax.device_get(out)], 4)
  assert set(stats["blends"]) == set(floor.PATTERNS)
  both = [b["accuracy"] for b in stats["blends"]["both"]]
  # the floor by construction: at least each head alone (speech 10, text 11)
  assert both[floor.choose(both)] >= max(both[10], both[11])


# ------------------------------------------------------------------ trained, resumed, predicted
@pytest.fixture(scope="module")
def robust_run(tmp_path_factory):
  from fusion_jax import experiment, training  # pylint: disable=import-outside-toplevel
  d = tmp_path_factory.mktemp("absence")
  spec = data.DemoSpec(sizes=(("train", 24), ("val", 12)), speech_dim=8, text_dim=8,
                       speech_length=(4, 10), text_length=(2, 5), strength=0.5,
                       speech_median=7, text_median=3)
  _, names, splits = demo_splits(d, spec)
  train, val = splits["train"], splits["val"]
  cfg = configs.tiny()
  cfg.train.epochs, cfg.train.checkpoint_every_seconds, cfg.data.num_buckets = 3, 0.0, 1
  cfg.model.unimodal_heads = cfg.model.absent_embedding = True
  cfg.optim.modality_dropout, cfg.optim.unimodal_loss_weight = 0.3, 0.5
  exp = experiment.Experiment.create(cfg, names, train=train, val=val, log=lambda m: None)

  def train_in(model_dir, epochs):
    c = experiment.resolve_dims(exp.config, train)
    c.train.epochs = epochs
    e = dataclasses.replace(exp, config=c, model_dir=str(model_dir))
    return e, training.train_run(e, "gated", 0, train, val)
  e, result = train_in(d / "whole", 3)
  return dict(exp=e, result=result, train_in=train_in, dir=d, val=val, names=names)


def test_modality_dropout_and_the_floor_resume_exactly(robust_run, tmp_path):
  strip = lambda h: {k: v for k, v in h.items() if k not in ("epoch_seconds",
                                                              "samples_per_second")}
  train_in = robust_run["train_in"]
  train_in(tmp_path, 1)
  _, resumed = train_in(tmp_path, 3)
  assert resumed.resumed_from_epoch == 1   # from the one-epoch run's latest, not from scratch
  whole = robust_run["result"]
  assert strip(resumed.history) == strip(whole.history)
  assert resumed.best.metrics["floor_blend"] == whole.best.metrics["floor_blend"]
  from fusion_jax import runs  # pylint: disable=import-outside-toplevel
  run = runs.load_run(str(robust_run["dir"] / "whole"), "gated", 0)
  # the best checkpoint holds the blend its epoch chose on validation
  np.testing.assert_allclose(run.params["floor_blend"], whole.best.metrics["floor_blend"])


PORTABLE = """
import importlib.util, json, sys
sys.path[:0] = [sys.argv[1]]       # -I -S: no site-packages, only the linked packages
missing = [m for m in ("flax", "optax", "orbax", "fusion_jax") if importlib.util.find_spec(m)]
assert not missing, f"importable: {missing}"
import numpy as np
from jax import export
d = sys.argv[2]
exported = export.deserialize(bytearray(open(d + "/model.jaxexport", "rb").read()))
x = np.load(d + "/inputs.npz")
out = {}
for key in sorted({k.rsplit("/", 1)[0] for k in x.files}):
  got = exported.call(*(x[f"{key}/{n}"] for n in ("speech", "speech_mask", "text", "text_mask")))
  out[key + "/probabilities"] = np.asarray(got["probabilities"])
np.savez(d + "/outputs.npz", **out)
print("PORTABLE_OK", len(out))
"""
# What an application needs to run the export: `pip install jax flatbuffers` (jax brings
# jaxlib, ml_dtypes, numpy, opt_einsum and scipy; flatbuffers reads jax.export's format).
PORTABLE_PACKAGES = ("jax", "jaxlib", "ml_dtypes", "numpy", "numpy.libs", "opt_einsum",
                     "scipy", "scipy.libs", "flatbuffers")


def test_the_export_runs_at_any_batch_and_length_with_jax_and_flatbuffers_only(
    robust_run, tmp_path):
  """Two batch sizes × three lengths through the symbolic dimensions, in a Python that has
  only what `pip install jax flatbuffers` installs: the unexported function's numbers."""
  from fusion_jax import predict, runs  # pylint: disable=import-outside-toplevel
  member = runs.load_run(str(robust_run["dir"] / "whole"), "gated", 0)
  predictor = predict.Predictor([member], robust_run["exp"])
  predictor.export(str(tmp_path / "ex"), platforms=("cpu",))
  fn = jax.jit(predictor.inference_function())
  rng = np.random.default_rng(5)
  inputs, want = {}, {}
  for b in (1, 3):
    for t, l in ((5, 2), (17, 6), (40, 11)):
      key = f"b{b}_t{t}_l{l}"
      sm = (np.arange(t)[None] < rng.integers(1, t + 1, (b, 1))).astype(np.float32)
      tm = (np.arange(l)[None] < rng.integers(1, l + 1, (b, 1))).astype(np.float32)
      args = (rng.standard_normal((b, t, 8)).astype(np.float32), sm,
              rng.standard_normal((b, l, 8)).astype(np.float32), tm)
      inputs.update({f"{key}/{n}": a for n, a in zip(
          ("speech", "speech_mask", "text", "text_mask"), args)})
      want[key] = np.asarray(fn(*args)["probabilities"])
  np.savez(tmp_path / "ex" / "inputs.npz", **inputs)
  site = os.path.dirname(os.path.dirname(np.__file__))
  only = tmp_path / "site"
  only.mkdir()
  for name in PORTABLE_PACKAGES:
    if os.path.exists(os.path.join(site, name)):
      os.symlink(os.path.join(site, name), only / name)
  proc = subprocess.run([sys.executable, "-I", "-S", "-c", PORTABLE, str(only),
                         str(tmp_path / "ex")], capture_output=True, text=True, timeout=300,
                        cwd=str(tmp_path))
  assert "PORTABLE_OK 6" in proc.stdout, proc.stderr[-3000:]
  got = np.load(tmp_path / "ex" / "outputs.npz")
  for key, probs in want.items():
    assert probs.shape == (int(key[1]), len(robust_run["names"]))
    np.testing.assert_allclose(got[key + "/probabilities"], probs, atol=1e-5, err_msg=key)


def test_prediction_and_export_take_an_absent_modality(robust_run, tmp_path):
  from fusion_jax import predict, runs  # pylint: disable=import-outside-toplevel
  exp, val = robust_run["exp"], robust_run["val"]
  member = runs.load_run(str(robust_run["dir"] / "whole"), "gated", 0)
  predictor = predict.Predictor([member], exp)
  n = 6
  speech = [val.speech[i] if i != 1 else None for i in range(n)]     # row 1: text only
  text = [val.text[i] if i not in (0, 2) else None for i in range(n)]  # rows 0, 2: speech only
  preds = predictor.predict_features(speech, text, [f"u{i}" for i in range(n)])
  assert [p.modalities for p in preds] == ["speech", "text", "speech", "speech+text",
                                           "speech+text", "speech+text"]
  # the same numbers as the model itself with empty masks
  sx, sm = data.pad([s if s is not None else np.zeros((0, 8), np.float32)
                             for s in speech])
  tx, tm = data.pad([t if t is not None else np.zeros((0, 8), np.float32)
                             for t in text])
  model = models.build_model(member.model_config, "gated", len(robust_run["names"]))
  logits, aux = model.apply({"params": member.params}, sx, sm, tx, tm)
  probs = np.asarray(jax.nn.softmax(logits, -1))
  got = np.array([[p.probabilities[c] for c in robust_run["names"]] for p in preds])
  np.testing.assert_allclose(got, probs, atol=1e-5)
  assert preds[0].relied_on["floor_text"] == 0.0 and preds[1].relied_on["floor_speech"] == 0.0
  # the exported function: an all-zero mask is an absent modality there too
  out = predictor.export(str(tmp_path / "ex"), platforms=("cpu",))
  from jax import export  # pylint: disable=import-outside-toplevel
  exported = export.deserialize(bytearray(open(out["path"], "rb").read()))
  got = exported.call(sx, sm, tx, tm)
  np.testing.assert_allclose(np.asarray(got["probabilities"]), probs, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got["present"]), [[1, 0], [0, 1], [1, 0]] +
                                [[1, 1]] * 3)   # which modalities each row had
  # a row with neither is reported (present [0, 0]) and not scored (NaN), not given a class
  none = exported.call(sx, np.zeros_like(sm), tx, tm)   # rows 0 and 2 had no text either
  scored = np.isfinite(np.asarray(none["probabilities"])).all(-1)
  assert list(scored) == [False, True, False, True, True, True]
  np.testing.assert_array_equal(np.asarray(none["present"])[[0, 2]], [[0, 0], [0, 0]])
  # model.json, written last, names the program's checksum and no training path
  spec = io_utils.verify_set(tmp_path / "ex", "model.json")
  assert spec["files"]["model.jaxexport"]["sha256"] == io_utils.sha256_file(out["path"])
  assert spec["members"] == ["gated/seed_0"] and str(robust_run["dir"]) not in json.dumps(spec)
  # killed between the program and its description: no model.json, never a stale one
  real, calls = os.replace, []
  def dies_after_first(src, dst):
    calls.append(dst)
    real(src, dst)
    raise KeyboardInterrupt("killed")
  with mock.patch.object(os, "replace", dies_after_first), pytest.raises(KeyboardInterrupt):
    predictor.export(str(tmp_path / "ex"), platforms=("cpu",))
  assert not (tmp_path / "ex" / "model.json").exists()
  with pytest.raises(data.DataError, match="model.json: missing"):
    io_utils.verify_set(tmp_path / "ex", "model.json")


def test_absence_survives_bucketing_and_placement_on_the_mesh():
  from fusion_jax import sharding  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(8)
  speech = [rng.standard_normal((n, 4)).astype(np.float32) for n in (5, 0, 9)]
  text = [rng.standard_normal((n, 3)).astype(np.float32) for n in (0, 2, 3)]
  split = data.Split("s", speech, text, np.array([0, 1, 2]))
  assert split.absent("speech") == 1 and split.absent("text") == 1
  shapes = data.plan_shapes([split], num_buckets=2, multiple=4)
  batches = list(data.iterate_batches(split, shapes, 4, shuffle=False))
  rows = {}
  for b in batches:
    for j, i in enumerate(b["index"]):
      if b["example_mask"][j] > 0:
        rows[int(i)] = (b["speech_mask"][j].sum(), b["text_mask"][j].sum())
  assert rows == {0: (5, 0), 1: (0, 2), 2: (9, 3)}
  # an all-absent modality still gets one padded frame per row, all masked
  none = data.Split("n", speech, [np.zeros((0, 3), np.float32)] * 3, np.array([0, 1, 2]))
  assert data.plan_shapes([none], num_buckets=1, multiple=4).text_length == 4
  placed = sharding.shard_batch({k: v for k, v in batches[0].items() if k != "index"},
                                sharding.make_mesh(1))
  np.testing.assert_array_equal(np.asarray(placed["text_mask"]), batches[0]["text_mask"])


def test_a_prediction_manifest_row_may_lack_audio_but_not_everything(tmp_path):
  from fusion_jax import predict  # pylint: disable=import-outside-toplevel
  m = tmp_path / "m.csv"
  m.write_text("path,transcript\na.wav,\n,only words\n")
  paths, texts = predict.read_inputs([str(m)])
  assert paths == [str(tmp_path / "a.wav"), ""] and texts == [None, "only words"]
  m.write_text("path,transcript\na.wav,hi\n,\n")
  with pytest.raises(data.DataError, match=r"m.csv, field 'path', row 3: neither audio nor a "
                     r"transcript"):
    predict.read_inputs([str(m)])


def test_a_unimodal_run_refuses_inputs_without_its_modality_by_name():
  from fusion_jax import experiment, predict, runs  # pylint: disable=import-outside-toplevel
  names = ["sad", "happy"]
  exp = experiment.Experiment.create(configs.tiny(), names, log=lambda m: None)
  for variant, has_speech, has_text, pattern in (
      ("text_only", [True, True, True], [True, False, True],
       r"text_only reads text only: 1 of 3 inputs have no transcript \(give a manifest's "
       r"'transcript' column, or --transcribe\)"),
      ("speech_only", [False, True, True], [True, True, True],
       r"speech_only reads speech only: 1 of 3 inputs have no audio$")):
    member = runs.Run(variant, "0", {}, TINY, 0.0, "run", names)
    with pytest.raises(ValueError, match=pattern):
      predict.Predictor([member], exp).check_modalities(has_speech, has_text)
  logs = []
  fused = predict.Predictor([runs.Run("gated", "0", {}, TINY, 0.0, "run", names)],
                            dataclasses.replace(exp, log=logs.append))
  fused.check_modalities([True, True], [False, True])   # a fusion run takes it, and says so
  assert logs == ["1 of 2 inputs have no transcript: gated predicts them from speech alone "
                  "(this run was not built for a missing modality, model.unimodal_heads: "
                  "expect lower accuracy than a unimodal model's)"]
