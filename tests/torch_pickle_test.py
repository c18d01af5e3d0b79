"""The torch-free .pt reader: real torch.save files, refusal of unsafe pickles."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from fusion_jax import data
from tests.conftest import FIXTURES

TS = os.path.join(FIXTURES, "torch_save")


def test_reads_real_torch_save_padded_dict_exactly():
  got = data.load_torch_file(os.path.join(TS, "padded.pt"))
  want = np.load(os.path.join(TS, "expected.npz"))
  for k in ("x", "m", "y"):
    assert got[k].dtype == want[k].dtype
    np.testing.assert_array_equal(got[k], want[k])


def test_reads_real_torch_save_per_utterance_dict():
  got = data.load_torch_file(os.path.join(TS, "per_utterance.pt"))
  want = np.load(os.path.join(TS, "expected.npz"))
  assert list(got) == ["utt_0", "utt_1", "utt_2"]
  for k, v in got.items():
    np.testing.assert_array_equal(v, want[f"per/{k}"])


def test_reads_strided_and_other_dtypes():
  got = data.load_torch_file(os.path.join(TS, "dtypes.pt"))
  want = np.load(os.path.join(TS, "expected.npz"))
  np.testing.assert_array_equal(got["noncontig"], want["noncontig"])
  np.testing.assert_array_equal(got["transposed"], want["transposed"])
  np.testing.assert_array_equal(got["bf16"].astype(np.float32), want["bf16_as_f32"])
  np.testing.assert_array_equal(got["half"], want["half"])
  np.testing.assert_array_equal(got["int32"], want["int32"])
  np.testing.assert_array_equal(got["bool"], want["bool"])


def test_reads_original_checkpoint_with_optimizer_and_numpy_matrix():
  ckpt = data.load_torch_file(os.path.join(FIXTURES, "torch_checkpoints",
                                           "best_gated_model.pt"))
  assert ckpt["fusion_type"] == "gated" and ckpt["epoch"] == 3
  np.testing.assert_array_equal(ckpt["confusion_matrix"], np.eye(5, dtype=np.int64) * 2)
  assert ckpt["optimizer_state_dict"]["param_groups"][0]["lr"] == 1e-4
  assert "exp_avg" in ckpt["optimizer_state_dict"]["state"][0]


def test_writer_round_trip(tmp_path):
  obj = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
         "y": np.array([1, -5], np.int64), "nested": [1, 2.5, "s", None, True, (3, 4)],
         "big": 2**40}
  path = tmp_path / "rt.pt"
  data.save_torch_file(obj, path)
  got = data.load_torch_file(path)
  np.testing.assert_array_equal(got["x"], obj["x"])
  np.testing.assert_array_equal(got["y"], obj["y"])
  assert got["nested"] == [1, 2.5, "s", None, True, (3, 4)] and got["big"] == 2**40
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def _write_pickle_archive(path, payload: bytes):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", payload)
    z.writestr("archive/version", "3\n")


class _Evil:
  def __init__(self, cmd):
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


def test_refuses_os_system_and_nothing_runs(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  _write_pickle_archive(path, pickle.dumps({"x": _Evil(f"touch {marker}")}, protocol=2))
  with pytest.raises(data.UnsafePickleError) as e:
    data.load_torch_file(path)
  assert not marker.exists()
  msg = str(e.value)
  assert str(path) in msg and "system" in msg and "nothing was executed" in msg
  assert e.value.field in ("posix.system", "os.system")


@pytest.mark.parametrize("module,name", [("builtins", "exec"), ("builtins", "eval"),
                                         ("subprocess", "Popen"), ("torch", "load")])
def test_refuses_other_globals(tmp_path, module, name):
  payload = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nX\x01\x00\x00\x001\x85R."
  path = tmp_path / "bad.pt"
  _write_pickle_archive(path, payload)
  with pytest.raises(data.UnsafePickleError, match=f"{module}.{name}"):
    data.load_torch_file(path)


def test_truncated_file_is_named(tmp_path):
  good = tmp_path / "good.pt"
  data.save_torch_file({"x": np.zeros((4, 4), np.float32)}, good)
  raw = good.read_bytes()
  bad = tmp_path / "truncated.pt"
  bad.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(data.DataError, match="truncated.pt.*(truncated|corrupt)"):
    data.load_torch_file(bad)


def test_corrupt_storage_size_is_detected(tmp_path):
  path = tmp_path / "short.pt"
  data.save_torch_file({"x": np.zeros((4, 4), np.float32)}, path)
  with zipfile.ZipFile(path) as z:
    records = {n: z.read(n) for n in z.namelist()}
  records["archive/data/0"] = records["archive/data/0"][:10]
  with zipfile.ZipFile(path, "w") as z:
    for n, raw in records.items():
      z.writestr(n, raw)
  with pytest.raises(data.DataError, match="short.pt.*corrupt"):
    data.load_torch_file(path)


def test_legacy_or_non_zip_file(tmp_path):
  path = tmp_path / "legacy.pt"
  buf = io.BytesIO()
  pickle.dump({"x": 1}, buf)
  path.write_bytes(buf.getvalue())
  with pytest.raises(data.DataError, match="legacy.pt"):
    data.load_torch_file(path)
