"""Runtime: the process group and its rank-0 helpers (`dist`), process lifetime (`procs`) and the CPU's
int8 instruction sets for benchmarks (`cpuinfo`). The torchrun entry points stay at the top of the
package: `engine.torchrun` (torchrun with a loopback rendezvous) and `engine.train`.
"""
