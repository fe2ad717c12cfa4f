"""``trainjob report``: offline runs and sweeps as one self-contained HTML page, with no server.

    trainjob report                              # $WANDB_DIR (or .) and the output folder
    trainjob report /workspace --out sweep.html  # a volume copied off a cluster

It reads W&B's run files with trainjob's own reader (tracking/runfile.py) and the records that
``sweep run`` trials leave (run.json, epochs.json, the sweep file), joins a resumed run's
folders into one run, and writes the page (page.py: leaderboard, parallel coordinates, loss and
per-epoch accuracy curves, early termination, each run's config and ONNX file). What cannot be
read is said on the page; only "nothing readable at all" is an error (exit 2, one line).
"""
