"""``python -m gla_np.train``: the training command of gla_np/training/train.py at its 0.1 path.

Run as a command, this file runs that module's command; imported (``import gla_np.train``), it
is that module itself, so both paths name one module object.
"""

import sys

from gla_np.training import train as _train

if __name__ == "__main__":
    _train._relaunch_for_threads(sys.argv[1:])
    _train.main(sys.argv[1:])
else:
    sys.modules[__name__] = _train
