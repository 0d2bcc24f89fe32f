import sys

from sweep.cli import main

if __name__ == "__main__":  # not when a spawned process imports this process's main
    sys.exit(main())
