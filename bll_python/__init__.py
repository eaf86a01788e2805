"""Business logic of adaptive teacher-student diffusion: specs, settings, schedulers glue, Algorithm 1, engines."""
