"""Evaluate a checkpoint (lands with issue 8)."""

import sys

if __name__ == "__main__":
    sys.stderr.write("run_val.py: evaluation is not built yet; see README.md\n")
    sys.exit(2)
