"""A stand-in for the trainer's SIGINT/SIGTERM handler: the signal 'arrives' after ``n`` reads of
``requested`` (the trainer reads it once per training step)."""
import signal

import depthlab.training.safety as safety


class StopAfter(safety.StopSignals):
    n = 30

    def __init__(self):
        super().__init__()
        self.reads = 0

    @property
    def requested(self):
        self.reads += 1
        return signal.SIGTERM if self.reads > self.n else None

    @requested.setter
    def requested(self, value):
        pass
