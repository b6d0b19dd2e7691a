"""The control channel between rank 0 (which holds the HTTP server and the job store) and the other ranks.

A dedicated gloo group carries small CPU messages, so control never touches the accelerator's stream:

- ``tick``: every rank calls it together; rank 0 says "idle" or "run this job" (its JSON payload follows), and
  every rank adds whether it was asked to stop (SIGTERM). It is a heartbeat: rank 0 ticks at least every
  ``--heartbeat`` seconds while idle, so idle ranks never wait longer than that and never trip the collective
  timeout, while a dead peer turns the next tick into an error on every other rank (its connections close at once;
  a rank that hangs alive is caught by the group's timeout).
- ``agree``: after each job every rank reports how its job ended (ok, interrupted, failed: with its message and
  whether the failure came from a collective); every rank gets every report and takes the same decision.

The group's timeout is longer than the pipeline's collective timeout, so a rank that failed alone still meets the
others here after they have timed out waiting for it in the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import torch

IDLE, JOB = 0, 1
OK, INTERRUPTED, FAILED = 0, 1, 2
MESSAGE_BYTES = 2048  # a failure message is cut to this many UTF-8 bytes in the report
COLLECTIVE_MARKERS = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "broken pipe",
                      "distbackenderror", "process group")


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` came from a collective (a timeout or a lost peer), after which a process group's state
    is not trusted. gloo raises plain ``RuntimeError``\\ s for these, so the message is what tells them apart."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return isinstance(error, RuntimeError) and any(m in text for m in COLLECTIVE_MARKERS)


@dataclass(frozen=True)
class Report:
    """How one rank's job ended. ``kind``: ``OK``, ``INTERRUPTED`` or ``FAILED``; ``stop``: the rank was asked
    to stop (a signal); ``memory``: its peak accelerator memory in bytes during the job."""

    kind: int
    message: str = ""
    collective: bool = False
    stop: bool = False
    memory: float = 0.0


class ControlChannel:
    """Rank-0-led control messages over their own gloo group (None on a single process)."""

    def __init__(self, rank: int, world_size: int, timeout: timedelta) -> None:
        import torch.distributed as dist

        self.rank, self.world_size = rank, world_size
        self.group = dist.new_group(backend="gloo", timeout=timeout) if world_size > 1 else None

    def tick(self, command: int, payload: dict | None, stopping: bool) -> tuple[int, dict | None, bool]:
        """Every rank, together. Rank 0's ``command`` (and ``payload`` for ``JOB``) reach every rank; returns
        ``(command, payload, any rank stopping)``."""
        if self.group is None:
            return command, payload, stopping
        import torch.distributed as dist

        data = json.dumps(payload).encode() if self.rank == 0 and payload is not None else b""
        header = torch.zeros(3, dtype=torch.int64)
        if self.rank == 0:
            header[0], header[1] = command, len(data)
        header[2] = int(stopping)
        dist.all_reduce(header, group=self.group)
        command, size, stops = (int(v) for v in header)
        if command != JOB:
            return command, None, stops > 0
        buf = torch.zeros(size, dtype=torch.uint8)
        if self.rank == 0:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, 0, group=self.group)
        return command, json.loads(bytes(buf.numpy()).decode()), stops > 0

    def agree(self, mine: Report) -> list[Report]:
        """Every rank's report, in rank order (every rank, together)."""
        if self.group is None:
            return [mine]
        import torch.distributed as dist

        head = torch.tensor([mine.kind, int(mine.collective), int(mine.stop), mine.memory], dtype=torch.float64)
        text = mine.message.encode("utf-8")[:MESSAGE_BYTES]
        msg = torch.zeros(MESSAGE_BYTES + 1, dtype=torch.uint8)
        msg[0] = 1  # never empty: gloo sends nothing for zero-length tensors
        if text:
            msg[1:1 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        heads = torch.zeros(self.world_size, 4, dtype=torch.float64)
        msgs = torch.zeros(self.world_size, MESSAGE_BYTES + 1, dtype=torch.uint8)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
        gather(heads.view(-1), head, group=self.group)
        gather(msgs.view(-1), msg, group=self.group)
        reports = []
        for h, m in zip(heads.tolist(), msgs):
            message = bytes(m[1:].numpy()).rstrip(b"\0").decode("utf-8", errors="replace")
            reports.append(Report(int(h[0]), message, bool(h[1]), bool(h[2]), float(h[3])))
        return reports

    def barrier(self) -> None:
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)


__all__ = ["ControlChannel", "FAILED", "IDLE", "INTERRUPTED", "JOB", "OK", "Report", "is_collective_failure"]
