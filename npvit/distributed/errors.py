"""Errors of the distributed layer: each message says what is wrong and what to do."""

from __future__ import annotations


class DistributedError(RuntimeError):
    """The processes of a data-parallel run cannot work together as launched."""


class MPIUnavailableError(DistributedError):
    """Started as several processes, but mpi4py (or the MPI library under it) cannot be used."""
