"""Entry point: `python -m examples.toy_softmax --out DIR`."""
import sys

from examples.toy_softmax.run import main

sys.exit(main())
