"""Shared test set-up: hypothesis profiles.

With CI set to a true value (as CI does; empty, "0", "false" and "no" count as unset),
hypothesis is derandomized and bounded, so every run draws the same examples and the suite
stays quick. Locally the "dev" profile draws fresh examples each run.
Pick a profile by hand with HYPOTHESIS_PROFILE=ci|dev|thorough|slow. "slow" is the long-sequence
sweep of gla_np.testing (2,000 derandomized examples, T up to 4,096: SWEEP_MAX_T), minutes not
seconds; the default suite never runs it.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=100, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# derandomize=False spelled out: hypothesis's own default turns it on whenever a CI variable
# exists at all (even CI=0), and the local profiles inherit that default
settings.register_profile("dev", derandomize=False, max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", derandomize=False, max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", derandomize=True, max_examples=2000, deadline=None,
                          print_blob=True, suppress_health_check=list(HealthCheck))


def running_in_ci(value):
    """True for a CI variable that says yes: set, non-empty, and not "0", "false" or "no"."""
    return bool(value) and value.strip().lower() not in ("0", "false", "no")


PROFILE = os.environ.get("HYPOTHESIS_PROFILE",
                         "ci" if running_in_ci(os.environ.get("CI")) else "dev")
settings.load_profile(PROFILE)
# the longest sequence gla_np.testing's property tests draw: training lengths in the slow profile
SWEEP_MAX_T = 4096 if PROFILE == "slow" else 70
