# mpota: over-the-air updates for MicroPython on ESP32.
# Submodules are imported on demand so that `import mpota` stays small.
__version__ = "0.1.0"
