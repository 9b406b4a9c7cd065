"""GPU benchmarks. Each module that defines ``register(subparsers)`` becomes a sub-command of
``mlra bench`` (``mlra bench decode``: :mod:`mlra.bench.decode`)."""
