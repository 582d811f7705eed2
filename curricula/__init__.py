"""Curricula: difficulty scorers, pacing functions and samplers (the curricula issue).

They plug into the trainer through `framework.runner.build.train(..., sampler_fn=...)`, which takes any
`framework.data.encoding.Sampler`: an `init`/`next` pair of pure functions whose state is checkpointed.
"""
