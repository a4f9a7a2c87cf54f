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
from cfjax.diffusion.gaussian import (  # noqa: F401
    VARIANCES,
    MeanVariance,
    ModelFn,
    extract,
    model_timesteps,
    p_mean_variance,
    p_mean_variance_from_output,
    predict_eps_from_xstart,
    predict_xstart_from_eps,
    q_posterior_mean_variance,
    q_sample,
)
from cfjax.diffusion.samplers import (  # noqa: F401
    MODES,
    StepOutput,
    ddim_chain,
    ddim_invert,
    ddim_reverse_step,
    ddim_sample_loop,
    ddim_step,
    ddpm_chain,
    ddpm_sample_loop,
    ddpm_step,
    run_chain,
)
from cfjax.diffusion.losses import (  # noqa: F401
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
    p2_weight,
    training_losses,
    vb_terms_bpd,
)
from cfjax.diffusion.ode import (  # noqa: F401
    ode_decode,
    ode_encode,
    pf_ode,
    schedule_sigmas,
    sigma_from_timestep,
    timestep_from_sigma,
)
