"""What recognition and retrieval share: the model pipeline, run folders and the batched
inference loop. Neither job imports the other; both import this.
"""
