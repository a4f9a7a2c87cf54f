"""Counterfactual metrics (ACE / AC-RE / Counterfactual Attacks), streaming over batches.

Every metric is a :class:`Metric`: ``init() -> state``, ``update(state, batch) -> state``,
``finalize(state) -> dict of floats`` (see :mod:`cfjax.metrics.base`). A batch is a dict of
arrays sharing the example axis, with the keys the engine and jobs write (``original``,
``counterfactual``, ``prediction``, ``target``, ``success``, ...). Streaming over any split of
the data equals one pass over all of it.

* validity: :func:`success_rate`, :func:`flip_rate`, :func:`oracle_mae`, :func:`proximity`
* attributes: :func:`mnac`, :func:`cd`, :func:`attribute_correlations`
* similarity: :func:`fva`, :func:`s3`, :func:`cosine_similarity`, :func:`diversity`
* :func:`cout`, :func:`cout_curves`
* realism: :func:`fid`, :func:`sfid`, :func:`frechet_distance`, :func:`fid_from_features`,
  :func:`sfid_from_features`, the float64 statistics ``stats_*``
* feature networks (:mod:`cfjax.metrics.features`): :func:`feature_extractor` (``"inception"``
  from a converted pytorch-fid checkpoint, a testbed's in-domain network ``"squares"`` /
  ``"shapes"``, any predictor checkpoint), :class:`FeatureExtractor`
* testbeds: :func:`region_change`, :func:`squares_regions`, :func:`squares_factor_change`,
  :func:`shapes_background_change`, :func:`ideal_distance`, :func:`squares_report`
* drivers: :func:`compute`, :class:`Evaluator` (an ``on_result`` callback), :func:`evaluate_results`
* by name: :func:`make`, :func:`known_metrics`
* runs (:mod:`cfjax.metrics.runs`, :mod:`cfjax.metrics.report`): :func:`evaluate_runs` of
  ``cfjax explain`` directories, :func:`default_metrics`, :class:`StreamingMetrics` (``cfjax
  explain --metrics``), :func:`markdown_table`, :func:`write_report` (``cfjax evaluate``)

Example:
  >>> import numpy as np
  >>> from cfjax import metrics
  >>> x = np.zeros((4, 8, 8, 3), np.float32)
  >>> batch = {"original": x, "counterfactual": x + np.float32(0.1), "success": np.ones(4, bool)}
  >>> r = metrics.compute([metrics.success_rate(), metrics.proximity()], batch)
  >>> r["success_rate"], round(r["mae"], 3)
  (1.0, 0.1)
"""

from cfjax.metrics.attributes import attribute_correlations, cd, mnac  # noqa: F401
from cfjax.metrics.base import (  # noqa: F401
    Metric, kahan_add, kahan_init, kahan_value, mean_metric)
from cfjax.metrics.evaluate import (  # noqa: F401
    Evaluator, compute, evaluate_results, load_results, stream_results)
from cfjax.metrics.features import (  # noqa: F401
    FeatureExtractor, feature_extractor, known_feature_extractors)
from cfjax.metrics.realism import (  # noqa: F401
    fid, fid_from_features, frechet_distance, sfid, sfid_from_features, stats_finalize, stats_init,
    stats_update)
from cfjax.metrics.registry import known_metrics, make  # noqa: F401
from cfjax.metrics.report import markdown_table, write_report  # noqa: F401
from cfjax.metrics.runs import StreamingMetrics, default_metrics, evaluate_run, evaluate_runs  # noqa: F401
from cfjax.metrics.similarity import cosine_similarity, diversity, fva, s3  # noqa: F401
from cfjax.metrics.testbeds import (  # noqa: F401
    ideal_distance, region_change, shapes_background_change, squares_factor_change, squares_regions,
    squares_report)
from cfjax.metrics.transition import cout, cout_curves  # noqa: F401
from cfjax.metrics.validity import flip_rate, oracle_mae, predicted_class, proximity, success_rate  # noqa: F401
