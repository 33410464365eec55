"""Reference implementations and data generators that tests and benchmarks check against.

Not part of the package: they exist to be independent of the code they check (detectron2's
post-processing as detectron2 writes it, SOGNet's removal as the released code writes it) or to
feed it (seeded synthetic ground-truth / prediction pairs). Tests import them as ``oracles.*``
(pytest puts ``tests/`` on the path); benchmarks put ``tests/`` on ``sys.path`` first.
"""
