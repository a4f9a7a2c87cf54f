"""Training: generic resumable loops (:mod:`cfjax.training.loop`) and predictor training.

Example:
  >>> from cfjax import training
  >>> callable(training.train_predictor), callable(training.loop.train_loop)
  (True, True)
"""

from cfjax.training import loop  # noqa: F401
from cfjax.training.loop import JsonlLog, RunConfigError, TrainCheckpoints, check_run_config, train_loop  # noqa: F401
from cfjax.training.predictor import background_reliance, make_train_step, predict_batched  # noqa: F401
from cfjax.training.predictor import train as train_predictor  # noqa: F401
