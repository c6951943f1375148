"""Flower's configuration file for ``batchformers flower`` (``FLOWER_CONF``): Flower executes it before it
starts, so the Broker page and ``/metrics`` know the job queues (:mod:`worker.flower`)."""

from worker.flower import install

install()
