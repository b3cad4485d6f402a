"""pipeline: scenes, synthetic data, evaluation, stages and the command line.

Entry point: `python -m pipeline --help`.
"""

__version__ = "0.1.0"
