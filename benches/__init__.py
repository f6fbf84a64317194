"""Backend comparison: `shaderbay bench` (the model on every backend) and `shaderbay bench kernels`.

Modules: `cli` (the command), `model_bench` (the model bench), `kernels` (kernel micro-benches and
the bandwidth reference), `probe` (host time inside a backend's API, command lists submitted, the
merged Chrome trace), `verdict` (the decision tree), `shapes` (model shapes, bytes and FLOPs per
dispatch), `machine` (machine facts, RSS), `report` (tables, JSON, chart, RESULTS.md entries),
`schema` (the JSON's spec and validator), `preflight` (a backend's crash check in a child process).
Results history: benches/RESULTS.md.
"""
