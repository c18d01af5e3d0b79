"""Feature/CSV readers, validation messages, batching, demo data."""

import collections
import itertools

import numpy as np
import pandas as pd
import pytest

from fusion_jax import data
from tests.conftest import CLASSES, write_split


def _load(paths, **kw):
  return data.load_split("train", *paths, class_names=CLASSES, **kw)


def test_load_split_keeps_unpadded_frames_in_order(tmp_path):
  paths = write_split(tmp_path, n=5, speech_lengths=[3, 1, 7, 2, 5],
                      text_lengths=[1, 4, 2, 2, 3])
  split = _load(paths, speech_dim=4, text_dim=3)
  assert list(split.speech_lengths) == [3, 1, 7, 2, 5]
  assert list(split.text_lengths) == [1, 4, 2, 2, 3]
  raw = data.load_torch_file(paths[0])
  np.testing.assert_array_equal(split.speech[2], raw["x"][2, :7])
  assert split.paths[0] == "audio/train_000.wav"
  assert split.transcripts[1] == "say the word 1"


def test_class_names_as_the_original_derives_them(tmp_path):
  csv = tmp_path / "c.csv"
  pd.DataFrame(dict(path=list("abcde"), label=[2, 0, 1, 0, 2],
                    emotion_name=["sad", "angry", "fear", "ANGRY2", "sad"])).to_csv(csv,
                                                                                   index=False)
  # first emotion_name per label, ordered by label
  assert data.class_names_from_csv(csv) == ["angry", "fear", "sad"]


def test_class_labels_must_be_contiguous(tmp_path):
  csv = tmp_path / "gap.csv"
  pd.DataFrame(dict(path=["a", "b"], label=[0, 2], emotion_name=["x", "z"])).to_csv(
      csv, index=False)
  with pytest.raises(data.DataError, match=r"gap.csv, field 'label'.*\[1\] never appear"):
    data.class_names_from_csv(csv)


def test_missing_csv_column(tmp_path):
  csv = tmp_path / "cols.csv"
  pd.DataFrame(dict(path=["a"], label=[0])).to_csv(csv, index=False)
  with pytest.raises(data.DataError, match=r"cols.csv, field 'emotion_name'.*missing column"):
    data.read_split_csv(csv)


def test_non_integer_csv_label_names_row(tmp_path):
  csv = tmp_path / "lab.csv"
  pd.DataFrame(dict(path=["a", "b", "c"], label=["0", "1", "x"],
                    emotion_name=["a", "b", "c"])).to_csv(csv, index=False)
  with pytest.raises(data.DataError, match=r"lab.csv, field 'label', row 2"):
    data.read_split_csv(csv)


def test_different_n_across_speech_text_csv(tmp_path):
  s, t, c = write_split(tmp_path, n=6)
  s2, _, _ = write_split(tmp_path, name="short", n=5)
  with pytest.raises(data.DataError, match=r"train_text.pt, field 'N', row 5: 6 utterances"):
    data.load_split("train", s2, t, c, class_names=CLASSES)
  df = pd.read_csv(c).iloc[:4]
  df.to_csv(tmp_path / "short.csv", index=False)
  with pytest.raises(data.DataError, match=r"short.csv, field 'N', row 4"):
    data.load_split("train", s, t, tmp_path / "short.csv", class_names=CLASSES)


def test_labels_disagree_between_speech_and_text(tmp_path):
  s, t, c = write_split(tmp_path, n=6)
  raw = data.load_torch_file(t)
  raw["y"][3] = (raw["y"][3] + 1) % 7
  data.save_torch_file(raw, t)
  with pytest.raises(data.DataError, match=r"train_text.pt, field 'y', row 3: label .* "
                     r"disagrees .*train_speech.pt"):
    data.load_split("train", s, t, c, class_names=CLASSES)


def test_labels_disagree_with_csv(tmp_path):
  s, t, c = write_split(tmp_path, n=6)
  df = pd.read_csv(c)
  df.loc[4, "label"] = (df.loc[4, "label"] + 2) % 7
  df.to_csv(c, index=False)
  with pytest.raises(data.DataError, match=r"train_split.csv, field 'label', row 4"):
    data.load_split("train", s, t, c, class_names=CLASSES)


def test_feature_dim_other_than_config(tmp_path):
  paths = write_split(tmp_path, ds=5)
  with pytest.raises(data.DataError,
                     match=r"train_speech.pt, field 'x'.*dim is 5, the config expects 4"):
    _load(paths, speech_dim=4, text_dim=3)


def _mutate(path, fn):
  raw = data.load_torch_file(path)
  fn(raw)
  data.save_torch_file(raw, path)


def test_nan_in_a_real_frame_names_row(tmp_path):
  paths = write_split(tmp_path, speech_lengths=[2, 3, 4, 1, 2, 2])
  _mutate(paths[0], lambda r: r["x"].__setitem__((2, 1, 0), np.nan))
  with pytest.raises(data.DataError, match=r"train_speech.pt, field 'x', row 2: NaN or Inf"):
    _load(paths)


def test_inf_in_padding_is_ignored(tmp_path):
  paths = write_split(tmp_path, speech_lengths=[2, 3, 4, 1, 2, 2])
  _mutate(paths[0], lambda r: r["x"].__setitem__((3, 3, 0), np.inf))  # row 3 has 1 frame
  assert np.isfinite(_load(paths).speech[3]).all()


def test_an_utterance_without_one_modality_is_absent_but_not_without_both(tmp_path):
  paths = write_split(tmp_path)
  _mutate(paths[1], lambda r: r["m"].__setitem__(4, 0))
  split = _load(paths)
  assert split.text_lengths[4] == 0 and split.absent("text") == 1 and split.absent("speech") == 0
  assert "1 without text (absent" in split.describe_absent()
  _mutate(paths[0], lambda r: r["m"].__setitem__(4, 0))
  with pytest.raises(data.DataError, match=r"train_text.pt, field 'x', row 4: utterance has "
                     r"neither speech .* nor text frames"):
    _load(paths)


def test_mask_not_binary(tmp_path):
  paths = write_split(tmp_path)
  _mutate(paths[0], lambda r: r["m"].__setitem__((3, 0), 0.5))
  with pytest.raises(data.DataError, match=r"train_speech.pt, field 'm', row 3: mask holds 0.5"):
    _load(paths)


def test_label_outside_class_list(tmp_path):
  paths = write_split(tmp_path, labels=[0, 1, 2, 9, 3, 4])
  with pytest.raises(data.DataError, match=r"train_speech.pt, field 'y', row 3: label 9 is "
                     r"outside the 7 classes"):
    _load(paths)


def test_missing_key_in_feature_dict(tmp_path):
  path = tmp_path / "nokey.pt"
  data.save_torch_file({"x": np.zeros((2, 3, 4), np.float32), "y": np.zeros(2, np.int64)},
                       path)
  with pytest.raises(data.DataError, match=r"nokey.pt, field 'm': missing key 'm'"):
    data.load_features(path)


def test_per_utterance_layout_is_aligned_by_csv(tmp_path):
  s, t, c = write_split(tmp_path, n=4)
  split_ref = _load((s, t, c))
  # Per-utterance speech keyed by file stem, in scrambled order.
  df = pd.read_csv(c)
  stems = [p.split("/")[-1][:-4] for p in df["path"]]
  per = collections.OrderedDict((stems[i], split_ref.speech[i]) for i in (2, 0, 3, 1))
  data.save_torch_file(per, tmp_path / "per.pt")
  split = data.load_split("train", tmp_path / "per.pt", t, c, class_names=CLASSES)
  for a, b in zip(split.speech, split_ref.speech):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(data.DataError, match=r"needs a split CSV"):
    data.load_split("train", tmp_path / "per.pt", t, None)
  del per[stems[3]]
  data.save_torch_file(per, tmp_path / "per.pt")
  with pytest.raises(data.DataError, match=r"per.pt, field 'utterance_id', row 3: no features"):
    data.load_split("train", tmp_path / "per.pt", t, c)


def test_native_npz_round_trip(tmp_path):
  s, t, c = write_split(tmp_path)
  feats = data.load_features(s)
  data.save_features(tmp_path / "s.npz", feats)
  back = data.load_features(tmp_path / "s.npz", expected_dim=4)
  assert len(back) == len(feats)
  for a, b in zip(back.sequences, feats.sequences):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(back.labels, feats.labels)
  split = data.load_split("train", tmp_path / "s.npz", t, c, class_names=CLASSES)
  assert len(split) == 6


def test_truncated_npz(tmp_path):
  s, _, _ = write_split(tmp_path)
  data.save_features(tmp_path / "s.npz", data.load_features(s))
  raw = (tmp_path / "s.npz").read_bytes()
  (tmp_path / "s.npz").write_bytes(raw[:100])
  with pytest.raises(data.DataError, match=r"s.npz: truncated or corrupt"):
    data.load_features(tmp_path / "s.npz")


def test_an_object_array_npz_is_refused_as_pickled_not_corrupt(tmp_path):
  ragged = np.empty(2, object)
  ragged[:] = [np.zeros((3, 4), np.float32), np.zeros((5, 4), np.float32)]
  np.savez(tmp_path / "o.npz", features=ragged, lengths=np.array([3, 5]))
  with pytest.raises(data.DataError, match=r"o.npz, field 'features': holds an object "
                     r"\(pickled\) array; fusion_jax never unpickles data"):
    data.load_features(tmp_path / "o.npz")


# ---------------------------------------------------------------- batching
def _split(n=37, seed=0):
  rng = np.random.default_rng(seed)
  s_len = rng.integers(1, 60, size=n)
  t_len = rng.integers(1, 12, size=n)
  return data.Split(name="x", speech=[rng.standard_normal((k, 3)).astype(np.float32)
                                      for k in s_len],
                    text=[rng.standard_normal((k, 2)).astype(np.float32) for k in t_len],
                    labels=rng.integers(0, 7, size=n))


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_utterance_once_and_padding_masked(shuffle):
  split = _split()
  shapes = data.plan_shapes([split], num_buckets=3)
  seen, shapes_seen = [], set()
  for batch in data.iterate_batches(split, shapes, 8, shuffle=shuffle, seed=1, epoch=2):
    shapes_seen.add(batch["speech"].shape)
    assert batch["text"].shape[1] == shapes.text_length
    for j, r in enumerate(batch["index"]):
      if r < 0:
        assert batch["example_mask"][j] == 0 and batch["speech_mask"][j].sum() == 0
        continue
      seen.append(r)
      n, k = split.speech[r].shape[0], split.text[r].shape[0]
      np.testing.assert_array_equal(batch["speech"][j, :n], split.speech[r])
      assert batch["speech_mask"][j].sum() == n and batch["speech_mask"][j, :n].all()
      assert not batch["speech"][j, n:].any() and not batch["text"][j, k:].any()
      assert batch["text_mask"][j].sum() == k and batch["label"][j] == split.labels[r]
  assert sorted(seen) == list(range(len(split)))
  assert {s[1] for s in shapes_seen} <= set(shapes.speech_buckets)
  assert all(s[0] == 8 for s in shapes_seen)


def test_shuffle_is_deterministic_per_seed_and_epoch():
  split = _split()
  shapes = data.plan_shapes([split], num_buckets=3)
  order = lambda seed, epoch: [tuple(r) for _, r in data.batch_indices(
      split, shapes, 8, shuffle=True, seed=seed, epoch=epoch)]
  assert order(0, 0) == order(0, 0)
  assert order(0, 0) != order(0, 1)
  assert order(0, 0) != order(1, 0)


def _padded_cost(lengths, buckets, batch_size):
  """Batch slots × length of bucketing ``lengths`` (each in the first bucket that holds it)."""
  counts = collections.Counter(next(b for b in buckets if n <= b) for n in lengths)
  return sum(-(-c // batch_size) * batch_size * b for b, c in counts.items())


def test_bucket_boundaries_are_the_brute_force_optimum():
  """Every set of at most k bucket lengths (multiples of 8, the last the longest) tried: the
  chosen boundaries cost exactly the least padded batch slots × length."""
  rng = np.random.default_rng(0)
  for trial in range(40):
    n, k, bs = int(rng.integers(1, 30)), int(rng.integers(1, 5)), int(rng.choice([1, 4, 8]))
    lengths = rng.integers(1, 80, n) if trial % 2 else np.concatenate(
        [rng.integers(1, 12, n), rng.integers(60, 70, 3)])   # skewed: a few long ones
    split = data.Split("train", [np.zeros((int(t), 1), np.float32) for t in lengths],
                       [np.zeros((1, 1), np.float32)] * len(lengths),
                       np.zeros(len(lengths), np.int64))
    shapes = data.plan_shapes([split], num_buckets=k, batch_size=bs)
    longest = -(-int(lengths.max()) // 8) * 8
    cands = sorted({-(-int(t) // 8) * 8 for t in lengths} - {longest})
    best = min(_padded_cost(lengths, tuple(c) + (longest,), bs)
               for r in range(k) for c in itertools.combinations(cands, r))
    assert len(shapes.speech_buckets) <= k and shapes.speech_buckets[-1] == longest
    assert _padded_cost(lengths, shapes.speech_buckets, bs) == best, (trial, lengths, k, bs)


def test_buckets_cover_every_split_and_reduce_padding():
  train, test = _split(200, 0), _split(30, 1)
  test.speech[0] = np.zeros((97, 3), np.float32)  # longer than anything in train
  shapes = data.plan_shapes([train, test], num_buckets=4)
  assert shapes.speech_buckets[-1] >= 97 and all(b % 8 == 0 for b in shapes.speech_buckets)
  assert len(list(data.iterate_batches(test, shapes, 16, shuffle=False))) >= 2
  one = data.plan_shapes([train], num_buckets=1)
  fr4 = data.padding_fraction(train, shapes, 16)
  fr1 = data.padding_fraction(train, one, 16)
  assert fr4["buckets"] < fr1["buckets"]
  assert fr1["buckets"] >= fr4["global_max"] - 0.05


def test_demo_generator_writes_the_original_layout(tmp_path):
  spec = data.DemoSpec(sizes=(("train", 14), ("val", 7)), speech_dim=8, text_dim=6)
  paths = data.make_demo_dataset(tmp_path, spec)
  raw = data.load_torch_file(paths["train"]["speech"])
  assert set(raw) == {"x", "m", "y"} and raw["x"].shape[2] == 8 and raw["x"].dtype == np.float32
  df = pd.read_csv(paths["train"]["csv"])
  assert list(df.columns[:3]) == ["path", "label", "emotion_name"] and "transcript" in df
  assert data.class_names_from_csv(paths["train"]["csv"]) == list(data.TESS_CLASSES)
  split = data.load_split("train", paths["train"]["speech"], paths["train"]["text"],
                          paths["train"]["csv"], class_names=data.TESS_CLASSES)
  lens = split.speech_lengths
  assert lens.min() >= 50 and lens.max() <= 400
  again = data.make_demo_dataset(tmp_path / "again", spec)
  np.testing.assert_array_equal(raw["x"], data.load_torch_file(again["train"]["speech"])["x"])


@pytest.mark.parametrize("signal", data.SIGNALS)
def test_demo_signal_lives_where_asked(tmp_path, signal):
  """A nearest-centroid probe on pooled features finds the class signal."""
  spec = data.DemoSpec(signal=signal, sizes=(("train", 280), ("val", 140)), speech_dim=16,
                       text_dim=16, speech_length=(20, 40), text_length=(5, 10),
                       strength=0.35, speech_median=30, text_median=7)
  p = data.make_demo_dataset(tmp_path, spec)
  tr = data.load_split("train", p["train"]["speech"], p["train"]["text"], p["train"]["csv"])
  va = data.load_split("val", p["val"]["speech"], p["val"]["text"], p["val"]["csv"])

  def probe(modality):
    pooled = lambda s: np.stack([x.mean(0) for x in getattr(s, modality)])
    xtr, xva = pooled(tr), pooled(va)
    cents = np.stack([xtr[tr.labels == k].mean(0) for k in range(7)])
    pred = np.argmin(((xva[:, None] - cents[None]) ** 2).sum(-1), axis=1)
    return (pred == va.labels).mean()

  s_acc, t_acc = probe("speech"), probe("text")
  chance = 1 / 7
  if signal in ("both", "speech"):
    assert s_acc > 0.6
  if signal in ("both", "text"):
    assert t_acc > 0.6
  if signal == "speech":
    assert t_acc < chance + 0.15
  if signal == "text":
    assert s_acc < chance + 0.15
  if signal == "complementary":
    assert 0.2 < s_acc < 0.7 and 0.15 < t_acc < 0.5


def test_text_only_data_is_bucketed_by_text_length():
  """With one speech frame per utterance (a text-only corpus' placeholder), buckets follow text."""
  rng = np.random.default_rng(3)
  n = 90
  split = data.Split("t", [np.zeros((1, 1), np.float32)] * n,
                     [rng.standard_normal((int(k), 3)).astype(np.float16)
                      for k in rng.integers(1, 60, size=n)], rng.integers(0, 4, size=n))
  shapes = data.plan_shapes([split], num_buckets=3, batch_size=8)
  assert shapes.speech_buckets == (8,) and len(shapes.text_buckets) == 3
  assert shapes.text_buckets[-1] >= int(split.text_lengths.max())
  seen = []
  for batch in data.iterate_batches(split, shapes, 8, shuffle=True, seed=0, epoch=1):
    length = batch["text"].shape[1]
    assert length in shapes.text_buckets and batch["text"].dtype == np.float16
    rows = batch["index"][batch["index"] >= 0]
    seen += list(rows)
    assert all(shapes.bucket_of(int(split.text_lengths[r])) == shapes.text_buckets.index(length)
               for r in rows)
  assert sorted(seen) == list(range(n))
  one = data.plan_shapes([split], num_buckets=1)
  assert not one.text_buckets and one.text_length == shapes.text_buckets[-1]


def test_a_rows_emotion_name_must_be_its_labels_class(tmp_path):
  """A test row named 'bored' (never trained) with label 1 would be scored as disgust."""
  paths = write_split(tmp_path)
  df = pd.read_csv(paths[2])
  df.loc[4, "emotion_name"] = "NEUTRAL "    # case and spaces do not matter
  df.to_csv(paths[2], index=False)
  assert len(data.load_split("test", *paths, class_names=CLASSES)) == 6
  df.loc[1, "emotion_name"] = "bored"
  df.to_csv(paths[2], index=False)
  with pytest.raises(data.DataError, match=r"train_split.csv, field 'emotion_name', row 1: "
                     r"emotion_name 'bored' but label 1 is 'disgust'"):
    data.load_split("test", *paths, class_names=CLASSES)
