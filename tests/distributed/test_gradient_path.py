"""Which way the gradients go between processes, said in the first line a training run prints; the GPU extras
bring NCCL."""

from __future__ import annotations

import configparser
from pathlib import Path

from fakecupy import fake_cupy, host_syncs  # noqa: F401 (fixtures)

from npvit.distributed import SingleProcess, gradient_path
from npvit.distributed.nccl import NCCLCommunicator

ROOT = Path(__file__).resolve().parents[2]


class TwoRanks:
    rank, size, local_rank, local_size, name = 0, 2, 0, 2, "MPI (test)"

    def __init__(self, device_buffers: str = "host") -> None:
        self.device_buffers = device_buffers


def test_gradient_path_names_nccl_cuda_aware_mpi_or_host_copies() -> None:
    assert gradient_path(SingleProcess(), "cupy").startswith("gradients: one process on cupy")
    nccl = NCCLCommunicator.__new__(NCCLCommunicator)
    nccl.size, nccl.name = 4, "NCCL 2.27.7 and MPI (test)"
    assert gradient_path(nccl, "cupy") == "gradients: summed on the GPUs by NCCL 2.27.7 and MPI (test) (4 processes)"
    assert "CUDA-aware MPI (test)" in gradient_path(TwoRanks("cuda-aware"), "cupy")
    host = gradient_path(TwoRanks("host"), "cupy")
    assert "copied to host memory" in host and "npvit[cuda12]" in host
    assert gradient_path(TwoRanks(), "numpy") == "gradients: summed by MPI (test) in host memory (2 processes)"


def test_training_on_the_gpu_says_the_gradient_path_first(fake_cupy, host_syncs, tmp_path, capsys) -> None:
    from npvit.train import main

    args = ["--dataset", "synthetic", "--synthetic-size", "32,8", "--synthetic-image-size", "8",
            "--synthetic-classes", "3", "--preset", "tiny", "--image-size", "8", "--batch-size", "16", "--epochs",
            "1", "--threads", "1", "--seed", "2", "--backend", "cupy", "--out", str(tmp_path / "run")]
    with host_syncs.recording():
        assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "gradients: one process on cupy, nothing to sum between processes"


def test_the_gpu_extras_bring_nccl_for_their_cuda_major() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = config["options.extras_require"]
    for major in ("12", "13"):
        lines = [line.strip() for line in extras[f"cuda{major}"].strip().splitlines()]
        assert lines[0] == f"cupy-cuda{major}x[ctk]>=14"
        assert any(line.startswith(f"nvidia-nccl-cu{major}>=") and 'sys_platform == "linux"' in line
                   for line in lines)
