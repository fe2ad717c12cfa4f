"""Hyperparameter sweeps from one ``sweep.yaml`` (W&B's sweep format).

    trainjob sweep create [sweep.yaml]   # agent.py: register with W&B, print the agent commands
    trainjob agent                       # agent.py: = TRAINJOB_SWEEP_ID=... trainjob
    trainjob sweep run [sweep.yaml]      # local.py: offline / air-gapped, W&B's engine locally

spec.py reads and checks the file; trials.py runs each trial as a process of its own; stop.py is
what a sweep and its trials agree on to stop one (the signal, the early-termination files);
W&B's sweep engine and W&B's sweep calls are in tracking/sweeps.py. Nothing is imported here:
``trainjob train`` (stopping.py) needs stop.py without the rest.
"""
