"""The compile ledger releases executables: on request, and by itself near the process' limits."""

import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax import ledger
from fusion_jax.steps import StepFn


def _step(owner):
  return StepFn("add", (owner,), jax.jit(lambda x: x + 1.0))


def test_guard_releases_other_models_near_the_mapping_limit_and_says_so():
  state = {"maps": 100}
  lines = []
  led = ledger.CompileLedger(log=lines.append, resources=lambda: ledger.Resources(
      mappings=state["maps"], max_mappings=1000, available_bytes=8 << 30))
  a, b = _step("a"), _step("b")
  np.testing.assert_allclose(led(a, jnp.ones(3)), 2.0)
  led(a, jnp.ones(4))
  assert len(led) == 2 and not lines
  state["maps"] = 900   # above 75 % of the limit: b's compile releases a's two programs
  np.testing.assert_allclose(led(b, jnp.ones(3)), 2.0)
  assert [e.owner for e in led.entries()] == [("b",)] and led.released == 2
  assert len(lines) == 1 and "900 memory mappings" in lines[0] and "released 2" in lines[0]


def test_forget_drops_one_owner_or_all_and_frees_live_executables():
  led = ledger.CompileLedger(limits=None)
  for owner in ("a", "b"):
    for n in (3, 5):
      led(_step(owner), jnp.ones(n))
  held = ledger.live_executables()
  assert led.forget(("a",)) == 2 and [e.owner for e in led.entries()] == [("b",)] * 2
  assert led.forget() == 2 and len(led) == 0
  assert ledger.live_executables() <= held - 4   # (other tests' programs may stay alive)


def test_resources_read_from_proc():
  r = ledger.process_resources()
  assert r.mappings > 0 and r.max_mappings > 0 and r.rss_bytes > 0
  assert "mappings" in r.describe() and "GB resident" in r.describe()
