"""Scale: the joint schedule, data parallelism over devices and multi-host training.

Multi-device checks run in subprocesses: the device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), and conftest pins this process to 1.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from experiments.configs import synthetic as synthetic_cfg
from gmr import allocation as A
from gmr import data as data_lib
from gmr import train as T
from gmr import evaluate as evaluate_lib
from gmr import schedule as schedule_lib
from gmr import step as step_lib
from tests import test_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(method="gumbel_matrix", **kw):
  return test_train.tiny(synthetic_cfg, method, **{
      **dict(num_rounds=20, log_every=10, rounds_per_call=10), **kw})


@pytest.mark.parametrize("method", ["gumbel_matrix", "taps"])
def test_joint_step_is_one_update_with_the_summed_task_gradients(method):
  c = tiny(method, schedule="joint", taps_lambda=0.0)
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  state = T.init_state(setup, jax.random.key(0))
  n, b = setup.num_tasks, c.batch_size
  x = np.stack([suite.train.task(t)[0][:b] for t in range(n)])
  y = np.stack([suite.train.task(t)[1][:b] for t in range(n)])
  key = jax.random.key(3)
  new, losses = jax.jit(step_lib.make_joint_step(setup, c))(state, x, y, key)

  # reference: each task on its own (no vmap), with the joint step's per-task keys
  keys = jax.random.split(key, n)
  temperature = A.temperature(state.step, c.t_init, c.t_min)

  def task_objective(params, t):
    k_alloc, k_drop = jax.random.split(keys[t])
    rows = setup.method.train_rows(params["alloc"], k_alloc, t, temperature)
    model = setup.method.adapt(params["model"], params["alloc"], t)
    out = setup.net.apply({"params": model}, x[t], rows, t, train=True, rngs={"dropout": k_drop})
    loss = step_lib.task_loss(setup.loss, out, y[t])[0].mean()
    return loss + setup.method.penalty(params["alloc"], t), loss

  grads, ref_losses = [], []
  for t in range(n):
    g, l = jax.grad(task_objective, has_aux=True)(state.params, t)
    grads.append(g)
    ref_losses.append(l)
  total = jax.tree.map(lambda *gs: sum(gs), *grads)
  updates, _ = setup.tx.update(total, state.opt_state, state.params)
  expected = optax.apply_updates(state.params, updates)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert int(new.step) == n  # step still counts task batches
  for a, e in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)
  # every component, allocation logit and TAPS delta moved (TAPS scores start still: their
  # gradient <dL/dW, dW> is 0 while dW = 0, and lambda is 0 here)
  old = dict(jax.tree_util.tree_leaves_with_path(state.params))
  moved = {jax.tree_util.keystr(p): not np.allclose(a, old[p])
           for p, a in jax.tree_util.tree_leaves_with_path(new.params) if "scores" not in str(p)}
  assert all(moved.values()), moved


def test_joint_schedule_scans_rounds_and_lowers_the_loss():
  c = tiny(schedule="joint", num_rounds=60, log_every=20, rounds_per_call=20)
  suite = data_lib.load_suite(c)
  logs = []
  setup, state, final, _ = T.train(c, suite, on_event=lambda e: logs.append(e))
  assert int(state.step) == 60 * setup.num_tasks
  train_losses = [e.data["train_loss_mean"] for e in logs if e.kind == "log"]
  assert len(train_losses) == 3 and train_losses[-1] < 0.7 * train_losses[0]
  # the scanned run equals the same rounds stepped one jitted call at a time
  run = schedule_lib.make_run_steps(setup, c)
  step = jax.jit(step_lib.make_joint_step(setup, c))
  s0 = T.init_state(setup, jax.random.key(1))
  sampler = schedule_lib.BatchSampler(jax.random.key(2), suite.train, c.batch_size)
  tasks, idx = sampler.round_robin(np.tile(np.arange(4, dtype=np.int32), (3, 1)), 0)
  key = jax.random.key(5)
  s1 = s0
  for r in range(3):
    ix = idx[r * 4:(r + 1) * 4]
    s1, _ = step(s1, suite.train.x[ix], suite.train.y[ix], jax.random.fold_in(key, s1.step))
  s2, losses = run(jax.tree.map(lambda a: a.copy(), s0), suite.train.x, suite.train.y, tasks, idx, key)
  assert losses.shape == (12,)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


_MULTI_DEVICE = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import json, jax, numpy as np
    from experiments.benchmark import random_suite
    from experiments.configs import four_mnists, synthetic
    from gmr import data as data_lib, schedule as schedule_lib, train as T

    def synth(**kw):
      c = synthetic.get_config("gumbel_matrix")
      c.synthetic.num_train, c.synthetic.num_test, c.synthetic.d = 640, 200, 16
      c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call, c.batch_size = 12, 6, 0, 6, 32
      c.update(kw)
      return c, data_lib.load_suite(c)

    def conv(**kw):
      c = four_mnists.get_config("gumbel_matrix")
      c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call, c.batch_size = 4, 2, 0, 2, 8
      c.eval_batch_size = 64
      c.update(kw)
      return c, random_suite("four_mnists", 64)

    out = {}
    for name, make in (("synthetic", synth), ("four_mnists", conv)):
      for sched in ("round_robin", "joint"):
        if name == "four_mnists" and sched == "joint":
          continue
        res = {}
        for dp in (1, 4):
          c, suite = make(schedule=sched, data_parallel=dp)
          setup, st, final, _ = T.train(c, suite)
          res[dp] = (st, final["test"]["loss"]["mean"])
        diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                   zip(jax.tree.leaves(res[1][0].params), jax.tree.leaves(res[4][0].params)))
        shard = res[4][0].params["alloc"]["layer_0"].sharding
        out[f"{name}/{sched}"] = dict(diff=diff, loss1=res[1][1], loss4=res[4][1],
                                      devices=len(shard.device_set))
    # the data-parallel program really splits the batch: its gradients are all-reduced
    c, suite = synth(data_parallel=4)
    setup = T.make_setup(c, suite)
    mesh = schedule_lib.make_mesh(c)
    st = schedule_lib.replicate(T.init_state(setup, jax.random.key(0)), mesh)
    idx = np.zeros((4, 32), np.int32)
    hlo = schedule_lib.make_run_steps(setup, c, mesh).lower(
        st, suite.train.x, suite.train.y, np.arange(4, dtype=np.int32), idx,
        jax.random.key(0)).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    print("RESULT " + json.dumps(out))
""")


def _python(code, env_extra=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.equivalence
def test_data_parallel_over_four_devices_equals_one_device():
  p = _python(_MULTI_DEVICE)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.split("RESULT ", 1)[1])
  assert out["all_reduce"]
  for name in ("synthetic/round_robin", "synthetic/joint", "four_mnists/round_robin"):
    r = out[name]
    assert r["devices"] == 4, (name, r)
    assert r["diff"] < 1e-4, (name, r)
    assert abs(r["loss1"] - r["loss4"]) < 1e-4 * max(1.0, abs(r["loss1"])), (name, r)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_host_run_through_the_cli_equals_one_device(tmp_path):
  """Two processes (2 CPU devices each) joined by jax.distributed: one 4-way data-parallel
  run, written by process 0, with the numbers of a one-device run."""
  flags = ["--config=experiments/configs/synthetic.py", "--config.synthetic.num_train=640",
           "--config.synthetic.num_test=200", "--config.synthetic.d=16",
           "--config.num_rounds=12", "--config.log_every=6", "--config.rounds_per_call=6",
           "--config.batch_size=32"]
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  wd = tmp_path / "two_hosts"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.main", *flags, "--config.data_parallel=0",
       f"--workdir={wd}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}", "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in (1, 0)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), logs
  multi = json.load(open(wd / "results.json"))
  c = tiny(num_rounds=12, log_every=6, rounds_per_call=6)
  _, state, final, _ = T.train(c, data_lib.load_suite(c))
  np.testing.assert_allclose(multi["final"]["loss"]["mean"], final["test"]["loss"]["mean"],
                             rtol=1e-5)
  probs = evaluate_lib.allocation_summary(T.make_setup(c, data_lib.load_suite(c)), state.params,
                               ["t"] * 4)["probabilities"]
  np.testing.assert_allclose(multi["probabilities"]["layer_0"], probs["layer_0"], atol=1e-5)
  assert sorted(os.listdir(wd / "checkpoints")) == ["12"]


def test_benchmark_writes_a_table_with_every_row(tmp_path):
  out = tmp_path / "BENCH.md"
  p = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--arch=synthetic", "--joint",
                      "--reference", "--rounds=2", "--repeats=1", f"--write={out}"], cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  rows = [l.split("|")[1:-1] for l in out.read_text().splitlines() if l.startswith("| synthetic")]
  assert [r[1].strip() for r in rows] == ["ours", "ours joint (auto)", "reference"]
  # synthetic forward: 4 MLPs 128 -> 16 -> 16 -> 1 over 16 examples, 2 FLOPs per multiply-add
  forward_mflop = 2 * 4 * 16 * (128 * 16 + 16 * 16 + 16) / 1e6
  for r in rows:
    steps, mflop, gflops = float(r[2]), float(r[4]), float(r[5])
    assert steps > 0 and float(r[3]) == pytest.approx(16 * steps, rel=0.01)
    assert 2.0 <= mflop / forward_mflop <= 3.5  # forward + backward, from XLA's cost analysis
    assert gflops == pytest.approx(mflop * steps / 1e3, rel=0.1, abs=0.1)  # rounded columns
  assert rows[-1][8].strip() == "1.0x"
  cmd = [l for l in out.read_text().splitlines() if l.startswith("Command: `")]
  assert len(cmd) == 1 and "python -m experiments.benchmark --arch=synthetic" in cmd[0]


def test_benchmark_sections_replace_only_their_own_part(tmp_path):
  from experiments import benchmark
  path = str(tmp_path / "B.md")
  benchmark.write_table(path, "| top |\n\nCommand: `a`\n")
  benchmark.write_table(path, "| conv 1 |\n", section="conv")
  benchmark.write_table(path, "| gpu 1 |\n", section="gpu")
  benchmark.write_table(path, "| conv 2 |\n", section="conv")  # replaces the conv section only
  text = open(path).read()
  assert text.startswith("# Training throughput\n\nGenerated by the commands below")
  assert text.index("| top |") < text.index("## conv\n\n| conv 2 |") < text.index("## gpu\n\n| gpu 1 |")
  assert "conv 1" not in text and text.count("## ") == 2 and text.endswith("| gpu 1 |\n")
  benchmark.write_table(path, "| top 2 |\n")  # no section: the top table only
  text = open(path).read()
  assert "| top |" not in text and text.index("| top 2 |") < text.index("## conv\n\n| conv 2 |")
  assert text.count("## ") == 2 and text.endswith("| gpu 1 |\n")
