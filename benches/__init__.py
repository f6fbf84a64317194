"""Backend comparison: `shaderbay bench` (the model on every backend) and `shaderbay bench kernels`.

Modules: `cli` (the command); the model bench: `model_bench` (its steps), `model_settings`,
`model_source` (where the weights come from), `model_measure` (starts, decode and prefill runs),
`model_summary` (the figures per backend); the kernel micro-benches: `kernels` (running them per
backend), `kernel_cases` (a model's dispatches), `kernel_buffers` (their inputs), `timing` (GPU
or wall time of dispatches), `bandwidth` (the copy and streaming reference); `probe` (host time
inside a backend's API, command lists submitted, the merged Chrome trace), `verdict` (the
decision tree), `shapes` (model shapes, bytes and FLOPs per dispatch), `machine` (machine facts,
RSS), `results` (the typed results, their JSON, reading one back), `report` (terminal tables and
RESULTS.md entries), `plots` (the chart), `preflight` (a backend's crash check in a child
process).
Results history: benches/RESULTS.md.
"""
