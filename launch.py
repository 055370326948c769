#!/usr/bin/env python3
"""Entry point: python launch.py --grid jobs/demo.toml [--cluster local|debug|slurm|sbatch] ..."""

import sys

from cnnstress.launcher import main

if __name__ == "__main__":
    sys.exit(main())
