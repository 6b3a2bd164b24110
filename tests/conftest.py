"""Shared test set-up: hypothesis profiles.

With CI set (as CI does), hypothesis is derandomized and bounded, so every run draws the same
examples and the suite stays quick. Locally the "dev" profile draws fresh examples each run.
Pick a profile by hand with HYPOTHESIS_PROFILE=ci|dev|thorough.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
