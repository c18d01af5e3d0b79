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


# ------------------------------------------------------------------ crafted files (issue 17)
from fusion_jax.data import torch_pickle  # pylint: disable=wrong-import-position


def _archive(path, pkl: bytes, records=(), compress=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pkl)
    for name, raw in records:
      z.writestr(f"archive/data/{name}", raw, compress_type=compress)


def _tensor_pickle(size, stride, numel, storage="FloatStorage") -> bytes:
  """``_rebuild_tensor_v2`` of storage ``0`` with any size and stride (a crafted header)."""
  w = torch_pickle._PickleWriter()  # pylint: disable=protected-access
  w.out.write(b"\x80\x02")
  w._global("torch._utils", "_rebuild_tensor_v2")  # pylint: disable=protected-access
  w.out.write(b"((")
  w._save("storage")  # pylint: disable=protected-access
  w._global("torch", storage)  # pylint: disable=protected-access
  for item in ("0", "cpu", numel):
    w._save(item)  # pylint: disable=protected-access
  w.out.write(b"tQ")
  for item in (0, tuple(size), tuple(stride), False):
    w._save(item)  # pylint: disable=protected-access
  w._global("collections", "OrderedDict")  # pylint: disable=protected-access
  w.out.write(b")RtR.")
  return w.out.getvalue()


def test_a_poisoned_file_cannot_change_how_later_files_decode(tmp_path):
  """GLOBAL torch.FloatStorage + BUILD {'dtype': int32}: refused, and later files are fine."""
  clean = tmp_path / "clean.pt"
  x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
  data.save_torch_file({"x": x}, clean)
  poison = (b"\x80\x02ctorch\nFloatStorage\n}(X\x05\x00\x00\x00dtypecnumpy\ndtype\n"
            b"(X\x02\x00\x00\x00i4\x89\x88tRub.")
  _archive(tmp_path / "poison.pt", poison)
  with pytest.raises(data.UnsafePickleError) as e:
    data.load_torch_file(tmp_path / "poison.pt")
  assert "poison.pt, field 'data.pkl'" in str(e.value) and "BUILD" in str(e.value)
  np.testing.assert_array_equal(data.load_torch_file(clean)["x"], x)   # still float32
  # Even a BUILD that got through could not reach another load: storage types are fresh.
  a = torch_pickle._RestrictedUnpickler.find_class(None, "torch", "FloatStorage")  # pylint: disable=protected-access
  with pytest.raises(pickle.UnpicklingError):
    a.dtype = np.dtype(np.int32)


@pytest.mark.parametrize("size,stride", [((2**20, 2**20), (0, 0)),        # ~4 TiB claimed
                                         ((3 * 2**28,), (0,))])           # 3 GiB claimed
def test_zero_strides_cannot_claim_more_than_the_storage(tmp_path, size, stride):
  path = tmp_path / "huge.pt"
  _archive(path, _tensor_pickle(size, stride, 1), [("0", b"\x00" * 4)])
  with pytest.raises(data.UnsafePickleError, match="huge.pt.*claims more elements than its "
                     "storage holds"):
    data.load_torch_file(path)


def test_a_record_claiming_more_bytes_than_it_has_is_refused_before_reading(tmp_path):
  path = tmp_path / "claims.pt"
  _archive(path, _tensor_pickle((2**30,), (1,), 2**30), [("0", b"\x00" * 8)])
  with pytest.raises(data.DataError, match="claims.pt.*holds 8 bytes, expected 4294967296"):
    data.load_torch_file(path)


def test_numpy_reconstruct_cannot_allocate_any_shape(tmp_path):
  w = torch_pickle._PickleWriter()  # pylint: disable=protected-access
  w.out.write(b"\x80\x02")
  w._global("numpy._core.multiarray", "_reconstruct")  # pylint: disable=protected-access
  w.out.write(b"(")
  w._global("numpy", "ndarray")  # pylint: disable=protected-access
  w._save((10**12,))  # pylint: disable=protected-access
  w._latin1(b"b")  # pylint: disable=protected-access
  w.out.write(b"tR.")
  _archive(tmp_path / "nd.pt", w.out.getvalue())
  with pytest.raises(data.UnsafePickleError, match="nd.pt.*_reconstruct"):
    data.load_torch_file(tmp_path / "nd.pt")
  call = b"\x80\x02cnumpy\nndarray\n(J\x00\x10\x00\x00\x85tR."   # ndarray((4096,))
  _archive(tmp_path / "nd2.pt", call)
  with pytest.raises(data.DataError, match="nd2.pt"):
    data.load_torch_file(tmp_path / "nd2.pt")


def test_compressed_records_are_refused_before_inflating(tmp_path):
  path = tmp_path / "bomb.pt"
  n = 2**22   # 16 MiB of zeros deflate to a few KiB
  _archive(path, _tensor_pickle((n,), (1,), n), [("0", b"\x00" * (4 * n))],
           compress=zipfile.ZIP_DEFLATED)
  assert path.stat().st_size < 100_000
  with pytest.raises(data.UnsafePickleError, match="bomb.pt.*compressed"):
    data.load_torch_file(path)


def test_directories_and_legacy_files_get_one_clear_line(tmp_path):
  with pytest.raises(data.DataError, match="is a directory"):
    data.load_torch_file(tmp_path)
  legacy = tmp_path / "old.pt"
  legacy.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.")
  with pytest.raises(data.DataError, match="old.pt.*legacy.*re-save it with torch >= 1.6"):
    data.load_torch_file(legacy)


def test_tensors_sharing_a_storage_are_not_aliased(tmp_path):
  """The first tensor covering a whole storage takes the freshly read array itself; a
  second one over the same storage gets its own copy."""
  one = _tensor_pickle((2, 2), (2, 1), 4)[2:-1]   # (without protocol header and STOP)
  path = tmp_path / "shared.pt"
  _archive(path, b"\x80\x02(" + one + one + b"t.", [("0", np.arange(4, dtype=np.float32)
                                                      .tobytes())])
  a, b = data.load_torch_file(path)
  np.testing.assert_array_equal(a, [[0, 1], [2, 3]])
  np.testing.assert_array_equal(b, a)
  a[0, 0] = 7
  assert b[0, 0] == 0 and a.flags.writeable


def test_a_flipped_bit_in_tensor_data_is_caught(tmp_path):
  path = tmp_path / "flipped.pt"
  x = np.ones(64, np.float32)
  data.save_torch_file({"x": x}, path)
  raw = bytearray(path.read_bytes())
  raw[raw.find(x.tobytes()) + 5] ^= 1
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DataError, match=r"flipped.pt.*corrupt.*CRC"):
    data.load_torch_file(path)
  # a tensor record whose local header is not one (read straight from its offset)
  data.save_torch_file({"x": x}, path)
  with zipfile.ZipFile(path) as z:
    offset = z.getinfo("archive/data/0").header_offset
  raw = bytearray(path.read_bytes())
  raw[offset:offset + 4] = b"XXXX"
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DataError, match=r"flipped.pt.*corrupt.*bad local header of "
                     "archive/data/0"):
    data.load_torch_file(path)
