"""training: BTYD and LightGBM models, backtests, metrics, plots, MLflow registry."""

import os

# LightGBM's OpenMP threads spin while they wait for each other. When anything else holds
# one of the cores (a test server, a second job), a spinning thread is descheduled and
# every boosting round stalls: measured here, 740 ms instead of 28 ms a round with two
# threads on two busy cores. Passive waiting costs nothing on an idle machine. It must be
# set before the OpenMP runtime loads, hence here; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
