"""Fork safety: after the parent ran a multi-threaded kernel, forked children must not hang.

GNU OpenMP is not fork-safe: a child's first multi-threaded parallel region waits forever for the parent's
pool threads. fastnorm's ``os.register_at_fork`` handler drops a forked child to one thread. Every scenario
runs in a fresh interpreter under a hard timeout, so a hang fails the test instead of stalling the suite.
The parent is forced onto 2 threads with a shape above ``SERIAL_BELOW`` so the bug really is exercised.
A child (1 thread) runs the same kernels on the same data as the parent (2 threads): its results must be
bitwise the parent's, since every kernel is thread-count invariant (tests/contracts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fastnorm

# the children import the fastnorm this test process imported (a build in place or an installed package)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnorm.__file__)))

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")

# The parent: 2 threads, one multi-threaded LayerNorm, BatchNorm and SGD step (so libgomp's pool exists).
PARENT = """
import os, sys, warnings
import numpy as np
import fastnorm
import fastnorm._dispatch as d

fastnorm.set_num_threads(2)
X = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
assert X.size > d.SERIAL_BELOW and d.CPU.threads(X.size) == 2, "the parent must run multi-threaded"


def work(seed=0):
    x = X + np.float32(seed)
    y = fastnorm.layer_norm_forward(x).y
    bn = fastnorm.batch_norm_forward(x.reshape(64, 4, 512), training=True).y
    p, g = x.copy(), np.ones_like(x)
    fastnorm.optim.sgd_step([p], [g], lr=0.5)
    return float(np.abs(y).sum()), float(np.abs(bn).sum()), float(p[0, 0])


REF = work()


# Fork; the child runs check() and exits 0 if it returns, 1 (printing the error) if it raises. The parent
# waits and returns the child's exit status.
def in_child(check):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            check()
            code = 0
        except BaseException as e:
            print("child failed:", repr(e), flush=True)
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
"""


def _run(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run PARENT + body in a fresh interpreter; a hang past ``timeout`` fails the test.

    The interpreter gets its own process group, killed as a whole on timeout, so hung forked children do
    not outlive the test.
    """
    code = textwrap.dedent(PARENT) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout}s (a forked child hung in an OpenMP kernel)\n{out}\n{err}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {out}\nstderr: {err}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_raw_fork_child_runs_single_threaded():
    r = _run(
        """
        def grandchild():
            assert fastnorm.get_num_threads() == 1 and work()

        def child():
            got = work()  # hangs here without the fork handler
            assert fastnorm.get_num_threads() == 1, fastnorm.get_num_threads()
            assert got == REF, (got, REF)  # thread-count invariance: bitwise the parent's 2-thread result
            fastnorm.set_num_threads(1)  # an explicit 1 is fine and silent
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                fastnorm.set_num_threads(2)  # honoured (as torch), with a warning (not run: it would hang)
            assert fastnorm.get_num_threads() == 2
            assert any(issubclass(x.category, RuntimeWarning) and "fork" in str(x.message) for x in w), w
            fastnorm.set_num_threads(1)
            work()
            # a grandchild forked after the child went back to 1 thread is single-threaded too
            assert in_child(grandchild) == 0

        status = in_child(child)
        assert status == 0, status
        assert fastnorm.get_num_threads() == 2  # the parent keeps its setting
        assert work() == REF
        print("ok")
        """
    )
    assert r.stdout.strip().endswith("ok")


def test_multiprocessing_fork_pool():
    r = _run(
        """
        import multiprocessing as mp

        def task(i):
            return fastnorm.get_num_threads(), work(i)

        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as pool:
                res = pool.map(task, range(4), chunksize=1)
            for i, (nt, got) in enumerate(res):
                assert nt == 1, nt
                assert got == work(i), (i, got)  # 1 thread here, 2 in the parent: bitwise equal
            print("ok")
        """
    )
    assert r.stdout.strip().endswith("ok")


def test_torch_dataloader_fork_workers():
    pytest.importorskip("torch")
    r = _run(
        """
        import torch
        from torch.utils.data import DataLoader, Dataset

        class Data(Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                y = fastnorm.layer_norm_forward(X + np.float32(i)).y
                return torch.from_numpy(y[:1].copy()), fastnorm.get_num_threads()

        if __name__ == "__main__":
            loader = DataLoader(Data(), batch_size=1, num_workers=2, multiprocessing_context="fork")
            got = list(loader)
            assert len(got) == 4
            for i, (y, nt) in enumerate(got):
                assert int(nt) == 1
                ref = fastnorm.layer_norm_forward(X + np.float32(i)).y[:1]
                assert np.array_equal(y[0].numpy(), ref)
            print("ok")
        """
    )
    assert r.stdout.strip().endswith("ok")


def test_forked_flag_set_in_this_process_only():
    assert not fastnorm._dispatch._forked_child


def test_fork_after_16bit_kernels_and_losses():
    """A child forked after 2-thread calls of the 16-bit norm kernels (bfloat16 and float16), the fused
    softmax cross-entropy and batched Sinkhorn runs them again, single-threaded, to the parent's results."""
    r = _run(
        """
        import ml_dtypes

        HALVES = [X.astype(ml_dtypes.bfloat16), X.astype(np.float16)]
        LOGITS, TARGET = X[:, :160].copy(), np.arange(256) % 160
        grid = np.linspace(0.0, 1.0, 96)
        COST = np.broadcast_to((grid[:, None] - grid[None, :]) ** 2, (4, 96, 96)).astype(np.float32)
        MASS = np.full(96, 1 / 96, np.float32)
        assert LOGITS.size > d.SERIAL_BELOW and COST.size > d.SERIAL_BELOW


        def work16():
            out = []
            for x in HALVES:
                ln = fastnorm.layer_norm_forward(x)
                out += [ln.y, fastnorm.layer_norm_backward(x, x, ln.mean, ln.rstd).dx]
                out.append(fastnorm.rms_norm_forward(x).y)
                out.append(fastnorm.batch_norm_forward(x.reshape(64, 4, 512)).y)
                out.append(fastnorm.add_rms_norm_forward(x, x).y)
            ce = fastnorm.softmax_cross_entropy_forward(LOGITS, TARGET, grad="out")
            out += [ce.loss, ce.grad]
            out.append(fastnorm.sinkhorn(MASS, MASS, COST, 0.05, max_iter=40).value)
            return [np.asarray(o, np.float64) for o in out]


        def child():
            got = work16()  # hangs here without the fork handler
            assert fastnorm.get_num_threads() == 1, fastnorm.get_num_threads()
            for i, (g, want) in enumerate(zip(got, work16.ref)):
                assert np.array_equal(g, want), i


        work16.ref = work16()
        status = in_child(child)
        assert status == 0, status
        print("ok")
        """
    )
    assert r.stdout.strip().endswith("ok")
