"""Accuracy levers beyond frozen last layers: stacks of hidden states (float16 files), the
learned layer mix, fine-tuned top layers of a pretrained encoder, dialogue context,
class-weighted and focal losses; and that every option survives checkpoints and resume."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fusion_jax import configs, experiment, optim as optim_lib, runs, steps, training
from fusion_jax.data import Split, load_split
from fusion_jax import features
from fusion_jax.encoders import bert
from fusion_jax.features import corpora, extractors
from fusion_jax.models import encoders, model as model_lib
from tests.features_test import VOCAB, random_bert

TINY = "tiny_bert_test"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """A random 2-layer, 16-d BERT folder registered as the pretrained encoder ``TINY``."""
  d, sd, cfg = random_bert(tmp_path_factory.mktemp("bert"))
  encoders.register(TINY, lambda: encoders.bert_encoder(d))
  return d, sd, cfg


# ------------------------------------------------------------------ stacks of hidden states
def test_all_hidden_states_are_stacked_float16_and_set_the_models_layers(tiny_bert, tmp_path):
  d, sd, cfg = tiny_bert
  frame = pd.DataFrame(dict(transcript=["hello world!", "the cafe", "he, the cafe!"],
                            label=["a", "b", "a"]))
  manifest = features.manifest_from_frame(frame, str(tmp_path / "m.csv"))
  last = extractors.MiniLMExtractor(model_dir=d)
  every = extractors.MiniLMExtractor(model_dir=d, hidden_states="all")
  assert (every.stack, every.dim) == (cfg.num_hidden_layers + 1, 3 * cfg.hidden_size)
  assert "hidden_states" not in last.options()          # earlier files keep their fingerprint
  out = features.extract_aligned(manifest, {"text": (every, str(tmp_path / "t.npz"))},
                                str(tmp_path / "split.csv"), progress=False, log=lambda m: None)
  split = load_split("train", out.paths["text"], out.paths["text"], out.split_csv)
  assert split.text[0].dtype == np.float16 and split.preprocessing["text"]["stack"] == 3
  assert split.preprocessing["text"]["extractor"]["options"]["hidden_states"] == "all"
  # the last state of the stack is the last-layer feature; state 0 the embeddings' output
  for text, got in zip(frame.transcript, split.text):
    ids = np.array([every.encoder.tokenizer.encode(text)])
    ref = bert.reference_forward(sd, cfg, ids, np.ones_like(ids))[0]
    np.testing.assert_allclose(got[:, -cfg.hidden_size:], ref, atol=2e-2)   # float16
    np.testing.assert_allclose(got[:, -cfg.hidden_size:], last.compute([text])[0], atol=2e-2)
  cfg_r = experiment.resolve_dims(configs.tiny(), split)
  assert (cfg_r.model.text_layers, cfg_r.model.text_dim) == (3, 3 * cfg.hidden_size)


def test_layer_mix_weights_sum_to_one_receive_gradients_and_match_numpy():
  mix = encoders.LayerMix(3)
  x = np.random.default_rng(0).standard_normal((2, 5, 3 * 4)).astype(np.float32)
  params = {"params": {"logits": jnp.array([0.3, -1.0, 0.5])}}
  out, w = mix.apply(params, x)
  want_w = np.exp([0.3, -1.0, 0.5]) / np.exp([0.3, -1.0, 0.5]).sum()
  np.testing.assert_allclose(w, want_w, rtol=1e-6)
  assert abs(float(w.sum()) - 1.0) < 1e-6
  np.testing.assert_allclose(out, np.einsum("btsd,s->btd", x.reshape(2, 5, 3, 4), want_w),
                             rtol=1e-5, atol=1e-6)
  # inside the model: the weights reach the loss, and start equal
  cfg = dataclasses.replace(model_lib.ModelConfig.from_config(configs.tiny().model),
                            speech_dim=12, speech_layers=3)
  model = model_lib.build_model(cfg, "speech_only", 4)
  p = model_lib.init_params(model, jax.random.key(0))
  np.testing.assert_array_equal(p["speech_layer_mix"]["logits"], np.zeros(3))
  inputs = model_lib.dummy_inputs(cfg, speech_len=5)
  inputs = (jnp.asarray(x[:, :, :12]),) + inputs[1:2] + (inputs[2][:2],) + (inputs[3][:2],)
  def loss(p):
    logits, aux = model.apply({"params": p}, *inputs)
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), aux
  grads, aux = jax.jit(jax.grad(loss, has_aux=True))(p)
  np.testing.assert_allclose(aux["temporal/layer_weights"].sum(-1), 1.0, rtol=1e-6)
  assert np.abs(np.asarray(grads["speech_layer_mix"]["logits"])).max() > 1e-6
  assert model_lib.layer_weights(p) == {"speech": pytest.approx([1 / 3] * 3)}


# ------------------------------------------------------------------ fine-tuning
def _stacks(enc, texts):
  return [enc.encode([t], all_layers=True)[0] for t in texts]


def test_finetuned_top_equals_the_frozen_encoder_at_step_zero_then_moves(tiny_bert):
  d, _, cfg = tiny_bert
  enc = bert.BertFeatureEncoder.from_directory(d)
  texts = ["hello world!", "the cafe, the unaffable cafe", "he"]
  stacks = _stacks(enc, texts)
  last = enc.encode(texts)
  n = max(s.shape[0] for s in stacks)
  x = np.zeros((3, n, stacks[0].shape[1]), np.float32)
  m = np.zeros((3, n), np.float32)
  for i, s in enumerate(stacks):
    x[i, :len(s)], m[i, :len(s)] = s, 1
  for k in (1, 2):   # the top layer, or every layer from the embeddings' output
    top = encoders.FineTunedTop(TINY, k, 3)
    p = top.init(jax.random.key(0), x, m, deterministic=True)["params"]
    p = encoders.load_pretrained({"text_finetune": p}, TINY, k)["text_finetune"]
    y = np.asarray(jax.jit(functools.partial(top.apply, deterministic=True))({"params": p}, x, m))
    for i, want in enumerate(last):
      np.testing.assert_allclose(y[i, :len(want)], want, atol=1e-4)
      assert not y[i, len(want):].any()
  with pytest.raises(ValueError, match="needs its 3 hidden states"):
    encoders.FineTunedTop(TINY, 1, 1).init(jax.random.key(0), x[..., :16], m,
                                           deterministic=True)
  with pytest.raises(ValueError, match="cannot fine-tune 3"):
    encoders.FineTunedTop(TINY, 3, 3).init(jax.random.key(0), x, m, deterministic=True)

  # In the model: pretrained weights at init, moved by one step at their own (warming) rate.
  c = configs.tiny()
  c.model.update(text_dim=x.shape[2], text_layers=3, text_finetune_layers=1, text_encoder=TINY)
  c.optim.finetune_learning_rate, c.optim.finetune_warmup_steps = 1e-3, 10
  model = model_lib.build_model(c.model, "text_only", 2)
  opt = optim_lib.make_optimizer(c.optim, finetune=True)
  state = steps.init_state(model, opt, jax.random.key(1), c.optim.learning_rate)
  pre = encoders.get(TINY).top_params(1)["layer_1"]
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         state.params["text_finetune"]["layer_1"], pre)
  batch = dict(speech=jnp.zeros((3, 1, c.model.speech_dim)), speech_mask=jnp.ones((3, 1)),
               text=jnp.asarray(x), text_mask=jnp.asarray(m), label=jnp.array([0, 1, 0]),
               example_mask=jnp.ones(3))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  new, _ = steps.train_step(state, steps.zero_metrics(), batch, jax.random.key(2), model=model,
                            optimizer=opt, label_smoothing=0.1)
  delta = lambda scope: max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(
      jax.tree_util.tree_leaves(new.params[scope]),
      jax.tree_util.tree_leaves(before[scope])))
  moved, head = delta("text_finetune"), delta("contextual_block")
  assert moved > 0 and head > 0
  # Adam's first step moves each weight by ~its rate: 1e-3 / 10 (warm-up) vs 3e-3
  assert moved == pytest.approx(1e-4, rel=0.05) and head == pytest.approx(3e-3, rel=0.05)


# ------------------------------------------------------------------ dialogue context
def test_dialogue_context_holds_only_earlier_lines_of_the_same_dialogue():
  rng = np.random.default_rng(0)
  rows = [dict(speaker=f"dia{d}", turn=t, character=f"P{(d + t) % 3}", transcript=f"d{d}t{t}")
          for d in range(4) for t in range(int(rng.integers(1, 7)))]
  frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
  for k in (0, 1, 3):
    ctx = corpora.dialogue_context(frame, k)
    for r, row in frame.iterrows():
      parts = [p for p in ctx[r].split(" | ") if p]
      d = int(row.speaker[3:])
      want = [f"P{(d + t) % 3}: d{d}t{t}" for t in range(max(0, row.turn - k), row.turn)]
      assert parts == want, (k, row.to_dict(), ctx[r])
      for p in parts:   # never a later line, never another dialogue
        d, t = p.split(": ")[1][1:].split("t")
        assert f"dia{d}" == row.speaker and int(t) < row.turn
  with pytest.raises(ValueError, match="0 or more"):
    corpora.dialogue_context(frame, -1)


def test_encode_pair_keeps_the_line_and_the_nearest_context():
  from tests.features_test import make_tokenizer
  tok = make_tokenizer(max_length=10)
  ids, types = tok.encode_pair("hello world", "the cafe , he , the cafe")
  v = {t: i for i, t in enumerate(VOCAB)}
  # [CLS] hello world [SEP] + the last 5 context pieces + [SEP]: the oldest pieces go first
  assert ids == [v["[CLS]"], v["hello"], v["world"], v["[SEP]"], v[","], v["he"], v[","],
                 v["the"], v["cafe"], v["[SEP]"]]
  assert types == [0] * 4 + [1] * 6
  short, _ = tok.encode_pair("hello", "he")
  assert short == [v["[CLS]"], v["hello"], v["[SEP]"], v["he"], v["[SEP]"]]


# ------------------------------------------------------------------ losses
def test_class_weighted_and_focal_losses_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 4)).astype(np.float32)
  labels = np.array([0, 1, 1, 3, 3, 3])
  mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
  w = optim_lib.balanced_class_weights(labels[:5], 4)
  np.testing.assert_allclose(w, [5 / 4, 5 / 8, 0.0, 5 / 8])
  loss = optim_lib.Loss(0.1, tuple(w), 2.0)
  mean, per = loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
  x = logits.astype(np.float64)
  logp = x - np.log(np.exp(x).sum(1, keepdims=True))
  target = np.full((6, 4), 0.1 / 4)
  target[np.arange(6), labels] += 0.9
  ce = -(target * logp).sum(1)
  focal = ce * (1 - np.exp(logp[np.arange(6), labels])) ** 2
  np.testing.assert_allclose(per, focal, rtol=1e-5)
  cw = w[labels] * mask
  np.testing.assert_allclose(float(mean), (focal * cw).sum() / cw.sum(), rtol=1e-5)
  # the plain loss is the masked mean of cross-entropy
  plain, _ = optim_lib.Loss(0.1)(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
  np.testing.assert_allclose(float(plain), (ce * mask).sum() / mask.sum(), rtol=1e-5)


def test_class_weights_come_from_training_labels_only_and_bad_ones_fail():
  c = configs.tiny()
  c.optim.class_weights = "balanced"
  train = Split("train", [np.zeros((2, 4), np.float32)] * 4,
                [np.zeros((1, 4), np.float32)] * 4, np.array([0, 0, 0, 1]))
  got = experiment.resolve_class_weights(c, train, 2).optim.class_weight_values
  np.testing.assert_allclose([float(x) for x in got.split(",")], [4 / 6, 4 / 2], rtol=1e-5)
  c.optim.class_weights = "1,2,3"
  with pytest.raises(ValueError, match="3 weights for 2 classes"):
    experiment.resolve_class_weights(c, train, 2)
  c.optim.class_weights = "heavy"
  with pytest.raises(ValueError, match="config.optim.class_weights"):
    configs.validate(c)
  c.optim.class_weights = "balanced"
  c.optim.class_weight_values = ""
  with pytest.raises(ValueError, match="resolved from the training labels"):
    optim_lib.Loss.from_config(c.optim)


# ------------------------------------------------------------------ checkpoints and resume
class _Stop(Exception):
  pass


def _splits(tiny_bert):
  d, _, _ = tiny_bert
  enc = bert.BertFeatureEncoder.from_directory(d)
  rng = np.random.default_rng(0)
  words = ["hello", "world", "the", "cafe", "he", "!"]
  def make(name, n):
    labels = np.arange(n) % 3
    texts = [" ".join(rng.choice(words, int(rng.integers(1, 5)))) + " " + words[k]
             for k in labels]
    speech = [(rng.standard_normal((int(rng.integers(3, 9)), 2 * 4)) + labels[i]).astype(
        np.float16) for i in range(n)]
    text = [s.astype(np.float16) for s in _stacks(enc, texts)]
    prep = {"speech": {"stack": 2}, "text": {"stack": 3, "extractor": {"name": TINY}}}
    return Split(name, speech, text, labels, preprocessing=prep)
  return make("train", 24), make("val", 9)


def test_options_round_trip_through_checkpoints_and_resume_exactly(tiny_bert, tmp_path):
  train, val = _splits(tiny_bert)
  c = configs.tiny()
  c.train.epochs, c.train.checkpoint_every_seconds = 2, 0.0
  c.model.text_finetune_layers = 1
  c.optim.class_weights, c.optim.focal_gamma = "balanced", 1.0
  c.optim.finetune_warmup_steps = 4
  exp = experiment.Experiment.create(c, ["a", "b", "c"], train=train, val=val,
                                     model_dir=str(tmp_path / "ref"), log=lambda m: None)
  assert (exp.config.model.speech_layers, exp.config.model.text_layers) == (2, 3)
  assert exp.config.model.text_encoder == TINY
  ref = training.train_run(exp, "gated", 0, train, val)

  def stop(epoch):
    if epoch == 1:
      raise _Stop()
  cut = exp.with_dirs(str(tmp_path / "cut"), None)
  with pytest.raises(_Stop):
    training.train_run(cut, "gated", 0, train, val, after_epoch=stop)
  resumed = training.train_run(cut, "gated", 0, train, val)
  assert resumed.resumed_from_epoch == 1
  assert resumed.history["train_loss"] == ref.history["train_loss"]
  assert resumed.history["val_acc"] == ref.history["val_acc"]
  got, want = (runs.load_run(str(tmp_path / d), "gated", 0) for d in ("cut", "ref"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, got.params, want.params)
  mc = got.model_config
  assert (mc.speech_layers, mc.text_layers, mc.text_finetune_layers, mc.text_encoder) == (
      2, 3, 1, TINY)
  assert set(got.params) >= {"speech_layer_mix", "text_finetune"}
  w = model_lib.layer_weights(got.params)
  assert set(w) == {"speech"} and abs(sum(w["speech"]) - 1) < 1e-6
  assert w["speech"] != pytest.approx([0.5, 0.5])   # learned
  # another loss option is another run
  c2 = experiment.resolve_class_weights(exp.config, train, 3)
  c2.optim.focal_gamma = 2.0
  with pytest.raises(runs.RunMismatch, match="focal_gamma"):
    training.train_run(dataclasses.replace(exp, config=c2), "gated", 0, train, val)


def test_cross_validation_table_reports_mean_layer_weights():
  from fusion_jax import reports
  cell = lambda x: dict(mean=x, std=0.01, n=2)
  summary = dict(variants={"weighted": dict(
      val_acc=cell(0.7), accuracy=cell(0.6), uar=cell(0.6), macro_f1=cell(0.6),
      weighted_f1=cell(0.6), layer_weights={"speech": [0.1, 0.2, 0.7]})})
  text = reports.cv_table(summary)
  assert "Learned layer weights" in text
  assert "weighted             speech  0.100 0.200 0.700" in text


def test_fine_tuning_without_hidden_states_and_a_bad_stack_fail_clearly(tmp_path):
  from fusion_jax.data import DataError, load_features
  c = configs.tiny()
  c.model.text_finetune_layers = 1
  plain = Split("train", [np.zeros((2, 4), np.float32)] * 2, [np.zeros((3, 4), np.float32)] * 2,
                np.array([0, 1]), sources={"text": "t.npz"})
  with pytest.raises(DataError, match=r"t\.npz.*fine-tuning the text encoder.*every hidden "
                     r"state.*text_hidden_states=all"):
    experiment.resolve_dims(c, plain)
  path = tmp_path / "bad.npz"
  np.savez(path, features=np.zeros((3, 4), np.float16), lengths=np.array([3]),
           stack=np.array(3))
  with pytest.raises(DataError, match=r"bad\.npz.*stack 3 does not divide the feature width 4"):
    load_features(path)
