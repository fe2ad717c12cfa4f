"""Hyperparameter sweeps from one ``sweep.yaml`` (W&B's sweep format).

    trainjob sweep create [sweep.yaml]   # server.py: register with W&B, print the agent commands
    trainjob agent                       # agent.py: = TRAINJOB_SWEEP_ID=... trainjob
    trainjob sweep run [sweep.yaml]      # local.py: offline / air-gapped, W&B's engine locally

spec.py reads and checks the file; trials.py runs each trial as a process of its own; stop.py is
what a sweep and its trials agree on to stop one (the signal, the early-termination files);
engine.py imports W&B's sweep engine. Nothing is imported here: ``trainjob train`` (stopping.py)
needs stop.py without the rest.
"""
