"""The edges: explain arrays (:func:`explain`) or whole datasets (:func:`explain_dataset`), with a
resumable writer, figures and a summary.
"""

from cfjax.pipeline.explain import explain  # noqa: F401
from cfjax.pipeline.writer import ResultWriter, read_results  # noqa: F401
