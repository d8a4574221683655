"""Data parallelism over many processes: launch detection, the communicators, batch splitting, faults.

The tests that need several processes start ``mpiexec -n 2 python tests/test_distributed.py SCENARIO``: this
file is also the program each rank runs (see ``SCENARIOS`` at the end). They skip, saying so, only where
mpi4py or mpiexec is missing (``pip install -e '.[mpi]'`` brings both).
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from npvit.distributed import (
    DistributedError,
    MPIUnavailableError,
    SingleProcess,
    check_batch_size,
    connect,
    detect_launch,
    gradient_weight,
    rank_slice,
    stop_all_on_error,
)
from npvit.distributed.nccl import NCCLCommunicator, select_device
from npvit.distributed.watchdog import Watchdog, timeout_from_environment

HERE = Path(__file__).resolve()
MPIEXEC = shutil.which("mpiexec")
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or not HAS_MPI4PY,
    reason="needs mpi4py and mpiexec for 2-process runs (pip install -e '.[mpi]'): "
           f"mpiexec {'found' if MPIEXEC else 'missing'}, mpi4py {'found' if HAS_MPI4PY else 'missing'}")
LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_", "PMI_", "PMIX_", "MPI_LOCAL", "SLURM_", "HYDRA_")


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARIABLES)}
    env.update(extra)
    return env


# ---- launch detection ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}, ("mpiexec (MPICH Hydra)", 1, 4, 1)),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
     ("mpiexec (Open MPI)", 3, 8, 1)),
    ({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16"},
     ("srun (Slurm)", 5, 16, 1)),
    # A batch script is task 0 of the allocation: a python started there directly runs alone.
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "77"}, None),
    # mpiexec inside a Slurm job: the ranks inherit its daemons' Slurm variables; MPI's own count wins.
    ({"PMI_RANK": "2", "PMI_SIZE": "4", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"},
     ("mpiexec (MPICH Hydra)", 2, 4, None)),
])
def test_detect_launch(environ, expected) -> None:
    launch = detect_launch(environ)
    if expected is None:
        assert launch is None
    else:
        assert (launch.launcher, launch.rank, launch.size, launch.local_rank) == expected


@pytest.mark.parametrize("environ, message", [
    ({"PMI_RANK": "x", "PMI_SIZE": "2"}, "PMI_RANK='x', which is not a whole number"),
    ({"PMI_RANK": "2", "PMI_SIZE": "2"}, "below the number of processes"),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "0"}, "OMPI_COMM_WORLD_SIZE=0"),
])
def test_detect_launch_refuses_nonsense(environ, message) -> None:
    with pytest.raises(DistributedError, match=message):
        detect_launch(environ)


def test_single_process_never_imports_mpi4py() -> None:
    code = ("import sys, npvit.distributed as d, npvit.train; c = d.connect(); "
            "assert type(c).__name__ == 'SingleProcess', c; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'; print('ok')")
    for env in (clean_environment(), clean_environment(PMI_RANK="0", PMI_SIZE="1")):  # alone, or mpiexec -n 1
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_several_processes_without_mpi4py_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    monkeypatch.delitem(sys.modules, "npvit.distributed.mpi", raising=False)
    with pytest.raises(MPIUnavailableError) as info:
        connect(environ={"PMI_RANK": "1", "PMI_SIZE": "2"})
    message = str(info.value)
    assert "process 1 of 2 started by mpiexec (MPICH Hydra)" in message
    assert "mpi4py is not installed" in message and "pip install -e '.[mpi]'" in message


# ---- splitting batches ----------------------------------------------------------------------------------------
def test_rank_slices_cut_every_batch_in_order() -> None:
    for size in range(1, 9):
        for count in range(0, 40):
            parts = [rank_slice(count, r, size) for r in range(size)]
            assert parts[0].start == 0 and parts[-1].stop == count
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))  # contiguous, disjoint, in order
            lengths = [p.stop - p.start for p in parts]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
            assert (min(lengths) == 0) == (count < size)
            if count:
                assert sum(gradient_weight(p, count) for p in parts) == pytest.approx(1.0, abs=1e-15)
    assert rank_slice(10, 2, 4) == slice(6, 8) and rank_slice(10, 0, 4) == slice(0, 3)


def test_rank_slice_and_batch_size_errors() -> None:
    with pytest.raises(ValueError, match="rank 2 of 2"):
        rank_slice(10, 2, 2)
    with pytest.raises(ValueError, match="cannot split -1"):
        rank_slice(-1, 0, 2)
    check_batch_size(2, 2)
    with pytest.raises(DistributedError, match="--batch-size 3 is smaller than the 4 processes.*--batch-size 4"):
        check_batch_size(3, 4)


def tiny_float64_model():
    from npvit import ViT, ViTConfig

    cfg = dataclasses.replace(ViTConfig.tiny(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    return ViT(cfg, dtype="float64", seed=3)


def test_weighted_part_gradients_add_up_to_the_global_batch_gradient() -> None:
    """What every rank computes on its part, weighted by b_r / B and summed, is one process's gradient."""
    from npvit import cross_entropy_backward, cross_entropy_forward

    model = tiny_float64_model()
    data = np.random.default_rng(0)
    images, labels = data.standard_normal((11, 8, 8, 3)), data.integers(0, 5, 11)

    def gradients(x, y, weight=1.0):
        _, cache = cross_entropy_forward(model.forward(x, training=True), y)
        model.backward(cross_entropy_backward(cache) * weight)
        return {k: g.copy() for k, g in model.grads.items()}

    full = gradients(images, labels)
    for size in (2, 3, 4):
        total = {k: np.zeros_like(g) for k, g in full.items()}
        for rank in range(size):
            part = rank_slice(len(images), rank, size)
            for k, g in gradients(images[part], labels[part], gradient_weight(part, len(images))).items():
                total[k] += g
        for k in full:
            np.testing.assert_allclose(total[k], full[k], rtol=0, atol=1e-13, err_msg=k)


# ---- the single process and the pieces that need no second process ----------------------------------------------
def test_single_process_communicator() -> None:
    comm = SingleProcess()
    a = np.arange(5.0)
    comm.allreduce_sum(a)
    np.testing.assert_array_equal(a, np.arange(5.0))
    assert comm.allreduce_scalars([1, np.float32(2.5), np.array(3.0)]) == [1.0, 2.5, 3.0]
    assert comm.broadcast({"a": (1, 2)}) == {"a": [1, 2]}  # as N processes see it: through JSON
    comm.barrier()
    with pytest.raises(SystemExit) as info:
        comm.abort(3)
    assert info.value.code == 3
    with pytest.raises(RuntimeError, match="boom"):  # one process: exceptions pass through unchanged
        with stop_all_on_error(comm):
            raise RuntimeError("boom")


def test_evaluation_split_on_one_process_equals_evaluate() -> None:
    from npvit.augment import Augmenter
    from npvit.distributed.evaluation import evaluate_split
    from npvit.evaluate import evaluate

    model = tiny_float64_model()
    augmenter = Augmenter(np.full(3, 120.0), np.full(3, 3000.0), image_size=8, dtype="float64")
    data = np.random.default_rng(1)
    images, labels = data.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8), data.integers(0, 5, 23)
    one, split = evaluate(model, augmenter, images, labels, 7), evaluate_split(SingleProcess(), model, augmenter,
                                                                               images, labels, 7)
    assert split.loss == pytest.approx(one.loss, rel=1e-14)
    assert (split.top1, split.top5) == (one.top1, one.top5)
    np.testing.assert_array_equal(split.per_class, one.per_class)


def test_watchdog_names_the_rank_and_leaves_quick_waits_alone() -> None:
    fired: list[str] = []
    dog = Watchdog(0.2, rank=1, size=4, on_expiry=fired.append)
    with dog.guard("a quick wait"):
        pass
    time.sleep(0.4)
    assert fired == []
    with dog.guard("the gradient sum"):
        time.sleep(0.8)
    assert len(fired) == 1
    assert "rank 1 of 4" in fired[0] and "0.2 s in the gradient sum" in fired[0]
    assert "NPVIT_COLLECTIVE_TIMEOUT" in fired[0]


def test_watchdog_timeout_from_environment() -> None:
    assert timeout_from_environment({}) == 600.0
    assert timeout_from_environment({"NPVIT_COLLECTIVE_TIMEOUT": "0"}) == 0.0
    assert timeout_from_environment({"NPVIT_COLLECTIVE_TIMEOUT": "2.5"}) == 2.5
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ValueError, match="NPVIT_COLLECTIVE_TIMEOUT"):
            timeout_from_environment({"NPVIT_COLLECTIVE_TIMEOUT": bad})


class FakeCuda:
    """The few pieces of ``cupy.cuda`` the GPU code touches: device count, device choice, current stream."""

    def __init__(self, devices: int) -> None:
        self.used: list[int] = []
        self.synchronized = 0
        self.runtime = types.SimpleNamespace(getDeviceCount=lambda: devices)
        cuda = self

        class Device:
            def __init__(self, index: int) -> None:
                self.index = index

            def use(self) -> None:
                cuda.used.append(self.index)

        class Stream:
            ptr = 0xC0FFEE

            def synchronize(self) -> None:
                cuda.synchronized += 1

        self.Device, self._stream = Device, Stream()

    def get_current_stream(self):
        return self._stream


@pytest.mark.parametrize("devices, local_rank, local_size, chosen", [
    (1, 3, 4, 0),   # the launcher gave each process its own GPU
    (4, 2, 4, 2),   # one process per GPU of the node
    (8, 1, 2, 1),
])
def test_select_device(devices, local_rank, local_size, chosen) -> None:
    cupy = types.SimpleNamespace(cuda=FakeCuda(devices))
    assert select_device(local_rank, local_size, cupy) == chosen
    assert cupy.cuda.used == [chosen]


def test_select_device_refuses_more_processes_than_gpus() -> None:
    from npvit.backend import BackendUnavailableError

    with pytest.raises(DistributedError, match="4 processes run on this node but it has 2 GPUs"):
        select_device(0, 4, types.SimpleNamespace(cuda=FakeCuda(2)))
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        select_device(0, 1, types.SimpleNamespace(cuda=FakeCuda(0)))


# ---- two processes: the program each rank runs --------------------------------------------------------------
class FakeDeviceArray(np.ndarray):
    """A host array dressed as a CuPy array: ``data.ptr``, ``set``; the fake ``cupy`` module claims it."""

    @property
    def data(self):  # CuPy's MemoryPointer has .ptr; NumPy's .data (a memoryview) is not used here
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def set(self, host: np.ndarray) -> None:
        np.copyto(self.view(np.ndarray), host)


def fake_cupy() -> types.ModuleType:
    module = types.ModuleType("cupy")
    module.ndarray = FakeDeviceArray
    module.cuda = FakeCuda(2)
    module.asnumpy = lambda a: np.array(a.view(np.ndarray))
    return module


class FakeNccl:
    """``cupy.cuda.nccl`` with NCCL replaced by MPI on the memory behind the pointers it is given."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 6, 7, 8, 0
    available = True
    CTYPES = {7: ctypes.c_float, 8: ctypes.c_double}

    def __init__(self, rank: int) -> None:
        self.rank, self.made, self.calls = rank, [], []
        fake = self

        class NcclCommunicator:
            def __init__(self, ndev, unique_id, rank):
                fake.made.append((ndev, unique_id, rank))

            def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
                from mpi4py import MPI

                fake.calls.append((sendbuf == recvbuf, count, datatype, op, stream))
                memory = np.ctypeslib.as_array((fake.CTYPES[datatype] * count).from_address(recvbuf))
                MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, memory, op=MPI.SUM)

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        assert self.rank == 0, "only rank 0 may ask NCCL for the id"
        return tuple(int(b) for b in np.random.default_rng().integers(-128, 128, 128))

    def get_version(self):
        return 22304


def scenario_collectives() -> None:
    """Every collective on 2 ranks against what it must equal; the GPU paths through fakes."""
    from npvit.distributed.mpi import MPICommunicator

    comm = connect()
    assert isinstance(comm, MPICommunicator) and comm.size == 2 and comm.name.startswith("MPI (")
    r = comm.rank
    assert (comm.local_rank, comm.local_size) == (r, 2)  # one node
    for dtype in (np.float32, np.float64):
        local = np.arange(1000, dtype=dtype) * (r + 1) + 0.25 * r  # rank 0 and rank 1 hold different values
        expected = np.arange(1000, dtype=dtype) * 3 + 0.25
        comm.allreduce_sum(local)
        np.testing.assert_array_equal(local, expected)
    try:
        comm.allreduce_sum(np.zeros((4, 4))[:, 0])
        raise AssertionError("a non-contiguous buffer was accepted")
    except ValueError as exc:
        assert "contiguous" in str(exc)
    assert comm.allreduce_scalars([1.5 * (r + 1), r, 2**52 + r]) == [4.5, 1.0, 2.0**53 + 1]
    assert comm.broadcast({"from": r, "list": [1, 2]} if r == 0 else None) == {"from": 0, "list": [1, 2]}
    assert comm.broadcast("rank one" if r == 1 else "ignored", root=1) == "rank one"
    comm.barrier()

    # CuPy buffers through the host, and through a CUDA-aware MPI (after waiting for the stream).
    sys.modules["cupy"] = cupy = fake_cupy()
    for path in ("host", "cuda-aware"):
        comm.device_buffers = path
        device = (np.arange(6.0) + 10 * r).view(FakeDeviceArray)
        before = cupy.cuda.synchronized
        comm.allreduce_sum(device)
        np.testing.assert_array_equal(device.view(np.ndarray), np.arange(6.0) * 2 + 10)
        assert cupy.cuda.synchronized == before + (path == "cuda-aware")

    # NCCL: the id comes from rank 0 alone and every rank joins with it; in-place sums on the current stream.
    nccl = FakeNccl(r)
    gpu = NCCLCommunicator(comm, nccl, cupy)
    ((ndev, unique_id, rank),) = nccl.made
    assert (ndev, rank) == (2, r) and len(unique_id) == 128
    assert comm.allreduce_scalars([sum(unique_id) * (1 if r == 0 else -1)]) == [0.0]  # the same on both
    assert gpu.name.startswith("NCCL 2.23.4 and MPI")
    for dtype, code in ((np.float32, 7), (np.float64, 8)):
        device = (np.ones(300, dtype=dtype) * (r + 1)).view(FakeDeviceArray)
        gpu.allreduce_sum(device)
        np.testing.assert_array_equal(device.view(np.ndarray), np.full(300, 3, dtype=dtype))
        assert nccl.calls[-1] == (True, 300, code, 0, 0xC0FFEE)
    try:
        gpu.allreduce_sum(np.zeros(3, dtype=np.int32).view(FakeDeviceArray))
        raise AssertionError("an int32 buffer was accepted")
    except TypeError as exc:
        assert "not int32" in str(exc)
    assert gpu.allreduce_scalars([r]) == [1.0]
    del sys.modules["cupy"]

    # Evaluation split across the ranks equals one process's evaluation of the whole split.
    from npvit.augment import Augmenter
    from npvit.distributed.evaluation import evaluate_split
    from npvit.evaluate import evaluate

    model = tiny_float64_model()
    augmenter = Augmenter(np.full(3, 120.0), np.full(3, 3000.0), image_size=8, dtype="float64")
    data = np.random.default_rng(1)
    images, labels = data.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8), data.integers(0, 5, 23)
    one, split = evaluate(model, augmenter, images, labels, 7), evaluate_split(comm, model, augmenter, images,
                                                                               labels, 7)
    assert abs(split.loss - one.loss) <= 1e-14 * abs(one.loss), (split.loss, one.loss)
    assert (split.top1, split.top5) == (one.top1, one.top5)
    np.testing.assert_array_equal(split.per_class, one.per_class)
    # Fewer images than ranks: rank 1 evaluates nothing and still takes part.
    tiny = evaluate_split(comm, model, augmenter, images[:1], labels[:1], 7)
    assert tiny.top1 == evaluate(model, augmenter, images[:1], labels[:1], 7).top1
    print(f"rank {r}: collectives ok", flush=True)


def scenario_raise() -> None:
    """Rank 1 raises while rank 0 waits in the gradient sum."""
    comm = connect()
    with stop_all_on_error(comm):
        comm.allreduce_sum(np.ones(10))
        if comm.rank == 1:
            time.sleep(0.3)
            raise RuntimeError("a disk full on this rank only")
        comm.allreduce_sum(np.ones(10))  # never completes: rank 1 is gone
    print("rank 0 went on: the failure did not stop it", flush=True)


def scenario_kill() -> None:
    """Rank 1 is killed (SIGKILL) while rank 0 waits in the gradient sum."""
    comm = connect()
    comm.allreduce_sum(np.ones(10))
    if comm.rank == 1:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    comm.allreduce_sum(np.ones(10))
    print("rank 0 went on: the kill did not stop it", flush=True)


def scenario_hang() -> None:
    """Rank 1 stops answering without dying (SIGSTOP): rank 0's watchdog ends the wait."""
    comm = connect()
    comm.allreduce_sum(np.ones(10))
    if comm.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    comm.allreduce_sum(np.ones(10))
    print("rank 0 went on: nothing stopped it", flush=True)


def scenario_sigterm() -> None:
    """SIGTERM to mpiexec: each rank notes it, the note travels with the step's sums, all stop at one step."""
    comm = connect()
    requested = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requested.append(signum))
    for step in range(600):
        if step == 3:
            print(f"rank {comm.rank}: running", flush=True)
        loss_sum, stop = comm.allreduce_scalars([1.0, float(bool(requested))])
        assert loss_sum == 2.0
        if stop:
            print(f"rank {comm.rank}: stopped after step {step}", flush=True)
            return
        time.sleep(0.02)
    print(f"rank {comm.rank}: never stopped", flush=True)


SCENARIOS = {f.__name__[len("scenario_"):]: f for f in (scenario_collectives, scenario_raise, scenario_kill,
                                                         scenario_hang, scenario_sigterm)}


# ---- two processes: the tests that start them -------------------------------------------------------------------
def mpiexec(scenario: str) -> list[str]:
    return [MPIEXEC or "mpiexec", "-n", "2", sys.executable, str(HERE), scenario]


def run_two(scenario: str, timeout: float = 60, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(mpiexec(scenario), env=clean_environment(**env), capture_output=True, text=True,
                          timeout=timeout)
    return done, time.monotonic() - start


@needs_mpi
def test_two_ranks_collectives() -> None:
    done, _ = run_two("collectives")
    assert done.returncode == 0, done.stdout + done.stderr
    # mpiexec forwards each rank's output as it comes: lines of two ranks may run together.
    assert sorted(re.findall(r"rank \d: collectives ok", done.stdout)) == ["rank 0: collectives ok",
                                                                         "rank 1: collectives ok"], done.stdout


@needs_mpi
def test_an_exception_on_one_rank_stops_the_job_naming_the_rank() -> None:
    done, seconds = run_two("raise")
    assert done.returncode != 0
    assert seconds < 15, f"the job took {seconds:.1f} s to stop"
    assert "rank 1 of 2: failed" in done.stderr and "a disk full on this rank only" in done.stderr
    assert "went on" not in done.stdout


@needs_mpi
def test_a_killed_rank_stops_the_job() -> None:
    done, seconds = run_two("kill")
    assert done.returncode != 0
    assert seconds < 15, f"the job took {seconds:.1f} s to stop"
    assert "went on" not in done.stdout


@needs_mpi
def test_a_silent_peer_stops_the_job_through_the_watchdog() -> None:
    done, seconds = run_two("hang", NPVIT_COLLECTIVE_TIMEOUT="2")
    assert done.returncode != 0
    assert seconds < 20, f"the job took {seconds:.1f} s to stop"
    assert "rank 0 of 2: no answer from the other processes after 2 s in the gradient sum" in done.stderr
    assert "went on" not in done.stdout


@needs_mpi
def test_sigterm_to_the_launcher_stops_every_rank_at_the_same_step() -> None:
    proc = subprocess.Popen(mpiexec("sigterm"), env=clean_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        running = 0
        while running < 2:  # both ranks are in the loop
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            running += line.count("running")  # lines of two ranks may run together
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    steps = dict(re.findall(r"rank (\d): stopped after step (\d+)", out))
    assert set(steps) == {"0", "1"} and len(set(steps.values())) == 1, out


if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
