"""Data parallelism on 8 CPU devices: the same step gives the same numbers as one device.

JAX reads the device count at start-up, so the check runs in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from fusion_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = textwrap.dedent("""
    import jax, numpy as np
    from fusion_jax import configs, data, experiment, sharding, steps
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    n = 16
    split = data.Split("t", [rng.standard_normal((int(k), 16)).astype(np.float32)
                             for k in rng.integers(1, 30, n)],
                       [rng.standard_normal((int(k), 16)).astype(np.float32)
                        for k in rng.integers(1, 6, n)], rng.integers(0, 7, n))
    cfg = configs.tiny()
    cfg.eval.batch_size = 8
    shapes = data.plan_shapes([split], 1, batch_size=8)
    batches = list(data.iterate_batches(split, shapes, 8, shuffle=True, seed=0))
    out = {}
    for ndev in (1, 8):
      cfg.runtime.num_devices = ndev
      exp = experiment.Experiment.create(cfg, [str(k) for k in range(7)], train=split)
      assert exp.mesh.devices.size == ndev
      st = exp.steps("cross_attention")
      state = sharding.replicate(st.init_state(jax.random.key(0), 1e-3), exp.mesh)
      acc = sharding.replicate(steps.zero_metrics(), exp.mesh)
      losses = []
      for b in batches:
        before = float(jax.device_get(acc["loss_sum"]))
        state, acc = exp.ledger(st.train, state, acc, exp.shard(b), jax.random.key(1))
        losses.append(float(jax.device_get(acc["loss_sum"])) - before)
      ev = exp.evaluate_split(st, state.params, split, shapes)
      params = jax.device_get(state.params)
      out[ndev] = (jax.device_get(acc), params, ev, losses)
      if ndev == 8:
        leaf = jax.tree_util.tree_leaves(state.params)[0]
        assert len(leaf.sharding.device_set) == 8, leaf.sharding
    a1, p1, e1, l1 = out[1]
    a8, p8, e8, l8 = out[8]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)  # every step's loss
    assert a8["count"] == a1["count"] == n
    # Weights agree to rounding; attention key biases have an exactly zero gradient
    # (softmax ignores them), so Adam turns rounding noise into +-lr steps there.
    flat1 = jax.tree_util.tree_flatten_with_path(p1)[0]
    flat8 = dict(jax.tree_util.tree_flatten_with_path(p8)[0])
    for path, x in flat1:
      name = jax.tree_util.keystr(path)
      if "['key']['bias']" not in name:
        np.testing.assert_allclose(flat8[path], x, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(e8["confusion"], e1["confusion"])
    np.testing.assert_allclose(e8["loss"], e1["loss"], rtol=1e-5)
    print("SHARDING_OK", float(a1["loss_sum"]), float(a8["loss_sum"]))
""")


def test_eight_cpu_devices_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                        cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert "SHARDING_OK" in proc.stdout


def test_batch_size_must_divide_devices():
  mesh = sharding.make_mesh(1)
  sharding.check_batch_size(32, mesh)
  fake = type("M", (), {"devices": type("D", (), {"size": 8})()})()
  with pytest.raises(ValueError, match="batch size 12 is not divisible by the 8 devices"):
    sharding.check_batch_size(12, fake)
  with pytest.raises(ValueError, match="asked for 99 devices"):
    sharding.make_mesh(99)
