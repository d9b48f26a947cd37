"""`dist-llm env`: what this host runs (versions, devices, interconnect, launch variables) and
checks for the usual reasons a multi-node job fails to start or runs slowly; under torchrun every
rank reports and rank 0 compares them.

Modules: software (versions), devices (GPUs, CPU, memory, limits), network (interfaces,
InfiniBand, topology, address and port probes), facts (one host's facts as a JSON-able dict),
checks (OK/WARN/FAIL lines for one host), compare (consistency across ranks, pure), report (text
and JSON), cli (the subcommand and the gather over gloo).
"""
