"""A fork server for the binaries the tests run (:func:`tests.binaries.run`).

A binary in a fresh interpreter spends seconds importing JAX, Flax, orbax, matplotlib and
the library before it reads its flags (a tiny train.py: 3.6 s forked, 5.5 s fresh), and
the suite runs binaries some hundred times. This process imports them once, initialises no
JAX backend, and forks one child per request: the child starts from those imported modules
(no device, no flags, no compiled program), takes the request's argv, environment,
working directory and output files, and runs the script as ``__main__``, as ``python
script.py`` would. The variables read while modules import (JAX's config, XLA, matplotlib:
``tests.binaries.IMPORT_TIME``) are the server's own; the caller starts another server when
its values differ.

Protocol (one JSON line each way, on stdin/stdout): ``{"argv", "env", "cwd", "stdout",
"stderr"}`` → ``{"pid"}`` when the child starts, then ``{"returncode"}`` when it ends.
"""

import json
import os
import runpy
import sys
import traceback


def _preload():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  # pylint: disable=import-outside-toplevel,unused-import
  import matplotlib.pyplot
  import pandas
  import sklearn.linear_model
  import jax
  import flax.linen
  import optax
  import orbax.checkpoint
  import ml_collections
  import tensorboardX
  from fusion_jax import (analysis, checkpoint, evaluation, experiment, models, plots,
                          reports, training)
  import jax._src.xla_bridge as xla_bridge
  assert not xla_bridge._backends, "the server must not initialise a JAX backend"  # pylint: disable=protected-access


def _child(request) -> None:
  """Runs in the forked child: becomes ``python argv[0] argv[1:]`` and never returns."""
  code = 1
  try:
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    for name, path in (("stdout", request["stdout"]), ("stderr", request["stderr"])):
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(fd, 1 if name == "stdout" else 2)
      os.close(fd)
    sys.stdin = open(os.devnull, encoding="utf-8")  # pylint: disable=consider-using-with
    os.dup2(sys.stdin.fileno(), 0)
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))   # as `python script.py`
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if e.code is not None and not isinstance(e.code, int):
      print(e.code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def main() -> None:
  _preload()
  reply = sys.stdout
  sys.stdout = sys.stderr   # nothing else may write to the reply channel
  print(json.dumps({"ready": True}), file=reply, flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      sys.stdout = sys.__stdout__
      _child(request)
    print(json.dumps({"pid": pid}), file=reply, flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=reply,
          flush=True)


if __name__ == "__main__":
  main()
