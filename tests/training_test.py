"""Training: optimisation against PyTorch, plateau, checkpoints, resume, determinism, traces."""

import dataclasses
import functools
import glob
import json
import os
import subprocess
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusion_jax import (benchmark, checkpoint, configs, data, experiment, hooks, loop, models,
                        optim as optim_lib, runs, steps, training)
from tests.conftest import FIXTURES, TORCH_SKIP, demo_splits, torch_python

REF = np.load(os.path.join(FIXTURES, "parity.npz"))


def test_adam_with_l2_matches_torch():
  cfg = configs.default().optim
  cfg.unlock()
  opt = optim_lib.make_optimizer(cfg)
  p = jnp.asarray(REF["optim/p0"])
  state = opt.init(p)
  for g in REF["optim/grads"]:
    updates, state = opt.update(jnp.asarray(g), state, p)
    p = p - 1e-3 * updates
  np.testing.assert_allclose(p, REF["optim/p_final"], rtol=1e-6, atol=1e-7)


def test_label_smoothed_loss_matches_torch():
  got = optim_lib.smoothed_cross_entropy(jnp.asarray(REF["loss/logits"]),
                                        jnp.asarray(REF["loss/labels"]), 0.1)
  np.testing.assert_allclose(got, REF["loss/per_example"], rtol=1e-6)


def test_plateau_matches_torch_reduce_lr_on_plateau():
  plateau = optim_lib.Plateau(lr=1e-4, factor=0.5, patience=3)
  lrs = [plateau.lr]
  for m in REF["plateau/metric"]:
    lrs.append(plateau.step(float(m)))
  np.testing.assert_allclose(lrs, REF["plateau/lr"], rtol=1e-12)


def test_plateau_halves_after_patience_and_never_otherwise():
  rising = optim_lib.Plateau(lr=1.0, patience=3)
  assert all(rising.step(0.1 * i) == 1.0 for i in range(1, 30))
  flat = optim_lib.Plateau(lr=1.0, patience=3)
  lrs = [flat.step(0.5) for _ in range(13)]
  # epoch 1 improves on -inf; epochs 2-5 are 4 bad epochs (> patience 3): halve at 5
  assert lrs[:4] == [1.0] * 4 and lrs[4] == 0.5 and lrs[5:8] == [0.5] * 3 and lrs[8] == 0.25
  state = flat.to_json()
  again = optim_lib.Plateau(lr=9.0)
  again.load_json(state)
  assert again.step(0.5) == flat.step(0.5)


# Inside the relative threshold (1e-4 of 0.5 is 5e-5): 0.50003 is no improvement, 0.50008 is
# one, and 0.50009 after it is not. What torch's ReduceLROnPlateau(mode="max", patience=1,
# threshold=1e-4) gives (checked in PyTorch by the next test when torch is there); no
# threshold, 1e-3, or an absolute 1e-4 each give another sequence.
INSIDE_THRESHOLD = [0.5, 0.50003, 0.50003, 0.50008, 0.50009, 0.50009]
INSIDE_THRESHOLD_LRS = [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_plateau_improvement_is_relative_to_the_threshold():
  plateau = optim_lib.Plateau(lr=1.0, patience=1)
  assert [plateau.step(m) for m in INSIDE_THRESHOLD] == INSIDE_THRESHOLD_LRS


TORCH_PLATEAU = """
import sys, torch
p = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([p], lr=1.0)
s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1,
                                               threshold=1e-4)
out = []
for m in sys.argv[1:]:
  s.step(float(m))
  out.append(opt.param_groups[0]["lr"])
print(*out)
"""


@pytest.mark.skipif(torch_python() is None, reason=TORCH_SKIP)
def test_the_threshold_sequence_is_what_pytorch_gives():
  proc = subprocess.run([torch_python(), "-c", TORCH_PLATEAU, *map(repr, INSIDE_THRESHOLD)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert [float(x) for x in proc.stdout.split()] == INSIDE_THRESHOLD_LRS


# ------------------------------------------------------------ small runs
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  d = tmp_path_factory.mktemp("tinydata")
  spec = data.DemoSpec(sizes=(("train", 40), ("val", 21), ("test", 21)), speech_dim=16,
                       text_dim=16, speech_length=(8, 40), text_length=(2, 9), strength=0.3,
                       speech_median=20, text_median=5)
  p, names, splits = demo_splits(d, spec)
  return dict(paths=p, dir=str(d), names=names, **splits)


def _cfg(epochs=4, every=0.0):
  cfg = configs.tiny()
  cfg.train.epochs = epochs
  cfg.train.checkpoint_every_seconds = every
  return cfg


def _exp(tiny_data, model_dir, cfg=None, exp=None):
  """An experiment on the tiny data; ``exp`` shares its compiled steps (like one binary run)."""
  cfg = cfg or _cfg()
  if exp is not None:
    return dataclasses.replace(exp, config=experiment.resolve_dims(cfg, tiny_data["train"]),
                               model_dir=str(model_dir))
  return experiment.Experiment.create(cfg, tiny_data["names"], train=tiny_data["train"],
                                      val=tiny_data["val"], model_dir=str(model_dir),
                                      log=lambda m: None)


@pytest.fixture(scope="module")
def shared(tiny_data, tmp_path_factory):
  """One experiment whose compiled steps every run below reuses."""
  return _exp(tiny_data, tmp_path_factory.mktemp("shared"))


def _run(tiny_data, exp, model_dir, seed=0, epochs=4, every=0.0, after_epoch=None):
  return training.train_run(_exp(tiny_data, model_dir, _cfg(epochs, every), exp), "gated",
                            seed, tiny_data["train"], tiny_data["val"], after_epoch=after_epoch)


@pytest.fixture(scope="module")
def reference_run(tiny_data, shared, tmp_path_factory):
  d = tmp_path_factory.mktemp("ref")
  return _run(tiny_data, shared, d), d


def _m(history):
  """The metric part of a history (timings differ from run to run)."""
  return {k: v for k, v in history.items() if k not in ("epoch_seconds", "samples_per_second")}


def _params(model_dir):
  run = runs.load_run(str(model_dir), "gated", 0)
  return run.params, run


def test_same_seed_same_metrics(tiny_data, shared, reference_run, tmp_path):
  ref, _ = reference_run
  again = _run(tiny_data, shared, tmp_path)
  assert _m(again.history) == _m(ref.history)
  other = _run(tiny_data, shared, tmp_path / "s1", seed=1)
  assert other.history["train_loss"] != ref.history["train_loss"]


class _Interrupt(Exception):
  pass


@pytest.mark.parametrize("every", [0.0, 1e9])
def test_interrupted_run_resumes_to_the_same_result(tiny_data, shared, reference_run,
                                                    tmp_path, every):
  """Killed after epoch 2 (every=0: latest saved each epoch; 1e9: only at the end)."""
  ref, ref_dir = reference_run

  def stop(epoch):
    if epoch == 2:
      raise _Interrupt()

  with pytest.raises(_Interrupt):
    _run(tiny_data, shared, tmp_path, every=every, after_epoch=stop)
  resumed = _run(tiny_data, shared, tmp_path, every=every)
  assert resumed.resumed_from_epoch == (2 if every == 0.0 else 0)
  assert _m(resumed.history) == _m(ref.history)
  assert resumed.best.epoch == ref.best.epoch
  np.testing.assert_array_equal(resumed.best.confusion, ref.best.confusion)
  got, _ = _params(tmp_path)
  want, _ = _params(ref_dir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
  # A finished run is not retrained.
  done = _run(tiny_data, shared, tmp_path, every=every)
  assert done.resumed_from_epoch == 4 and _m(done.history) == _m(ref.history)


def test_best_checkpoint_round_trip(tiny_data, shared, reference_run):
  ref, ref_dir = reference_run
  params, run = _params(ref_dir)
  assert run.state.best.epoch == ref.best.epoch and run.variant == "gated"
  assert run.class_names == tiny_data["names"]
  assert run.model_config.speech_dim == 16
  np.testing.assert_array_equal(run.state.best.confusion, ref.best.confusion)
  assert run.state.to_json() == runs.RunState.from_json(run.state.to_json(),
                                                        optim_lib.Plateau(lr=0.0)).to_json()
  stats = shared.evaluate_split(shared.steps("gated", run.model_config), params,
                                tiny_data["val"], shared.shapes)
  assert stats["accuracy"] == pytest.approx(ref.best.val_acc)
  np.testing.assert_array_equal(stats["confusion"], ref.best.confusion)


def test_orbax_save_restore_equality(tmp_path):
  ck = checkpoint.RunCheckpoints(str(tmp_path))
  tree = {"a": jnp.arange(5.0), "b": {"c": jnp.ones((2, 3), jnp.bfloat16)},
          "step": jnp.array(7, jnp.int32)}
  assert ck.save("latest", 3, tree, {"x": [1, 2]})
  assert not ck.save("latest", 3, tree, {"x": [1, 2]})  # existing step: skipped
  state, meta = ck.restore("latest", checkpoint.abstract_like(tree))
  jax.tree_util.tree_map(np.testing.assert_array_equal, state, tree)
  assert meta == {"x": [1, 2], "checksum": checkpoint.tree_checksum(tree)}
  assert state["b"]["c"].dtype == jnp.bfloat16
  assert ck.restore("best", checkpoint.abstract_like(tree)) is None
  assert not [f for f in os.listdir(tmp_path / "latest") if "tmp" in f]
  ck.close()


def test_background_saves_are_ordered_snapshotted_and_their_errors_surface(tmp_path):
  """Training's saves: queued on the run's writer thread in order; what a later call reads
  is what was queued (the metadata as it was when queued); a failed write is raised by
  the next call that waits, and close() finishes the queue."""
  ck = checkpoint.RunCheckpoints(str(tmp_path))
  trees = [{"w": jnp.full((3,), float(s))} for s in range(4)]
  meta = {"history": [0]}
  for s in (1, 2, 3):
    assert ck.save("latest", s, trees[s], meta, background=True)
    meta["history"].append(s)   # training goes on changing its records
  assert ck.steps("latest") == [3, 2]   # (two kept) — waits for the queue
  state, got = ck.restore("latest", checkpoint.abstract_like(trees[0]))
  np.testing.assert_array_equal(state["w"], trees[3]["w"])
  assert got["history"] == [0, 1, 2]   # as queued, not as changed afterwards
  ck.save("best", 5, {"w": object()}, {}, background=True)   # cannot be hashed or written
  with pytest.raises(ValueError, match="Unsupported type"):
    ck.wait()
  ck.wait()   # reported once; the queue goes on
  ck.save("best", 6, trees[1], {}, background=True)
  ck.close()
  reopened = checkpoint.RunCheckpoints(str(tmp_path))
  assert reopened.latest_step("best") == 6 and reopened.steps("latest") == [3, 2]
  reopened.close()


def test_resume_refuses_a_different_config(tiny_data, reference_run):
  _, ref_dir = reference_run
  cfg = _cfg()
  cfg.optim.learning_rate = 0.5
  with pytest.raises(runs.RunMismatch, match="holds another run than this one: "
                     r"fingerprint.optim.learning_rate: 0.003 → 0.5"):
    training.train_run(_exp(tiny_data, ref_dir, cfg), "gated", 0, tiny_data["train"],
                       tiny_data["val"])


def test_selection_metric_chooses_the_best_epoch_and_round_trips():
  def stats(acc, f1):
    return dict(accuracy=acc, uar=acc, macro_f1=f1, weighted_f1=f1, loss=1.0,
                confusion=np.eye(2, dtype=np.int64))
  epochs = [stats(0.7, 0.30), stats(0.6, 0.50), stats(0.65, 0.45)]
  chosen = {}
  for metric in ("accuracy", "macro_f1"):
    run = runs.RunState.new("gated", 0, optim_lib.Plateau(lr=1.0))
    for st in epochs:
      row = {k: 0.0 for k in runs.HISTORY_KEYS} | dict(val_acc=st["accuracy"])
      run.record(row, st, metric)
    chosen[metric] = (run.best.epoch, run.best.val_acc, run.best.score)
    again = runs.RunState.from_json(json.loads(json.dumps(run.to_json())), optim_lib.Plateau(lr=1.0))
    assert (again.best.epoch, again.best.val_acc, again.best.score) == chosen[metric]
  assert chosen == {"accuracy": (1, 0.7, 0.7), "macro_f1": (2, 0.6, 0.5)}
  old = runs.Best.from_json(dict(epoch=3, val_acc=0.8, confusion=None, metrics={}))
  assert old.score == 0.8   # a run saved before selection metrics: it selected on accuracy
  cfg = _cfg()
  cfg.train.selection_metric = "f1"
  with pytest.raises(ValueError, match=r"config.train.selection_metric = 'f1' must be one of "
                     "accuracy, uar, macro_f1, weighted_f1"):
    configs.validate(cfg)


def test_training_selects_ranks_and_reports_on_the_selection_metric(tiny_data, shared,
                                                                    tmp_path):
  cfg = _cfg(epochs=4)
  cfg.train.selection_metric = "macro_f1"   # (the tiny validation split is balanced: UAR = acc)
  exp = dataclasses.replace(_exp(tiny_data, tmp_path / "m", cfg, shared),
                            results_dir=str(tmp_path / "r"))
  result = training.train_run(exp, "gated", 0, tiny_data["train"], tiny_data["val"])
  f1, acc = result.history["val_macro_f1"], result.history["val_acc"]
  assert result.best.epoch == 1 + int(np.argmax(f1))   # the first epoch at the maximum
  assert result.state.plateau.best == pytest.approx(max(f1))   # the schedule followed it too
  assert max(f1) != max(acc)   # (so the checks above could fail on accuracy)
  summary = training.train_and_evaluate(exp, tiny_data["train"], tiny_data["val"],
                                        variants=["gated"], seeds=[0])   # reuses the run
  run = runs.load_run(str(tmp_path / "m"), "gated", 0)
  assert run.val_score == max(f1) and run.selection_metric == "macro_f1"
  assert run.val_acc == acc[run.state.best.epoch - 1]
  seed = summary["variants"]["gated"]["seeds"]["0"]
  assert seed["best_val_score"] == max(f1) and summary["selection_metric"] == "macro_f1"
  report = (tmp_path / "r" / "fusion_variants_comparison.txt").read_text()
  assert "Ranks are by mean best validation macro F1" in report
  assert "Best Val Macro F1" in report and "Validation Accuracy at the best epoch" in report
  # another selection metric is another run: resuming this one with accuracy is refused
  with pytest.raises(runs.RunMismatch, match=r"selection_metric: macro_f1 → -"):
    training.train_run(_exp(tiny_data, tmp_path / "m", _cfg(epochs=4), shared), "gated", 0,
                       tiny_data["train"], tiny_data["val"])


def test_train_step_traced_once_per_bucket(tiny_data, tmp_path):
  cfg = _cfg(epochs=2)
  exp = _exp(tiny_data, tmp_path, cfg)
  st = exp.steps("concatenation")
  planned = exp.shapes
  shapes = data.BatchShapes((16, 24, planned.speech_buckets[-1]), planned.text_length)
  used = {shapes.speech_buckets[b] for b, _ in data.batch_indices(
      tiny_data["train"], shapes, cfg.train.batch_size, shuffle=True)}
  assert len(used) >= 2  # mixed lengths, several buckets
  state = st.init_state(jax.random.key(0), 1e-3)
  for epoch in range(2):
    acc = steps.zero_metrics()
    for batch in data.iterate_batches(tiny_data["train"], shapes, cfg.train.batch_size,
                                      shuffle=True, seed=0, epoch=epoch):
      state, acc = exp.ledger(st.train, state, acc, exp.shard(batch), jax.random.key(1))
    compiled = exp.ledger.entries(st.owner, "train")
    assert st.traces == len(used) and len(compiled) == len(used)
    assert {e.batch_shapes["speech"][1] for e in compiled} == used
  assert int(jax.device_get(acc["count"])) == len(tiny_data["train"])


def test_validation_compiles_eval_num_buckets_shapes(tiny_data, tmp_path):
  """eval.num_buckets = 1 evaluates validation in the largest training bucket only (one
  program), with the sums of the per-bucket passes up to float rounding; it is part of the
  run's identity, and all the buckets (the default) leave the identity as it was."""
  seen = {}

  class Shapes(loop.Hook):
    def compiled(self, group, seconds):
      seen[group.variant] = (group.shapes, sorted(
          e.batch_shapes["speech"][1]
          for e in exp.ledger.entries(group.steps.owner, "eval_group")))

  history = {}
  for k in (1, 2):
    cfg = _cfg(epochs=2)
    cfg.eval.num_buckets = k
    exp = _exp(tiny_data, tmp_path / f"m{k}", cfg)
    assert exp.shapes.num_buckets == 2 and exp.plan(tiny_data["val"]).num_buckets == k  # (test)
    history[k] = training.train_run(exp, "gated", 0, tiny_data["train"], tiny_data["val"],
                                    hooks=[Shapes()]).history
    shapes, evals = seen["gated"]
    assert evals == sorted(shapes.speech_buckets[-k:]), (k, evals, shapes)
  for key in ("val_loss", "val_acc", "train_loss"):
    np.testing.assert_allclose(history[1][key], history[2][key], rtol=1e-5, err_msg=key)
  one, two = _cfg(epochs=2), _cfg()
  one.eval.num_buckets, two.eval.num_buckets = 1, 2
  assert "eval_buckets" not in runs.fingerprint(two) and "eval_buckets" not in runs.fingerprint(
      _cfg())   # (0, the default: the training buckets)
  assert runs.fingerprint(one)["eval_buckets"] == 1
  with pytest.raises(runs.RunMismatch, match=r"eval_buckets: - → 1"):
    training.train_run(_exp(tiny_data, tmp_path / "m2", one), "gated", 0,
                       tiny_data["train"], tiny_data["val"])


def test_metrics_jsonl_has_no_duplicates_after_resume(tiny_data, shared, tmp_path):
  exp = dataclasses.replace(_exp(tiny_data, tmp_path / "m", exp=shared),
                            results_dir=str(tmp_path))
  path = tmp_path / "metrics.jsonl"

  def stop(epoch):
    if epoch == 3:
      raise _Interrupt()

  with pytest.raises(_Interrupt):
    training.train_run(exp, "gated", 0, tiny_data["train"], tiny_data["val"], after_epoch=stop)
  # what a process killed between its checkpoint and the events' flush leaves: epoch 3
  # checkpointed but not in the events, and a stray epoch 5 written past it
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  folder = hooks.tensorboard_dir(str(tmp_path / "tensorboard"), "gated", 0)
  for f in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
    os.remove(f)
  killed = SummaryWriter(folder)
  for e in (1, 2, 5):
    for tag in hooks.TENSORBOARD_TAGS.values():
      killed.add_scalar(tag, -1.0, e)
  killed.close()
  resumed = training.train_run(exp, "gated", 0, tiny_data["train"], tiny_data["val"])
  assert resumed.resumed_from_epoch == 3   # epoch 3's latest was saved before the stop
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
  assert {"train_loss", "val_acc", "learning_rate", "samples_per_second"} <= set(rows[0])
  # the TensorBoard events hold the same epochs once each, with the same values
  scalars = hooks.read_scalars(hooks.tensorboard_dir(str(tmp_path / "tensorboard"), "gated", 0))
  assert set(scalars) == set(hooks.TENSORBOARD_TAGS.values())
  for key, tag in hooks.TENSORBOARD_TAGS.items():
    assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4], tag
    np.testing.assert_allclose([v for _, v in scalars[tag]], [r[key] for r in rows], rtol=1e-6,
                               err_msg=tag)


def test_tensorboard_purge_drops_what_a_killed_run_wrote_after_its_checkpoint(tmp_path):
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  folder = hooks.tensorboard_dir(str(tmp_path), "gated", 3)
  first = SummaryWriter(folder)   # the killed process: epochs 1-5, checkpoint after 2
  for e in range(1, 6):
    first.add_scalar("val/accuracy", 0.1 * e, e)
  first.close()
  second = SummaryWriter(folder, purge_step=3, filename_suffix=".resumed")
  for e in (3, 4):
    second.add_scalar("val/accuracy", 0.5 + e, e)
  second.close()
  got = hooks.read_scalars(folder)["val/accuracy"]
  assert [s for s, _ in got] == [1, 2, 3, 4]
  np.testing.assert_allclose([v for _, v in got], [0.1, 0.2, 3.5, 4.5], rtol=1e-6)
  # a file cut short mid-record (a kill) ends at its last whole record
  path = sorted((tmp_path / "gated" / "seed_3").glob("events.out.tfevents.*"))[-1]
  path.write_bytes(path.read_bytes()[:-7])
  assert [s for s, _ in hooks.read_scalars(folder)["val/accuracy"]] == [1, 2, 3]


def test_several_seeds_give_mean_std_and_paired_tests(tiny_data, tmp_path):
  cfg = _cfg(epochs=1)
  cfg.data.num_buckets = 1
  exp = dataclasses.replace(_exp(tiny_data, tmp_path / "m", cfg), results_dir=str(tmp_path / "r"))
  summary = training.train_and_evaluate(exp, tiny_data["train"], tiny_data["val"],
                                        variants=["gated", "concatenation"], seeds=[0, 1, 2])
  for v in ("gated", "concatenation"):
    s = summary["variants"][v]
    accs = [s["seeds"][k]["best_val_acc"] for k in ("0", "1", "2")]
    assert s["best_val_acc_mean"] == pytest.approx(np.mean(accs))
    assert s["best_val_acc_std"] == pytest.approx(np.std(accs, ddof=1))
  assert summary["comparisons"][0]["n"] == 3
  report = (tmp_path / "r" / "fusion_variants_comparison.txt").read_text()
  assert "Paired t-tests over 3 seeds" in report and "±" in report
  # each comparison's line: the paired t-test computed here, and the verdict it implies
  from scipy import stats  # pylint: disable=import-outside-toplevel
  for c in summary["comparisons"]:
    acc = lambda v: np.array([summary["variants"][v]["seeds"][k]["best_val_acc"]
                              for k in ("0", "1", "2")])
    d = acc(c["a"]) - acc(c["b"])
    line = next(l for l in report.splitlines() if l.split()[:2] == [c["a"], c["b"]])
    assert f"{d.mean():+.4f}" in line
    if d.std() == 0:
      assert c["p_value"] is None and " n/a " in line and line.endswith("within seed noise")
      continue
    p = 2 * stats.t.sf(abs(d.mean() / (d.std(ddof=1) / np.sqrt(3))), 2)
    assert c["p_value"] == pytest.approx(p, rel=1e-9) and f" {p:.3f} " in line
    assert line.endswith("exceeds seed noise" if p < 0.05 else "within seed noise")


def test_a_variants_closing_work_runs_beside_the_next_and_its_failure_stops_the_report(
    tiny_data, shared, tmp_path, monkeypatch):
  """train_and_evaluate closes a variant's runs (last checkpoints written, unlocked) and
  exports its .pt in a thread while the next variant trains. An export that fails is
  raised and no report appears; later runs are still closed, later exports skipped."""
  cfg = _cfg(epochs=1)
  cfg.train.export_torch = True
  model_dir = tmp_path / "m"
  exp = dataclasses.replace(_exp(tiny_data, model_dir, cfg, shared),
                            results_dir=str(tmp_path / "r"))
  unlocked = lambda v: _lock_free(runs.run_dir(str(model_dir), v, 0))
  second_started, seen, real_train = threading.Event(), [], training._train

  def train(exp_, variant, *args):
    if variant == "speech_only":
      second_started.set()
    return real_train(exp_, variant, *args)

  def export(exp_, variant, seeds):
    seen.append((variant, threading.current_thread().name, unlocked(variant),
                 runs.best_meta(str(model_dir), variant, 0)["run"]["epoch"]))
    assert second_started.wait(120)   # (so the next variant trains before this fails)
    raise OSError(f"disk full writing best_{variant}_model.pt")

  monkeypatch.setattr(training, "_train", train)
  monkeypatch.setattr(training, "export_torch", export)
  with pytest.raises(OSError, match="disk full writing best_gated_model.pt"):
    training.train_and_evaluate(exp, tiny_data["train"], tiny_data["val"],
                                variants=["gated", "speech_only"], seeds=[0])
  assert seen == [("gated", seen[0][1], True, 1)]   # after its run closed; not speech_only's
  assert seen[0][1].startswith("fusion_jax_finish")
  assert unlocked("speech_only") and runs.best_meta(str(model_dir), "speech_only", 0)
  assert not (tmp_path / "r" / "summary.json").exists()
  assert not (tmp_path / "r" / "plots").exists()


def _lock_free(directory) -> bool:
  try:
    with runs.RunLock(directory):
      return True
  except runs.RunInUse:
    return False


def test_parallel_seeds_reproduce_each_seed_trained_alone(tiny_data, shared, tmp_path):
  """Seeds 0 and 1 as one vmapped program vs each on its own (the sequential reference):
  the same per-epoch losses and final weights, also after an interrupted parallel run."""
  cfg = _cfg(epochs=3)
  cfg.train.parallel_seeds = True        # (unset, CPU trains seeds in turn)
  par_exp = _exp(tiny_data, tmp_path / "par", cfg, shared)

  def stop(epoch):
    if epoch == 2:
      raise _Interrupt()

  with pytest.raises(_Interrupt):
    training.train_runs(par_exp, "gated", [0, 1], tiny_data["train"], tiny_data["val"],
                        after_epoch=stop)
  parallel = training.train_runs(par_exp, "gated", [0, 1], tiny_data["train"],
                                 tiny_data["val"])
  assert [r.resumed_from_epoch for r in parallel] == [2, 2]
  for seed, got in zip([0, 1], parallel):
    alone = training.train_run(_exp(tiny_data, tmp_path / f"alone{seed}", cfg, shared),
                               "gated", seed, tiny_data["train"], tiny_data["val"])
    for key in ("train_loss", "val_loss"):
      np.testing.assert_allclose(got.history[key], alone.history[key], rtol=1e-5)
    assert got.history["val_acc"] == alone.history["val_acc"]
    a = runs.load_run(str(tmp_path / "par"), "gated", seed).params
    b = dict(jax.tree_util.tree_flatten_with_path(
        runs.load_run(str(tmp_path / f"alone{seed}"), "gated", seed).params)[0])
    for path, x in jax.tree_util.tree_flatten_with_path(a)[0]:
      # Attention key biases get an exactly-zero gradient (softmax ignores them), so Adam
      # turns rounding noise of either program into ±lr steps there (as across devices).
      if "['key']['bias']" not in jax.tree_util.keystr(path):
        np.testing.assert_allclose(x, b[path], rtol=1e-4, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))
  assert parallel[0].history["train_loss"] != parallel[1].history["train_loss"]


def test_released_splits_leave_the_shared_cache(tiny_data, shared):
  """A recipe's folds share one cache through derived contexts; a finished fold's device
  copies are released instead of accumulating."""
  fold = shared.with_dirs(None, None)
  split, shapes = tiny_data["val"], shared.training_shapes(tiny_data["train"])
  first = fold.device_split(split, shapes)
  assert shared.device_split(split, shapes) is first          # shared between contexts
  shared.release(split)
  assert fold.device_split(split, shapes) is not first        # uploaded anew
  shared.release(split)


def test_predicted_attention_maps_span_length_buckets(tiny_data, shared):
  """Maps of utterances in different buckets come back in one array, padded to the longest
  bucket; each row equals that utterance predicted alone."""
  from fusion_jax.data import batching  # pylint: disable=import-outside-toplevel
  steps_ = shared.steps("cross_attention")
  params = steps_.init_state(jax.random.key(0), 1e-3).params
  split = tiny_data["val"]
  lengths = split.speech_lengths
  shapes = batching.BatchShapes((int(np.median(lengths)) // 8 * 8 + 8, int(lengths.max()) + 8),
                                int(split.text_lengths.max()))
  key = "fusion/speech_to_text_attention"
  probs, aux = shared.predict(steps_, params, split, (key,), shapes, batch_size=4)
  assert aux[key].shape == (len(split), shapes.speech_buckets[-1], shapes.text_length)
  for i in (int(np.argmin(lengths)), int(np.argmax(lengths))):
    t, l = int(lengths[i]), int(split.text_lengths[i])
    p1, a1 = shared.predict(steps_, params, split.take([i]), (key,), batch_size=4)
    np.testing.assert_allclose(probs[i], p1[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux[key][i, :t, :l], a1[key][0, :t, :l], rtol=1e-5, atol=1e-6)
    assert not aux[key][i, shapes.speech_buckets[shapes.bucket_of(t)]:].any()   # beyond its bucket


def test_microbatch_count_is_the_fewest_equal_parts_within_the_budget():
  assert steps.num_microbatches(32, 448, 0) == 1            # off
  assert steps.num_microbatches(32, 448, 4096) == 4         # 8 rows x 448 = 3584
  assert steps.num_microbatches(32, 216, 4096) == 2         # 16 x 216 = 3456
  assert steps.num_microbatches(32, 100, 4096) == 1         # the whole batch fits
  assert steps.num_microbatches(24, 448, 4096) == 3         # parts divide the batch
  assert steps.num_microbatches(32, 9000, 4096) == 32       # one row per part at least
  assert steps.num_microbatches(32, 448, 4096, multiple=4) == 1   # 8 rows per device
  assert steps.num_microbatches(32, 448, 1024, multiple=4) == 4   # 2 rows per device
  assert steps.microbatch_budget(-1) == (steps.CPU_MICROBATCH_FRAMES
                                         if jax.default_backend() == "cpu" else 0)
  assert steps.microbatch_budget(0) == 0 and steps.microbatch_budget(100) == 100


def test_microbatched_step_equals_the_whole_batch(variant="cross_attention"):
  """Gradient accumulation over strided parts: same loss sums (so the same dropout masks),
  gradients and evaluation as one pass, with class weights and focal scaling (the mean's
  denominator is the whole batch's) and a padding row."""
  import optax  # pylint: disable=import-outside-toplevel
  from fusion_jax.models import model as model_lib  # pylint: disable=import-outside-toplevel
  cfg = configs.tiny()
  cfg.model.dropout = 0.3
  mc = model_lib.ModelConfig.from_config(cfg.model)
  model = model_lib.build_model(mc, variant, 7)
  rng = np.random.default_rng(0)
  b, t, l = 8, 12, 5
  mask = lambda n: (np.arange(n)[None] < rng.integers(1, n + 1, (b, 1))).astype(np.float32)
  batch = dict(speech=rng.standard_normal((b, t, mc.speech_dim)).astype(np.float32),
               speech_mask=mask(t), text=rng.standard_normal((b, l, mc.text_dim)).astype(
                   np.float32), text_mask=mask(l), label=rng.integers(0, 7, b).astype(np.int32),
               example_mask=np.array([1] * 7 + [0], np.float32))
  loss = optim_lib.Loss(0.1, class_weights=tuple(np.linspace(0.5, 2.0, 7)), focal_gamma=2.0)
  state = steps.init_state(model, optax.identity(), jax.random.key(0), 1.0)
  out = {}
  for k in (1, 4):
    new, acc = jax.jit(functools.partial(
        steps.train_step, model=model, optimizer=optax.identity(), label_smoothing=0.1,
        loss=loss, microbatches=k))(state, steps.zero_metrics(), batch, jax.random.key(1))
    grads = jax.tree_util.tree_map(jnp.subtract, state.params, new.params)  # lr 1, identity
    ev = jax.jit(functools.partial(steps.eval_step, model=model, label_smoothing=0.1,
                                   microbatches=k))(state.params, batch)
    out[k] = (grads, acc, ev)
  (g1, a1, e1), (g4, a4, e4) = out[1], out[4]
  for key in ("loss_sum", "correct", "count"):
    np.testing.assert_allclose(a4[key], a1[key], rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(g1))
  for x, y in zip(jax.tree_util.tree_leaves(g4), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(e4["loss_sum"], e1["loss_sum"], rtol=1e-6)
  np.testing.assert_array_equal(e4["confusion"], e1["confusion"])


def test_dropout_masks_of_a_part_are_the_whole_batchs_rows():
  from fusion_jax import dropout  # pylint: disable=import-outside-toplevel
  x = jnp.ones((6, 3, 5))
  whole = np.asarray(dropout.hash_dropout(x, jnp.uint32(7), 0.5))

  @jax.jit
  def part(j):
    with dropout.batch_rows(3, j):
      return dropout.hash_dropout(x[:2], jnp.uint32(7), 0.5)
  for j in range(3):
    np.testing.assert_array_equal(part(j), whole[j::3])
  assert not np.array_equal(whole[0], whole[1])  # rows differ: the test can fail


def test_experiment_steps_read_the_microbatch_budget(tiny_data, tmp_path):
  cfg = _cfg(epochs=1)
  cfg.runtime.microbatch_frames = 60
  st = _exp(tiny_data, tmp_path, cfg).steps("concatenation")
  assert st.microbatches(8, 12, 3) == 2 and st.microbatches(8, 2, 3) == 1
  cfg.runtime.microbatch_frames = -2
  with pytest.raises(ValueError, match="runtime.microbatch_frames"):
    configs.validate(cfg)


class _Recorder(loop.Hook):
  """Every hook call, in order."""

  def __init__(self):
    self.calls = []

  def start(self, group):
    self.calls.append(("start", group.start_epoch, tuple(group.seeds)))

  def compiled(self, group, seconds):
    self.calls.append(("compiled",))

  def epoch_end(self, group, end):
    self.calls.append(("epoch", end.epoch, end.rows[0]["val_acc"], end.improved[0],
                       len(end.issue_seconds), end.train_seconds <= end.seconds))

  def end(self, group):
    self.calls.append(("end", group.runs[0].epoch))


def test_a_hook_sees_the_loop_in_order_and_a_finished_run_trains_nothing(
    tiny_data, shared, tmp_path):
  """train_run's hooks= reach the one loop: start, compiled, one epoch_end per epoch with
  the history's own numbers, end; a rerun of the finished run starts at its last epoch and
  compiles and trains nothing."""
  exp = _exp(tiny_data, tmp_path / "m", _cfg(epochs=3), shared)
  rec = _Recorder()
  result = training.train_run(exp, "gated", 0, tiny_data["train"], tiny_data["val"],
                              hooks=[rec])
  steps_per_epoch = len(data.batch_indices(tiny_data["train"], exp.training_shapes(
      tiny_data["train"], tiny_data["val"]), exp.config.train.batch_size, shuffle=True,
      seed=0, epoch=0))
  acc = result.history["val_acc"]   # (selected on accuracy: improved = a new maximum)
  improved = [e == 0 or acc[e] > max(acc[:e]) for e in range(3)]
  assert rec.calls[:2] == [("start", 0, (0,)), ("compiled",)]
  assert rec.calls[2:5] == [("epoch", e + 1, acc[e], improved[e], steps_per_epoch, True)
                            for e in range(3)]
  assert rec.calls[5] == ("end", 3)
  again = _Recorder()
  training.train_run(exp, "gated", 0, tiny_data["train"], tiny_data["val"], hooks=[again])
  assert again.calls == [("start", 3, (0,)), ("end", 3)]


def test_the_benchmark_times_the_training_loop_itself(tiny_data, shared):
  """benchmark.run_variant runs loop.train_group (a Timing hook): its figures are the
  loop's epochs, and nothing is written."""
  res = benchmark.run_variant(shared, "gated", tiny_data["train"], repeats=2)
  assert res.train_samples_per_s > 0 and res.eval_samples_per_s > 0
  assert res.compiled_shapes >= 2 and res.params == models.count_params(
      shared.steps("gated").init_state(jax.random.key(0), 1e-3).params)
  timing = hooks.Timing()
  group = loop.Group.start(shared, "gated", [0], [runs.RunState.new(
      "gated", 0, optim_lib.Plateau(lr=1e-3))], [shared.steps("gated").init_state(
          jax.random.key(0), 1e-3)], [jax.random.key(1)], shared.training_shapes(
              tiny_data["train"]), epochs=2)
  loop.train_group(shared, group, tiny_data["train"], tiny_data["train"], [timing])
  assert [e.epoch for e in timing.epochs] == [1, 2] and group.runs[0].epoch == 2
  assert all(0 < e.train_seconds < e.seconds for e in timing.epochs)


def test_host_cpu_reads_the_isa_from_cpuinfo():
  from fusion_jax import benchmark  # pylint: disable=import-outside-toplevel
  info = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
          "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
          "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu\n")
  cpu = benchmark.host_cpu(info)
  assert cpu == dict(model="Intel(R) Xeon(R) Platinum 8481C", cores=2, avx2=True, avx512=True,
                     amx=True)
  assert benchmark.describe_cpu(cpu).endswith("2 cores, AVX2 + AVX-512 + AMX")
  amd = benchmark.host_cpu("processor : 0\nmodel name : AMD EPYC\nflags : fpu avx2 fma\n")
  assert (amd["avx512"], amd["amx"], amd["avx2"]) == (False, False, True)
  assert benchmark.describe_cpu(benchmark.host_cpu("")) == "unknown, 0 cores, no AVX2"
