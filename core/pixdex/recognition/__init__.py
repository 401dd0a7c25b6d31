"""Recognition: training, the learning-rate schedule, checkpoints, evaluate and predict,
classification metrics and plots. Imports nothing heavy.
"""
