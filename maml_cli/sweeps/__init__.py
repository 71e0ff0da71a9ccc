"""What sweeps found, read back from their sweep dirs (``maml-sweep-report``).

A package of its own rather than part of ``engine``: importing ``engine`` imports the trainer and
torch (seconds), and a report on a folder without runs should answer at once.
"""
