"""cnnstress: an HPC batch toolkit for stress-testing CNN image classifiers.

See README.md and docs/design.md. Importing the package imports nothing heavy: torch is loaded
only by the modules that train (engine, models, augment, corrupt, worker).
"""

__version__ = "0.1.0"
