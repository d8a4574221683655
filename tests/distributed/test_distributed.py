"""Data parallelism over many processes: launch detection, the communicators, batch splitting, faults.

The tests that need several processes start ``mpiexec -n 2 python tests/distributed/test_distributed.py SCENARIO``: this
file is also the program each rank runs (see ``SCENARIOS`` at the end). They skip, saying so, only where
mpi4py or mpiexec is missing (``pip install -e '.[mpi]'`` brings both).
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
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


def test_single_process_never_imports_mpi4py(tmp_path) -> None:
    """A whole training run alone (and one started by mpiexec -n 1) never imports mpi4py."""
    code = ("import sys, npvit.train as t; status = t.main(sys.argv[1:]); "
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'; print('status', status)")
    for name, env in (("alone", clean_environment()), ("one", clean_environment(PMI_RANK="0", PMI_SIZE="1"))):
        done = subprocess.run([sys.executable, "-c", code, *TRAIN, "--max-steps", "2", "--out", str(tmp_path / name)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "status 0" in done.stdout, done.stderr


@pytest.mark.skipif(not HAS_MPI4PY, reason="needs mpi4py (pip install -e '.[mpi]')")
def test_launcher_and_mpi_disagreeing_is_a_clear_error() -> None:
    """The launcher says 2 processes, MPI sees 1: what mpi4py built against another MPI than mpiexec's does."""
    code = "import npvit.distributed as d; d.connect()"
    done = subprocess.run([sys.executable, "-c", code], env=clean_environment(PMI_RANK="0", PMI_SIZE="2"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "mpiexec (MPICH Hydra) started 2 processes, but MPI counts 1" in done.stderr, done.stderr


def test_several_processes_without_mpi4py_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    monkeypatch.delitem(sys.modules, "npvit.distributed.mpi", raising=False)
    with pytest.raises(MPIUnavailableError) as info:
        connect(environ={"PMI_RANK": "1", "PMI_SIZE": "2"})
    message = str(info.value)
    assert "process 1 of 2 started by mpiexec (MPICH Hydra)" in message
    assert "mpi4py is not installed" in message and "pip install -e '.[mpi]'" in message


# ---- splitting batches ----------------------------------------------------------------------------------------
def test_the_global_batch_needs_an_image_per_process() -> None:
    check_batch_size(2, 2)
    with pytest.raises(DistributedError, match="--batch-size 3 is smaller than the 4 processes.*--batch-size 4"):
        check_batch_size(3, 4)


def tiny_float64_model():
    from npvit import ViT, ViTConfig

    cfg = dataclasses.replace(ViTConfig.tiny(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    return ViT(cfg, dtype="float64", seed=3)


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


def test_for_backend_picks_this_ranks_gpu_then_nccl() -> None:
    """On CuPy with several processes: the node-local rank's GPU is made current, then NCCL is started with the
    id rank 0 broadcast; NumPy, or one process, keeps the communicator it has."""
    from npvit.distributed import for_backend

    class SecondOfTwo:
        rank, size, local_rank, local_size, name = 1, 2, 1, 2, "MPI (test)"

        def broadcast(self, obj, root=0):
            assert obj is None and root == 0  # rank 1 sends nothing: the id comes from rank 0
            return bytes(range(128)).hex()

    host, cupy, nccl = SecondOfTwo(), types.SimpleNamespace(cuda=FakeCuda(2)), FakeNccl(rank=1)
    assert for_backend(host, "numpy", cupy=cupy, nccl=nccl) is host and cupy.cuda.used == []
    assert for_backend(SingleProcess(), "cupy", cupy=cupy, nccl=nccl).size == 1 and cupy.cuda.used == []
    gpu = for_backend(host, "cupy", cupy=cupy, nccl=nccl)
    assert isinstance(gpu, NCCLCommunicator) and (gpu.rank, gpu.size) == (1, 2)
    assert cupy.cuda.used == [1] and nccl.made == [(2, bytes(range(128)), 1)]


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
                # CuPy 14: ``NcclCommunicator(int ndev, bytes commId, int rank)``, 128 bytes exactly
                if not isinstance(unique_id, bytes):
                    raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got "
                                    f"{type(unique_id).__name__})")
                if len(unique_id) != 128:
                    raise ValueError(f"commId length {len(unique_id)} != 128.")
                fake.made.append((ndev, unique_id, rank))

            def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
                from mpi4py import MPI

                fake.calls.append((sendbuf == recvbuf, count, datatype, op, stream))
                memory = np.ctypeslib.as_array((fake.CTYPES[datatype] * count).from_address(recvbuf))
                MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, memory, op=MPI.SUM)

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        assert self.rank == 0, "only rank 0 may ask NCCL for the id"
        return np.random.default_rng().integers(0, 256, 128, dtype=np.uint8).tobytes()  # CuPy 14: bytes

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
    from npvit.data.augment import Augmenter
    from npvit.train.evaluation import evaluate_split
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


def scenario_hang() -> None:
    """Loading in waves waits as long as rank 0 takes (a download); then rank 1 stops answering without dying
    (SIGSTOP), and rank 0's watchdog ends the wait."""
    from npvit.distributed import in_waves

    comm = connect()
    marker = Path(os.environ["NPVIT_TEST_PIDS"], "loaded")

    def load() -> int:
        if comm.rank == 0:
            time.sleep(3.0)  # longer than the limit on one collective wait
            marker.write_text("rank 0")
        else:
            assert marker.exists(), "rank 1 loaded before rank 0 had finished"
        return comm.rank

    assert in_waves(comm, load) == comm.rank
    comm.allreduce_sum(np.ones(10))
    if comm.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    comm.allreduce_sum(np.ones(10))
    print("rank 0 went on: nothing stopped it", flush=True)


def scenario_train() -> None:
    """``python -m npvit.train ARGS`` on every rank, for the tests that need to reach a rank: each rank writes
    its process id to $NPVIT_TEST_PIDS/rank<R>; with $NPVIT_TEST_RAISE_AT=S, rank 1 raises after step S."""
    from npvit.train import command as train_cli

    rank = detect_launch().rank
    Path(os.environ["NPVIT_TEST_PIDS"], f"rank{rank}").write_text(str(os.getpid()))
    raise_at = int(os.environ.get("NPVIT_TEST_RAISE_AT", "0"))
    if raise_at and rank == 1:
        real_train = train_cli.train

        def failing_train(settings, resumed=None, on_step=None, comm=None):
            def on_step(step: int) -> None:
                if step == raise_at:
                    raise RuntimeError(f"a failure injected after step {step}")
            return real_train(settings, resumed, on_step=on_step, comm=comm)

        train_cli.train = failing_train
    sys.exit(train_cli.main(sys.argv[2:]))


SCENARIOS = {f.__name__[len("scenario_"):]: f for f in (scenario_collectives, scenario_hang, scenario_train)}


# ---- two processes: the tests that start them -------------------------------------------------------------------
def mpiexec(scenario: str, *args: str) -> list[str]:
    return [MPIEXEC or "mpiexec", "-n", "2", sys.executable, str(HERE), scenario, *args]


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
def test_a_silent_peer_stops_the_job_through_the_watchdog(tmp_path) -> None:
    done, seconds = run_two("hang", NPVIT_COLLECTIVE_TIMEOUT="2", NPVIT_TEST_PIDS=str(tmp_path))
    assert done.returncode != 0
    assert "rank 1 loaded before rank 0" not in done.stderr and (tmp_path / "loaded").exists(), done.stderr
    assert seconds < 20, f"the job took {seconds:.1f} s to stop"
    assert "rank 0 of 2: no answer from the other processes after 2 s in the gradient sum" in done.stderr
    assert "went on" not in done.stdout


# ---- the training program on two processes -------------------------------------------------------------------
# The tiny model on 8x8 synthetic images, float64: 117 training images in batches of 25 (5 steps per epoch, the
# last of 17 images), split 13 + 12 and 9 + 8 between two ranks; 13 validation and 40 test images.
TRAIN = ["--dataset", "synthetic", "--synthetic-size", "130,40", "--synthetic-image-size", "8",
         "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "25", "--learning-rate", "3e-3",
         "--dtype", "float64", "--quiet"]
NO_RANDOMNESS = ["--dropout", "0", "--attention-dropout", "0", "--head-dropout", "0", "--no-flip", "--rotation",
                 "0", "--zoom", "0"]
RANDOM = ["--dropout", "0.2", "--attention-dropout", "0.2", "--head-dropout", "0.3"]  # and flip, rotation, zoom


def train_one(out: Path, *flags: str) -> int:
    """The training program in this process (no launcher: one process)."""
    from npvit.train import command as train_cli

    return train_cli.main([*flags, "--out", str(out)] if "--resume" not in flags else list(flags))


def train_two(out: Path, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The training program on two processes under mpiexec."""
    args = [*flags, "--out", str(out)] if "--resume" not in flags else list(flags)
    return subprocess.run([MPIEXEC or "mpiexec", "-n", "2", sys.executable, "-m", "npvit.train", *args],
                          env=clean_environment(), capture_output=True, text=True, timeout=timeout)


def assert_same_run(a: Path, b: Path, tolerance: float) -> None:
    """Weights, AdamW state and the logged numbers of two run folders agree to ``tolerance``."""
    from npvit.checkpoint import load_checkpoint

    x, y = load_checkpoint(a / "last.npz"), load_checkpoint(b / "last.npz")
    assert x.meta["state"] == y.meta["state"] or tolerance > 0
    for name in x.params:
        np.testing.assert_allclose(y.params[name], x.params[name], rtol=0, atol=tolerance, err_msg=name)
    for name in x.optimizer:
        np.testing.assert_allclose(y.optimizer[name], x.optimizer[name], rtol=0, atol=tolerance, err_msg=name)
    assert set(x.ema) == set(y.ema)  # --ema: each rank averages its (identical) weights alone
    for name in x.ema:
        np.testing.assert_allclose(y.ema[name], x.ema[name], rtol=0, atol=tolerance, err_msg=name)
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert len(rows[0]) == len(rows[1])
    for r, s in zip(*rows):
        assert (r["epoch"], r["step"], r["partial"]) == (s["epoch"], s["step"], s["partial"])
        assert r.keys() == s.keys()
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr",
                    *(k for k in r if k.endswith("_raw"))):
            assert abs(r[key] - s[key]) <= max(tolerance, 1e-13), (key, r[key], s[key])


@needs_mpi
def test_two_ranks_train_the_model_one_process_trains(tmp_path) -> None:
    """No random stream: 2 ranks x 2 epochs end with the weights, AdamW state, moving average of the weights
    (--ema), losses and test numbers of one process to 1e-10 (float64; only the order of float additions
    differs)."""
    assert train_one(tmp_path / "one", *TRAIN, *NO_RANDOMNESS, "--epochs", "2", "--ema", "0.9") == 0
    done = train_two(tmp_path / "two", *TRAIN, *NO_RANDOMNESS, "--epochs", "2", "--ema", "0.9")
    assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two", 1e-10)
    from npvit.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "two" / "last.npz").ema  # the average was kept and saved
    one, two = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    assert two["best_epoch"] == one["best_epoch"] and two["steps"] == one["steps"] == 10
    assert abs(two["test"]["loss"] - one["test"]["loss"]) < 1e-10 and two["test"]["top1"] == one["test"]["top1"]
    # Rank 0 alone prints: one line per epoch, one test line.
    assert done.stdout.count("epoch 2/2") == 1 and done.stdout.count("test (40 images") == 1, done.stdout
    assert "2 processes (MPI (" in done.stdout


@pytest.fixture(scope="module")
def keyed_run(tmp_path_factory) -> Path:
    """One process, dropout and augmentation on, 2 epochs: what the runs on 2 ranks must reproduce."""
    out = tmp_path_factory.mktemp("keyed") / "one"
    assert train_one(out, *TRAIN, *RANDOM, "--epochs", "2") == 0
    return out


@needs_mpi
def test_random_streams_are_keyed_by_image_so_two_ranks_equal_one_process(tmp_path, keyed_run) -> None:
    """Dropout, flips, rotations and zooms on: two runs on 2 ranks give the same bits, and the numbers of one
    process to 1e-10 (every stream is keyed by the step and the global image index)."""
    for run in ("a", "b"):
        done = train_two(tmp_path / run, *TRAIN, *RANDOM, "--epochs", "2")
        assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path / "a", tmp_path / "b", 0.0)
    assert_same_run(keyed_run, tmp_path / "a", 1e-10)


@needs_mpi
def test_resume_on_another_number_of_processes(tmp_path, keyed_run) -> None:
    """A 1-process checkpoint continued on 2 ranks, and a 2-rank checkpoint continued on 1 process, end where
    one process going straight through ends."""
    assert train_one(tmp_path / "1then2", *TRAIN, *RANDOM, "--epochs", "1") == 0
    done = train_two(tmp_path / "1then2", "--resume", str(tmp_path / "1then2"), "--epochs", "2")
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stdout
    assert_same_run(keyed_run, tmp_path / "1then2", 1e-10)

    done = train_two(tmp_path / "2then1", *TRAIN, *RANDOM, "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert train_one(tmp_path / "2then1", "--resume", str(tmp_path / "2then1"), "--epochs", "2") == 0
    assert_same_run(keyed_run, tmp_path / "2then1", 1e-10)


def start_long_run(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, dict[str, int]]:
    """2 ranks on a run too long to end by itself; returns once rank 0 has logged its first epoch."""
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen(mpiexec("train", *TRAIN, *RANDOM, "--epochs", "100000", "--out", str(tmp_path / "run")),
                            env=clean_environment(NPVIT_TEST_PIDS=str(pids), **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:  # ended before its first epoch: show why
            proc.wait()
            raise AssertionError(f"the run ended with status {proc.returncode}: {proc.stderr.read()}")
        if line.startswith("epoch 1/"):
            break
    return proc, {name: int((pids / name).read_text()) for name in ("rank0", "rank1")}


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str, float]:
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err, time.monotonic() - start


@needs_mpi
def test_a_rank_killed_mid_run_stops_the_job(tmp_path) -> None:
    proc, pids = start_long_run(tmp_path)
    os.kill(pids["rank1"], signal.SIGKILL)
    _, _, seconds = finish(proc)
    assert proc.returncode != 0
    assert seconds < 10, f"the job took {seconds:.1f} s to stop after a rank was killed"
    assert not (tmp_path / "run" / "summary.json").exists()


@needs_mpi
def test_an_exception_on_one_rank_stops_the_job_naming_the_rank(tmp_path) -> None:
    proc, _ = start_long_run(tmp_path, NPVIT_TEST_RAISE_AT="8")
    _, err, seconds = finish(proc)
    assert proc.returncode != 0
    assert seconds < 10, f"the job took {seconds:.1f} s to stop after a rank failed"
    assert "rank 1 of 2: failed" in err and "a failure injected after step 8" in err


@needs_mpi
def test_sigterm_stops_every_rank_at_one_step_and_the_run_resumes_exactly(tmp_path) -> None:
    """SIGTERM to mpiexec reaches both ranks; they agree on the step, rank 0 saves last.npz once, and the
    run continued on 1 process ends where an uninterrupted one does."""
    from npvit.checkpoint import load_checkpoint

    proc, _ = start_long_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err, seconds = finish(proc)
    assert proc.returncode == 143, err
    assert seconds < 10 and out.count("interrupted") == 1, out
    step = load_checkpoint(tmp_path / "run" / "last.npz").meta["state"]["global_step"]
    assert train_one(tmp_path / "run", "--resume", str(tmp_path / "run"), "--max-steps", str(step + 3)) == 0
    assert train_one(tmp_path / "straight", *TRAIN, *RANDOM, "--epochs", "100000", "--max-steps",
                     str(step + 3)) == 0
    assert_same_run(tmp_path / "straight", tmp_path / "run", 1e-10)


if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
