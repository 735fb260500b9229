"""The studies of `python experiments.py STUDY`, one file per question; common.py holds what they
share (the data, seeding, training through solver.py, saving, the figure helpers)."""
