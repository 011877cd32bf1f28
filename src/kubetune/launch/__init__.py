"""Launching work outside this process.

- `kubetune.launch.kfp_backend`: submit a compiled pipeline to a Kubeflow Pipelines backend (`submit`) and
  keep one recurring retraining run of it (`schedule`, `unschedule`), through `kfp.Client`.
- `kubetune.launch.kfp_packages`: a package's hash and parameters; its pipeline version (uploaded only when
  new) and experiment on the backend.
- `kubetune.launch.kfp_api`: the checked connection (`connect`) and `KfpBackendError`s that say what to check.
- `kubetune.launch.cron`: check KFP's 6-field cron expressions, macros and `@every` intervals.

Nothing is imported here: `kfp` is slow to import, and `kubetune train` never needs it.
"""
