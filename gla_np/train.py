"""``python -m gla_np.train``: runs the training command of gla_np/training/train.py.

This file is the command only. The training module's one path is ``gla_np.training.train``;
import it from there (``from gla_np.training import train``).
"""

import sys

from gla_np.training import train as _train


def __getattr__(name):
    raise AttributeError(f"gla_np.train is the training command (python -m gla_np.train) and has "
                         f"no {name!r}; the training module is gla_np.training.train")


if __name__ == "__main__":
    _train._relaunch_for_threads(sys.argv[1:])
    _train.main(sys.argv[1:])
