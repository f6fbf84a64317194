"""The conformance suite: the contract every shaderbay backend must pass.

Run it against any registered backend, either way:

    shaderbay check --backend NAME            # a table: each group, pass/fail, worst error per kernel
    pytest --pyargs shaderbay.conformance --backend NAME[,NAME...|all]

Modules: ``test_buffers`` (a stateful test of buffers against a bytearray model),
``test_kernels`` (every catalogue kernel and constant combination against the NumPy
reference; each kernel's cases and tolerance are one record in ``cases/``),
``test_command_lists`` (ordering, replay, inputs written between replays, independence,
copies) and ``test_errors`` (every typed error). ``plugin`` is the pytest plugin
(``--backend``, the ``backend`` fixture, the ``ci`` and ``thorough`` Hypothesis profiles);
``check`` is the ``shaderbay check`` command.
Nothing in the suite knows a backend by name.
"""
