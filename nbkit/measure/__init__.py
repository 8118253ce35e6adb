"""Measurements: size, quality against the float model, speed in a fresh process, answers; sweeps, their Pareto front and charts."""
