"""The pre-launch planner: which layouts of a run fit, how much each rank holds and how fast each
would train, before a GPU is paid for.

    shares.py      each rank's training state from the engine's own sharding code (meta tensors,
                   fake process group; ZeRO's partition arithmetic for DeepSpeed)
    hardware.py    device specs (h100, h200, a100; cpu = this host, measured) and assumptions
    layouts.py     candidate layouts, kept when the config validation accepts them
    memory.py      per-rank memory: state + activations + buffers + runtime
    step_time.py   step time, tokens/s and MFU from FLOPs and communication volume
    planner.py     every candidate estimated and ranked; the configured layout checked
    fit.py         the check `dist-llm train` and `launch` run before spawning
    report.py      the table and the assumptions, as text or JSON
"""
