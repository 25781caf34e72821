"""What tests, ``make run``, ``make bench`` and ``make emulators`` share to run dicomflow for real.

Not a service and never shipped with one (pyproject's package list leaves it out): a checkout
imports it from the repository root, as pytest (``pythonpath = ["."]``), ``bench/bench.py``
and ``scripts/`` (``make run``, ``make emulators``) do. ``processes``: free ports, waiting
for one, the redis-server binary and a redis-server of our own;
``servers``: the cloud emulators and Orthanc; ``series``: synthetic CT series;
``system``: the whole pipeline started by ``scripts/run.py`` as ``make run`` does, and the
check that no service crashed while it ran.
"""
