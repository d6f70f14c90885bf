"""mpota host tools: releases, serving, fleet roll-outs and the ESP32 simulator."""

__version__ = "0.1.0"
