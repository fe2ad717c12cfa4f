"""Hyperparameter sweeps from one ``sweep.yaml`` (W&B's sweep format).

    trainjob sweep create [sweep.yaml]   # agent.py: register with W&B, print the agent commands
    trainjob agent                       # agent.py: = TRAINJOB_SWEEP_ID=... trainjob
    trainjob sweep run [sweep.yaml]      # local.py: offline / air-gapped, W&B's engine locally

spec.py reads and checks the file; trials.py runs each trial as a process of its own;
parallel.py says how many at once. A trial's side of a sweep's stop is the job's: the signal is
``interrupt.STOP_SIGNAL``, offline early termination is asked in epoch_end.py. W&B's sweep engine
and W&B's sweep calls are in tracking/sweeps.py.
"""
