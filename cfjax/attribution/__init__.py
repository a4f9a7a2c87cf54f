"""Attribution in latent space (Goldwasser & Hooker 2025): attribute heads, importances, directions.

* :mod:`~cfjax.attribution.heads`: GLM heads (logistic / linear / Poisson) on a generator's latents;
  :mod:`~cfjax.attribution.fitting` fits them (L1 / L2, all attributes at once, optax);
  :mod:`~cfjax.attribution.metrics` scores them; :mod:`~cfjax.attribution.storage` saves / loads them.
* :mod:`~cfjax.attribution.importance`: local ``phi`` and global ``psi`` importances of any
  method's CEs, ranked tables (CSV / JSON) and a bar plot.
* :mod:`~cfjax.attribution.decisions`: heads of a predictor's own decisions on latents (the
  InterFaceGAN direction of a classifier).
* :mod:`~cfjax.attribution.directions`: InterFaceGAN's closed-form step and attribute-projected
  latent updates (an optax transformation).

Example:
  >>> import jax, numpy as np
  >>> from cfjax import attribution as at
  >>> z = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
  >>> heads = at.fit_heads(z, {"a": (z[:, 0] > 0).astype(np.float32), "b": (z[:, 1] > 0).astype(np.float32)},
  ...                      at.HeadsConfig(strength=1e-3), key=jax.random.key(0), generator="toy")
  >>> z_cf = at.interfacegan_counterfactuals(heads, "a", z[:4])
  >>> att = at.attribute_ces({"latent_original": z[:4], "latent": z_cf}, heads)
  >>> att.ranked("mean_abs")[0]["attribute"]
  'a'
"""

from cfjax.attribution.decisions import decision_labels, decision_names, fit_decision_heads  # noqa: F401
from cfjax.attribution.directions import (  # noqa: F401
    MODES, Restriction, Subspace, attribute_restriction, interfacegan_counterfactuals, interfacegan_delta,
    interfacegan_step, interfacegan_target, project, project_updates, restricted, subspace)
from cfjax.attribution.glm import FAMILIES, PENALTIES  # noqa: F401
from cfjax.attribution.fitting import HeadsConfig, fit_heads, infer_family  # noqa: F401
from cfjax.attribution.heads import GLM, Heads, generator_identity, glm_predict, heads_from_coefficients  # noqa: F401
from cfjax.attribution.metrics import auc, evaluate  # noqa: F401
from cfjax.attribution.storage import load_heads, save_heads  # noqa: F401
from cfjax.attribution.importance import (  # noqa: F401
    Attribution, attribute_ces, bar_plot, ce_latents, direction_signs, encode_images, global_importance,
    local_importance, rank_order)
