"""torchrun with one more rendezvous backend, `loopback`, for single-node runs:

    python -m engine.torchrun --rdzv-backend loopback --rdzv-endpoint 127.0.0.1:0 ... -m engine.train ...

torchrun's `c10d` backend serves its store with a TCPStore that listens on every interface and reads
its rendezvous state back with `pickle.loads`: anyone on the network who can reach the port (the run
id is visible in `ps`) can run code in the agent. `loopback` is torchrun's static rendezvous (one node,
no pickled state: the agent and workers exchange JSON) with its store served from a socket bound to
127.0.0.1, so nothing outside this machine can connect. Multi-node runs keep `c10d`, whose port must be
on a trusted network (as torchrun's own documentation says).
"""

from __future__ import annotations

import os
import socket
import sys

from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry
from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

LOOPBACK = "127.0.0.1"


class LoopbackRendezvous(StaticTCPRendezvous):
    def __init__(self, run_id: str, timeout: int):
        super().__init__(LOOPBACK, 0, rank=0, world_size=1, run_id=run_id, timeout=timeout)
        self._listener: socket.socket | None = None

    def get_backend(self) -> str:
        return "loopback"

    def next_rendezvous(self):
        if self._store is None:  # one store for every restart round, as the static backend keeps
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind((LOOPBACK, 0))
            self._listener.listen(128)
            self.master_port = self._listener.getsockname()[1]
            self._store = TCPStore(
                LOOPBACK,
                self.master_port,
                1,
                True,
                self.timeout,
                multi_tenant=True,
                master_listen_fd=self._listener.fileno(),
            )
        return super().next_rendezvous()


def create_loopback_handler(params: RendezvousParameters) -> LoopbackRendezvous:
    if params.max_nodes != 1:
        raise ValueError("the loopback rendezvous serves single-node runs only (--nnodes 1)")
    return LoopbackRendezvous(params.run_id, int(params.get("timeout", 900)))


rendezvous_handler_registry.register("loopback", create_loopback_handler)

if __name__ == "__main__":
    from torch.distributed.run import main

    # workers check that this agent is still their parent once their parent-death signal is armed
    os.environ["CHEXUI_AGENT_PID"] = str(os.getpid())
    main()  # (raises when a worker failed: that exit keeps the normal interpreter teardown)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the workers are done and torchrun has shut its agent down: skip torch's 1 s teardown
