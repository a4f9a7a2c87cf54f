"""Network-free DDPM maths, matched number for number to OpenAI guided-diffusion.

Models enter only as a callable ``model_fn(x, t_model) -> output``: x is NHWC (or HWC under
vmap) in the diffusion range [-1, 1], ``t_model`` the ORIGINAL timesteps (int32, shape
``x.shape[:-3]``), output NHWC with 3 channels (epsilon) or 6 (epsilon, variance interpolation v).
Every function taking a step index ``t`` means the RE-SPACED index into the ``Schedule`` tables;
the model receives ``sched.timestep_map[t]``.

Example:
  >>> from cfjax import diffusion as dd
  >>> sched = dd.make_schedule(500, "linear", "25")
  >>> sched.num_timesteps
  25
"""

from cfjax.diffusion.schedules import (  # noqa: F401
    BETA_SCHEDULES,
    Schedule,
    get_named_beta_schedule,
    make_schedule,
    make_schedule_np,
    space_timesteps,
    tables_from_betas,
    to_device,
)
