"""The names of what a job logs, declared once: the loop, the job, the sweep checks and the
offline sweep runner all spell a metric through these constants.

A sweep metric outside ``SUMMARY`` would never get a value in a run's summary (every trial would
look equally bad), so sweep files are checked against these tuples; tests/test_sweep.py checks
them against a real run's history and summary.
"""

from __future__ import annotations

# History: every ``log_every`` steps (train.py), x-axis = examples seen.
EPOCH = "epoch"
LOSS = "loss"
LOSS_MEAN = "train/loss_mean"
SAMPLES_PER_S = "perf/samples_per_s"
# History once per epoch (epoch_end.py) and in the summary (job.py).
TEST_ACCURACY = "test_accuracy"
# Summary only (job.py).
TRAIN_S = "perf/train_s"  # seconds in the training loop, over every process of the run
TRIAL_S = "perf/trial_s"  # seconds from this process's start to its summary
STEADY_SAMPLES_PER_S = "perf/steady_samples_per_s"
# Steps that met a new batch shape; with compile on, that is the compile time.
WARMUP_S = "perf/warmup_s"
COMPILE_S = "perf/compile_s"
ONNX_MAX_ABS_DIFF = "onnx/max_abs_diff"
EXAMPLES_SEEN = "examples_seen"
WEIGHTS_SHA256 = "weights_sha256"
STOPPED = "stopped"

HISTORY = (LOSS, EPOCH, SAMPLES_PER_S)
SUMMARY = (TEST_ACCURACY, SAMPLES_PER_S, TRAIN_S, TRIAL_S, ONNX_MAX_ABS_DIFF, EXAMPLES_SEEN)
LOGGED = tuple(dict.fromkeys(SUMMARY + HISTORY))
# Logged once per epoch: the only metrics early termination can compare, as hyperband counts a
# run's logged values as its iterations.
PER_EPOCH = (TEST_ACCURACY,)
