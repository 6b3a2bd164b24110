"""``python -m gla_np.sample RUN``: write text with a run of ``python -m gla_np.train --task text``.

The command only; its functions (reading the prompt, picking a character, generating) are in
gla_np/training/sample.py, imported as ``gla_np.training.sample``.
"""

import sys

if __name__ == "__main__":
    from gla_np.training import sample

    sample.main(sys.argv[1:])
